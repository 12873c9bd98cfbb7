"""Fused bias + activation + gain + clamp, with a reference path, a CPU kernel and a CUDA plugin.

``bias_act(x, b, dim, act, alpha, gain, clamp)`` computes ``clamp(gain * f(x + b), -clamp, clamp)``.
The reference path is plain torch and differentiable to any order. The CUDA path keeps one kernel per
pass and supports first and second order gradients, which R1 and path-length regularisation need; on the CPU the
piecewise-linear activations get the same from a C kernel (``bias_act_cpu``), and the rest in-place torch steps.
"""

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import custom_ops
from . import bias_act_cpu


@dataclass(frozen=True)
class Activation:
    func: Callable            # reference implementation f(x, alpha)
    def_alpha: float          # default alpha (only lrelu uses it)
    def_gain: float           # default gain
    cuda_idx: int             # activation code understood by the CUDA kernel
    ref: str                  # which saved tensor the backward needs: 'x' (input), 'y' (output) or ''
    has_2nd_grad: bool        # False for piecewise-linear functions, whose second derivative is zero


activation_funcs = {
    'linear':   Activation(lambda x, **_: x,                          0,   1,            1, '',  False),
    'relu':     Activation(lambda x, **_: F.relu(x),                  0,   math.sqrt(2), 2, 'y', False),
    'lrelu':    Activation(lambda x, alpha, **_: F.leaky_relu(x, alpha), 0.2, math.sqrt(2), 3, 'y', False),
    'tanh':     Activation(lambda x, **_: torch.tanh(x),              0,   1,            4, 'y', True),
    'sigmoid':  Activation(lambda x, **_: torch.sigmoid(x),           0,   1,            5, 'y', True),
    'elu':      Activation(lambda x, **_: F.elu(x),                   0,   1,            6, 'y', True),
    'selu':     Activation(lambda x, **_: F.selu(x),                  0,   1,            7, 'y', True),
    'softplus': Activation(lambda x, **_: F.softplus(x),              0,   1,            8, 'y', True),
    'swish':    Activation(lambda x, **_: torch.sigmoid(x) * x,       0,   math.sqrt(2), 9, 'x', True),
}

_plugin = custom_ops.LazyPlugin('bias_act_plugin', sources=['bias_act.cpp', 'bias_act.cu'], headers=['bias_act.h'],
                                extra_cuda_cflags=['--use_fast_math'])
_null_tensor = torch.empty([0])


def _plugin_available() -> bool:
    """True when the CUDA plugin is built and loaded (only meaningful on a CUDA machine)."""
    return _plugin.available()


