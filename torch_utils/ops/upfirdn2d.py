"""Upsample, pad, FIR-filter and downsample a batch of 2-D images in one op.

``upfirdn2d`` inserts ``up - 1`` zeros after every sample, pads (negative values crop), convolves with
the filter ``f`` (a true convolution unless ``flip_filter``), and keeps every ``down``-th sample. Padding is
``[x0, x1, y0, y1]``; ``up`` and ``down`` may be ``[x, y]``. The reference path is plain torch autograd. The fast
paths run in one autograd Function whose gradient is again an ``upfirdn2d`` (the CUDA plugin; on the CPU,
``_cpu_kernel``, a C kernel for separable filters), so gradients of any order exist; on the CPU, small images with a
separable filter are instead two banded matrix products.
"""

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import custom_ops
from . import conv2d_gradfix, upfirdn2d_cpu

_plugin = custom_ops.LazyPlugin('upfirdn2d_plugin', sources=['upfirdn2d.cpp', 'upfirdn2d.cu'], headers=['upfirdn2d.h'],
                                extra_cuda_cflags=['--use_fast_math'])


def _plugin_available() -> bool:
    """True when the CUDA plugin is built and loaded (only meaningful on a CUDA machine)."""
    return _plugin.available()


def _parse_scaling(scaling):
    if isinstance(scaling, int):
        scaling = [scaling, scaling]
    sx, sy = (int(s) for s in scaling)
    if sx < 1 or sy < 1:
        raise ValueError(f'up/down factors must be >= 1, got {scaling}')
    return sx, sy


def _parse_padding(padding):
    if isinstance(padding, int):
        padding = [padding, padding]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise ValueError(f'padding must be an int, [x, y] or [x0, x1, y0, y1], got {padding}')
    return padding


def _get_filter_size(f):
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise ValueError('the filter must be a 1-D (separable) or 2-D tensor from setup_filter()')
    fw = f.shape[-1]
    fh = f.shape[0]
    return int(fw), int(fh)


def setup_filter(f, device=torch.device('cpu'), normalize=True, flip_filter=False, gain=1, separable=None):
    """Turn a list/array of taps into the float32 filter tensor that the ops take.

    A 1-D filter stays separable when it has 8 or more taps (unless ``separable`` says otherwise) and
    becomes its own outer product otherwise. ``normalize`` makes the taps sum to 1; ``gain`` scales the
    result by ``gain ** (ndim / 2)``, so a separable filter applies the gain once over its two passes.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise ValueError(f'a filter must be a non-empty scalar, 1-D or 2-D array, got shape {tuple(f.shape)}')
    if f.ndim == 0:
        f = f[np.newaxis]
    if separable is None:
        separable = (f.ndim == 1 and f.numel() >= 8)
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise ValueError('a 2-D filter cannot be separable')
    if normalize:
        f /= f.sum()
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Pad, upsample, filter and downsample ``x`` [N, C, H, W] with the filter ``f`` (or None for identity)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('x must be a 4-D tensor [N, C, H, W]')
    if impl not in ('ref', 'cuda'):
        raise ValueError(f"impl must be 'ref' or 'cuda', got {impl!r}")
    if impl == 'cuda' and custom_ops.cpu_fast_path(x):
        taps = _separable_taps(f, gain) if max(x.shape[2], x.shape[3]) <= matmul_max_size(x) else None
        if taps is not None:
            return _upfirdn2d_matmul(x, taps, up=up, down=down, padding=padding, flip_filter=flip_filter)
        return _upfirdn2d_function(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain).apply(x, f)
    if impl == 'cuda' and x.device.type == 'cuda' and _plugin.get() is not None:
        return _upfirdn2d_function(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain).apply(x, f)
    return _upfirdn2d_ref(x, f, up=up, down=down, padding=padding, flip_filter=flip_filter, gain=gain)


def _check_filter(f, x):
    if f is None:
        return torch.ones([1, 1], dtype=torch.float32, device=x.device)
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or f.dtype != torch.float32:
        raise ValueError('the filter must be a float32 1-D or 2-D tensor (see setup_filter)')
    if f.requires_grad:
        raise ValueError('gradients with respect to the filter are not supported')
    return f


def _upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Reference path: zero insertion by reshape + pad, crop/pad, depthwise conv, strided slice."""
    f = _check_filter(f, x)
    batch, channels, in_h, in_w = x.shape
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)

    # Insert zeros after every sample.
    x = x.reshape([batch, channels, in_h, 1, in_w, 1])
    x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
    x = x.reshape([batch, channels, in_h * upy, in_w * upx])

    # Pad with zeros, or crop where the padding is negative.
    x = F.pad(x, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
    x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]

    # Convolve: conv2d correlates, so flip the filter unless asked not to.
    f = f * (gain ** (f.ndim / 2))
    f = f.to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f[np.newaxis, np.newaxis].repeat([channels, 1] + [1] * f.ndim)
    if f.ndim == 4:
        x = conv2d_gradfix.conv2d(input=x, weight=f, groups=channels)
    else:
        x = conv2d_gradfix.conv2d(input=x, weight=f.unsqueeze(2), groups=channels)
        x = conv2d_gradfix.conv2d(input=x, weight=f.unsqueeze(3), groups=channels)

    return x[:, :, ::downy, ::downx]


