"""bias_act's CPU kernel (``csrc/bias_act_cpu.c``) for the piecewise-linear activations: one pass forward, one pass
backward (which also sums the bias gradient), instead of an autograd step for each of bias, activation, gain and
clamp. The forward result and the first-order gradient are bitwise the reference's; the gradient pass is linear in
the incoming gradient, so it is its own second-order gradient and R1 and path-length regularisation see gradients
of any order. Where the C compiler is missing the callers keep their PyTorch path (see ``torch_utils.c_kernel``).
"""

import ctypes
import os
from typing import NamedTuple, Optional

import torch

from .. import c_kernel

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'bias_act_cpu.c')
ABI = 2
ACT_CODES = {'linear': 0, 'relu': 1, 'lrelu': 2}
_SUFFIX = {torch.float32: 'f32', torch.float64: 'f64'}


def _declare(lib):
    i64, ptr, dbl, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
    for suffix in _SUFFIX.values():
        fwd = getattr(lib, f'bigan_bias_act_fwd_{suffix}')
        fwd.argtypes = [ptr, ptr, ptr, i64, i64, i64, i32, dbl, dbl, dbl, i32]
        fwd.restype = i32
        grad = getattr(lib, f'bigan_bias_act_grad_{suffix}')
        grad.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i32, dbl, dbl, dbl, i32]
        grad.restype = i32


KERNEL = c_kernel.CKernel(SOURCE, ABI, _declare, what='CPU bias_act kernel',
                          fallback='bias_act uses its PyTorch path', extra_flags=['-ffp-contract=off'])


class Spec(NamedTuple):
    """One bias_act configuration as the kernel takes it; x is viewed as [outer, channels, inner]."""
    dim: int
    act: int
    alpha: float
    gain: float
    clamp: float


def spec_for(x, b, dim, act, alpha, gain, clamp) -> Optional[Spec]:
    """The kernel's configuration for these (resolved) arguments, or None where the kernel does not apply: another
    activation or dtype, a non-contiguous tensor, a gain <= 0 or a negative slope (the gradient pass reads the
    activation's slope off the sign of the output, which needs both positive), or no kernel built."""
    if (act not in ACT_CODES or x.dtype not in _SUFFIX or not x.is_contiguous() or x.numel() == 0
            or not gain > 0 or not alpha >= 0):
        return None
    if b is not None and (b.dtype != x.dtype or not b.is_contiguous()):
        return None
    if KERNEL.library() is None:  # (the caller's cpu_fast_path has checked the reference ops)
        return None
    return Spec(dim, ACT_CODES[act], alpha, gain, clamp)


def _shape(x, dim):
    outer = 1
    for n in x.shape[:dim]:
        outer *= n
    return outer, x.shape[dim], x.numel() // max(outer * x.shape[dim], 1)


def forward(x, b, spec: Spec, out):
    """``out`` (x itself, or a tensor like it) = clamp(act(x + b) * gain); no autograd."""
    lib = KERNEL.library()
    status = getattr(lib, f'bigan_bias_act_fwd_{_SUFFIX[x.dtype]}')(
        x.data_ptr(), None if b is None else b.data_ptr(), out.data_ptr(), *_shape(x, spec.dim), spec.act,
        spec.alpha, spec.gain, spec.clamp, torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f'bias_act kernel rejected its arguments (shape {tuple(x.shape)}, dim {spec.dim})')
    return out


def gradient(dy, y, spec: Spec, with_bias: bool):
    """``(dx, db)``: the gradient with respect to x given ``dy``, and its per-channel sum (or None); no autograd."""
    dy = dy.contiguous()
    dx = torch.empty_like(y)
    outer, channels, inner = _shape(y, spec.dim)
    db = torch.empty([channels], dtype=y.dtype) if with_bias else None
    lib = KERNEL.library()
    status = getattr(lib, f'bigan_bias_act_grad_{_SUFFIX[y.dtype]}')(
        dy.data_ptr(), y.data_ptr(), dx.data_ptr(), None if db is None else db.data_ptr(), outer, channels, inner,
        spec.act, spec.alpha, spec.gain, spec.clamp, torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f'bias_act gradient kernel rejected its arguments (shape {tuple(y.shape)})')
    return dx, db


def _bias_dims(spec, ndim):
    return [i for i in range(ndim) if i != spec.dim]


class BiasAct(torch.autograd.Function):
    """``y = bias_act(x, b)`` with the kernel; saves only y."""

    @staticmethod
    def forward(ctx, x, b, spec):
        y = forward(x, b, spec, torch.empty_like(x))
        ctx.spec = spec
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, = ctx.saved_tensors
        with_bias = ctx.needs_input_grad[1]
        if torch.is_grad_enabled():  # building a graph of the gradient (create_graph): keep dx differentiable
            dx = BiasActGrad.apply(dy, y, ctx.spec)
            return dx, (dx.sum(_bias_dims(ctx.spec, dx.ndim)) if with_bias else None), None
        dx, db = gradient(dy, y, ctx.spec, with_bias)
        return dx, db, None


class BiasActGrad(torch.autograd.Function):
    """``dx`` from ``dy`` and the forward output ``y``: linear in dy and piecewise constant in y, so its own gradient
    with respect to dy is the same pass, and with respect to y (hence x and b) zero."""

    @staticmethod
    def forward(ctx, dy, y, spec):
        ctx.spec = spec
        ctx.save_for_backward(y)
        return gradient(dy, y, spec, with_bias=False)[0]

    @staticmethod
    def backward(ctx, d_dx):
        y, = ctx.saved_tensors
        d_dy = BiasActGrad.apply(d_dx, y, ctx.spec) if ctx.needs_input_grad[0] else None
        return d_dy, None, None