def _resolve(act, alpha, gain, clamp):
    if act not in activation_funcs:
        raise ValueError(f'unknown activation {act!r}; expected one of {", ".join(activation_funcs)}')
    spec = activation_funcs[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    if clamp < 0 and clamp != -1:
        raise ValueError(f'clamp must be None or >= 0, got {clamp}')
    return spec, alpha, gain, clamp


def bias_act(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None, impl='cuda'):
    """Add ``b`` along ``dim``, apply ``act``, multiply by ``gain`` and clamp to ``[-clamp, clamp]``.

    ``alpha`` and ``gain`` default to the activation's own values only when None; ``clamp=None`` disables
    clamping. ``impl='cuda'`` uses the plugin for CUDA tensors when it is available, else the reference.
    """
    dim = _check_args(x, b, dim, impl)
    if impl == 'cuda' and x.device.type == 'cuda' and _plugin.get() is not None:
        return _bias_act_cuda(dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp).apply(x, b)
    # On the CPU: without gradients any activation, with gradients the piecewise-linear ones (a hand-built backward
    # for the others was slower than the reference's fused kernels).
    if impl == 'cuda' and custom_ops.cpu_fast_path(x, b) and (
            act in ('linear', 'relu', 'lrelu') or custom_ops.cpu_fast_path(x, b, inference_only=True)):
        return _bias_act_cpu(x, b, dim, act, alpha, gain, clamp)
    return _bias_act_ref(x=x, b=b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)


def bias_act_(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    """``bias_act`` that may overwrite ``x``, for a caller that owns it (a layer's fresh convolution output): in CPU
    inference every step runs in place on ``x`` itself, which saves a new feature map; otherwise ``bias_act``."""
    dim = _check_args(x, b, dim, 'cuda')
    if not custom_ops.cpu_fast_path(x, b, inference_only=True):
        return bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    return _bias_act_cpu(x, b, dim, act, alpha, gain, clamp, owned=True)


def _check_args(x, b, dim, impl):
    """Validate the arguments; returns ``dim`` made non-negative."""
    if not isinstance(x, torch.Tensor):
        raise TypeError('x must be a tensor')
    if impl not in ('ref', 'cuda'):
        raise ValueError(f"impl must be 'ref' or 'cuda', got {impl!r}")
    dim = dim + x.ndim if dim < 0 else dim
    if not 0 <= dim < x.ndim:
        raise ValueError(f'dim {dim} out of range for a {x.ndim}-D tensor')
    if b is not None and (b.ndim != 1 or b.shape[0] != x.shape[dim]):
        raise ValueError(f'bias of shape {tuple(b.shape)} does not match x.shape[{dim}] = {x.shape[dim]}')
    return dim


def _along(b, dim, ndim):
    """The bias shaped to broadcast along ``dim`` of an ``ndim``-D tensor."""
    return b.reshape([-1 if i == dim else 1 for i in range(ndim)])


def _bias_act_cpu(x, b, dim, act, alpha, gain, clamp, owned=False):
    """The reference's arithmetic on the CPU with every step that may run in place doing so: on a tensor made here (or
    handed over, ``owned``) that no backward has saved. In inference that is one new tensor at most (on large maps
    the fresh pages cost as much as the arithmetic); with gradients, fewer autograd steps, and the clamp as
    ``hardtanh``, whose backward is one fused kernel where ``clamp``'s takes four (at exactly +-clamp it passes no
    gradient, as the CUDA kernel)."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    saves = torch.is_grad_enabled() and (x.requires_grad or (b is not None and b.requires_grad))
    # The C kernel: one pass each way. With gradients it saves its output, which only an activation or a clamp
    # needs, so a plain linear map stays here (its caller may modify the result in place, as the discriminator's
    # skip connection does); without gradients, wherever there is anything to do.
    if saves:
        use_kernel = act != 'linear' or clamp >= 0
    else:
        use_kernel = b is not None or act != 'linear' or gain != 1 or clamp >= 0
    if use_kernel:
        kernel = bias_act_cpu.spec_for(x, b, dim, act, alpha, gain, clamp)
        if kernel is not None:
            if saves:
                return bias_act_cpu.BiasAct.apply(x, b, kernel)
            return bias_act_cpu.forward(x, b, kernel, out=x if owned else torch.empty_like(x))
    fresh = owned  # x may be overwritten
    if b is not None:
        x, fresh = (x.add_(_along(b, dim, x.ndim)) if fresh else x + _along(b, dim, x.ndim)), True
    if act == 'lrelu':  # (in place, the backward reads the output, which cannot undo a negative slope)
        x = F.leaky_relu_(x, alpha) if fresh and (alpha >= 0 or not saves) else F.leaky_relu(x, alpha)
    elif act == 'relu':
        x = x.relu_() if fresh else x.relu()
    elif act != 'linear':
        x = spec.func(x, alpha=alpha)
    if act != 'linear':
        fresh = not saves  # with gradients the activation's backward reads its output
    if gain != 1:
        x, fresh = (x.mul_(gain) if fresh else x * gain), True
    if clamp >= 0:
        x = F.hardtanh_(x, -clamp, clamp) if fresh else F.hardtanh(x, -clamp, clamp)
    return x


def _bias_act_ref(x, b=None, dim=1, act='linear', alpha=None, gain=None, clamp=None):
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    if b is not None:
        x = x + _along(b, dim, x.ndim)
    x = spec.func(x, alpha=alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


_cuda_cache = {}


def _memory_format(x):
    return torch.channels_last if x.ndim == 4 and x.stride(1) == 1 and x.shape[1] > 1 else torch.contiguous_format


def _bias_act_cuda(dim=1, act='linear', alpha=None, gain=None, clamp=None):
    """Autograd Functions for one (dim, act, alpha, gain, clamp) combination, cached."""
    spec, alpha, gain, clamp = _resolve(act, alpha, gain, clamp)
    key = (dim, act, alpha, gain, clamp)
    if key in _cuda_cache:
        return _cuda_cache[key]
    # The original input x (not a contiguous copy) is kept so the second-order graph links back to it;
    # swish also reads it. The output gives f' for most activations and the clamp mask.
    keep_x = spec.ref == 'x' or spec.has_2nd_grad
    keep_y = spec.ref == 'y' or clamp >= 0

    def run(main, b, xref, yref, dy, grad):
        # Every tensor handed to the kernel shares the layout of `main`.
        fmt = _memory_format(main)
        main = main.contiguous(memory_format=fmt)
        null = _null_tensor.to(main)
        xref, yref, dy = (t.contiguous(memory_format=fmt) if t.numel() else null for t in (xref, yref, dy))
        b = b.contiguous() if b.numel() else null
        return _plugin.module.bias_act(main, b, xref, yref, dy, grad, dim, spec.cuda_idx, alpha, gain, clamp)

    def reduce_bias(t):
        dims = [i for i in range(t.ndim) if i != dim]
        return t.sum(dims) if dims else t  # sum([]) would reduce everything

    class BiasActCuda(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, b):
            null = _null_tensor.to(x)
            b = b if b is not None else null
            y = x
            if act != 'linear' or gain != 1 or clamp >= 0 or b.numel() > 0:
                y = run(x, b, null, null, null, 0)
            ctx.save_for_backward(x if keep_x else null, b if keep_x else null, y if keep_y else null)
            return y

        @staticmethod
        def backward(ctx, dy):
            x, b, y = ctx.saved_tensors
            dx = db = None
            if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
                dx = dy
                if act != 'linear' or gain != 1 or clamp >= 0:
                    dx = BiasActCudaGrad.apply(dy, x, b, y)
            if ctx.needs_input_grad[1]:
                db = reduce_bias(dx)
            return dx, db

    class BiasActCudaGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, dy, x, b, y):
            dx = run(dy, b, x, y, _null_tensor.to(dy), 1)
            ctx.save_for_backward(dy if spec.has_2nd_grad else _null_tensor.to(dy), x, b, y)
            return dx

        @staticmethod
        def backward(ctx, d_dx):
            dy, x, b, y = ctx.saved_tensors
            d_dy = d_x = d_b = None
            if ctx.needs_input_grad[0]:
                d_dy = BiasActCudaGrad.apply(d_dx, x, b, y)  # the first-order op is linear in dy
            if spec.has_2nd_grad and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
                d_x = run(d_dx, b, x, y, dy, 2)
            if spec.has_2nd_grad and ctx.needs_input_grad[2]:
                d_b = reduce_bias(d_x)
            return d_dy, d_x, d_b, None

    _cuda_cache[key] = BiasActCuda
    return BiasActCuda