#: The CPU fast path filters images up to this size (per axis, before upsampling) as two banded matrix products;
#: with the C kernel built, only up to ``MATMUL_MAX_SIZE_WITH_KERNEL`` (above it the kernel is faster, forward and
#: backward: at 64 pixels about 1.3-1.6x, at 128 2.5x; below it the kernel's fixed cost per call loses).
MATMUL_MAX_SIZE = 128
MATMUL_MAX_SIZE_WITH_KERNEL = 48


def matmul_max_size(x):
    return MATMUL_MAX_SIZE_WITH_KERNEL if upfirdn2d_cpu.usable(x) else MATMUL_MAX_SIZE


@functools.lru_cache(maxsize=256)
def _separable_taps_cached(shape, values):
    f = torch.tensor(values, dtype=torch.float64).reshape(shape)
    if len(shape) == 1:
        return values, values
    r, c = divmod(int(f.abs().argmax()), shape[1])
    fy, fx = f[:, c], f[r, :] / f[r, c]
    if not torch.allclose(torch.outer(fy, fx), f, rtol=1e-6, atol=1e-7 * float(f.abs().max())):
        return None
    return tuple(fy.tolist()), tuple(fx.tolist())


def _separable_taps(f, gain=1):
    """The vertical and horizontal taps ``(fy, fx)`` of a separable filter scaled by ``gain`` (1-D, or 2-D of rank one,
    which is what ``setup_filter`` makes of short 1-D taps), or None. The gain is applied to the float32 filter as
    the reference path does, so a 1-D filter's taps are exactly the reference's."""
    if f is None:
        return (float(gain),), (1.0,)
    if f.requires_grad or f.numel() > 64:
        return None
    f = f * (gain ** (f.ndim / 2))
    return _separable_taps_cached(tuple(f.shape), tuple(f.flatten().tolist()))


@functools.lru_cache(maxsize=512)
def _band_matrix(n_in, up, down, pad0, pad1, taps, dtype):
    """The 1-D upfirdn along one axis as an [n_out, n_in] matrix: output o sums ``taps[j]`` times sample
    ``(o * down + j - pad0) / up`` of the input, where that is a whole index inside it (taps in correlation order)."""
    k = len(taps)
    n_out = (n_in * up + pad0 + pad1 - k) // down + 1
    a = torch.zeros([max(n_out, 0), n_in], dtype=torch.float64)
    for o in range(max(n_out, 0)):
        for j in range(k):
            pos = o * down + j - pad0
            if pos >= 0 and pos % up == 0 and pos // up < n_in:
                a[o, pos // up] += taps[j]
    return a.to(dtype)


def _upfirdn2d_matmul(x, taps, up=1, down=1, padding=0, flip_filter=False):
    """upfirdn2d with a separable filter on small images as ``A_y @ x @ A_x^T``: the zero insertion, padding,
    filtering and decimation of each axis folded into one banded matrix. Up to about 128 pixels this does more
    multiplications than the depthwise convolution but runs several times faster on the CPU, backward included
    (plain autograd through two matrix products, so gradients of any order exist)."""
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fy, fx = taps
    if not flip_filter:  # a true convolution: correlate with the reversed taps
        fy, fx = fy[::-1], fx[::-1]
    a_y = _band_matrix(x.shape[2], upy, downy, pady0, pady1, fy, x.dtype)
    a_x = _band_matrix(x.shape[3], upx, downx, padx0, padx1, fx, x.dtype)
    return torch.matmul(torch.matmul(a_y, x), a_x.t())


def _cpu_kernel(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip_filter, gain):
    """The CPU counterpart of the plugin's kernel (same contract: a 2-D filter, ``gain`` applied once), without
    autograd. A separable filter goes to the C kernel (``upfirdn2d_cpu``: two 1-D passes); otherwise, or without a C
    compiler, the reference's arithmetic without its no-op copies: zeros are inserted only when upsampling,
    symmetric padding goes to the convolution, and the downsampling is the convolution's stride, so the discarded
    outputs are never computed."""
    taps = _kernel_taps(f, gain) if upfirdn2d_cpu.usable(x) else None
    if taps is not None:
        fy, fx = taps if flip_filter else (taps[0][::-1], taps[1][::-1])
        return upfirdn2d_cpu.upfirdn2d(x, fy, fx, upx, upy, downx, downy, padx0, padx1, pady0, pady1)
    n, c, h, w = x.shape
    if upx > 1 or upy > 1:
        z = x.new_zeros([n, c, h * upy, w * upx])
        z[:, :, ::upy, ::upx] = x
        x = z
    if min(padx0, padx1, pady0, pady1) < 0:
        x = x[:, :, max(-pady0, 0): x.shape[2] - max(-pady1, 0), max(-padx0, 0): x.shape[3] - max(-padx1, 0)]
        padx0, padx1, pady0, pady1 = (max(p, 0) for p in (padx0, padx1, pady0, pady1))
    if padx0 != padx1 or pady0 != pady1:
        x = F.pad(x, [padx0, padx1, pady0, pady1])
        padx0 = pady0 = 0
    f = (f * gain).to(x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    return F.conv2d(x, f.expand(c, 1, *f.shape), stride=(downy, downx), padding=(pady0, padx0), groups=c)


def _kernel_taps(f, gain):
    """``(fy, fx)`` of a separable 2-D filter for the C kernel, gain included, or None where the kernel does not take
    it; a single row or column filters along one axis only (the other gets the identity ``(1.0,)``, which the kernel
    skips)."""
    if f.shape[0] == 1 or f.shape[1] == 1:
        if f.numel() > upfirdn2d_cpu.MAX_TAPS:
            return None
        taps = tuple((f * gain).flatten().tolist())  # the gain in float32, as the contract applies it
        return ((1.0,), taps) if f.shape[0] == 1 else (taps, (1.0,))
    return _separable_taps(f, gain)  # (None above 64 values, so at most 64 taps per axis)


_function_cache = {}


def _upfirdn2d_function(up=1, down=1, padding=0, flip_filter=False, gain=1):
    """Autograd Function for one configuration, cached: the CUDA plugin or the CPU kernel forward, and a backward that
    is another upfirdn2d (swapped up/down, flipped filter), so gradients of any order exist."""
    upx, upy = _parse_scaling(up)
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    key = (upx, upy, downx, downy, padx0, padx1, pady0, pady1, bool(flip_filter), float(gain))
    if key in _function_cache:
        return _function_cache[key]

    class Upfirdn2d(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, f):
            f = _check_filter(f, x).to(x.device)
            ctx.save_for_backward(f)
            ctx.x_shape = x.shape
            kernel = _plugin.module.upfirdn2d if x.device.type == 'cuda' else _cpu_kernel
            flip = bool(flip_filter)
            if f.ndim == 2:
                y = kernel(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, float(gain))
            else:  # separable: a horizontal pass then a vertical pass, each with half the gain's power
                g = math.sqrt(gain)
                y = kernel(x, f.unsqueeze(0), upx, 1, downx, 1, padx0, padx1, 0, 0, flip, g)
                y = kernel(y, f.unsqueeze(1), 1, upy, 1, downy, 0, 0, pady0, pady1, flip, g)
            return y

        @staticmethod
        def backward(ctx, dy):
            f, = ctx.saved_tensors
            _, _, in_h, in_w = ctx.x_shape
            _, _, out_h, out_w = dy.shape
            fw, fh = _get_filter_size(f)
            pad = [
                fw - padx0 - 1,
                in_w * upx - out_w * downx + padx0 - upx + 1,
                fh - pady0 - 1,
                in_h * upy - out_h * downy + pady0 - upy + 1,
            ]
            dx = None
            if ctx.needs_input_grad[0]:
                dx = _upfirdn2d_function(up=[downx, downy], down=[upx, upy], padding=pad,
                                         flip_filter=not flip_filter, gain=gain).apply(dy, f)
            return dx, None

    _function_cache[key] = Upfirdn2d
    return Upfirdn2d


def filter2d(x, f, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Filter ``x`` with ``f``, keeping its size ("same" padding, plus any extra ``padding``)."""
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + fw // 2, padx1 + (fw - 1) // 2, pady0 + fh // 2, pady1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Upsample by ``up`` with the interpolation filter ``f``; the gain is multiplied by ``up_x * up_y``."""
    upx, upy = _parse_scaling(up)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw + upx - 1) // 2, padx1 + (fw - upx) // 2, pady0 + (fh + upy - 1) // 2, pady1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * upx * upy, impl=impl)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1, impl='cuda'):
    """Downsample by ``down`` after filtering with the anti-aliasing filter ``f``."""
    downx, downy = _parse_scaling(down)
    padx0, padx1, pady0, pady1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [padx0 + (fw - downx + 1) // 2, padx1 + (fw - downx) // 2,
         pady0 + (fh - downy + 1) // 2, pady1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
