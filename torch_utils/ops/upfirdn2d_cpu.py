"""upfirdn2d's CPU kernel (``csrc/upfirdn_cpu.c``) for separable filters: per image plane, a pass along the width into
a cache-resident buffer, then one along the height, each doing the zero insertion, padding, filtering and decimation
of its axis at once. It follows the plugin's contract (``_cpu_kernel`` in upfirdn2d.py calls it, without autograd;
the autograd Function around it makes the gradient another upfirdn2d). Where the C compiler is missing, or a filter
has more than ``MAX_TAPS`` taps per axis, ``_cpu_kernel`` keeps its depthwise convolution (see
``torch_utils.c_kernel``).
"""

import ctypes
import functools
import os

import torch

from .. import c_kernel

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'upfirdn_cpu.c')
ABI = 2
MAX_TAPS = 64
_SUFFIX = {torch.float32: 'f32', torch.float64: 'f64'}


def _declare(lib):
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in _SUFFIX.values():
        fn = getattr(lib, f'bigan_upfirdn2d_{suffix}')
        fn.argtypes = [ptr, ptr, i64, i64, i64, i64, i64, i64, i64, i64, i64, i32, i32, i32, i32, i64, i64, ptr, i32,
                       ptr, i32, i32, i32, i32]
        fn.restype = i32


KERNEL = c_kernel.CKernel(SOURCE, ABI, _declare, what='CPU upfirdn2d kernel',
                          fallback='upfirdn2d uses a depthwise convolution')


def usable(x) -> bool:
    """Whether the kernel takes ``x`` (float32/float64 on the CPU, kernel built); the caller has checked the
    reference ops."""
    return x.dtype in _SUFFIX and not x.is_cuda and KERNEL.library() is not None


@functools.lru_cache(maxsize=256)
def _tap_array(taps):
    return (ctypes.c_double * len(taps))(*taps)


def upfirdn2d(x, fy, fx, upx, upy, downx, downy, padx0, padx1, pady0, pady1):
    """``x`` [N, C, H, W] zero-inserted, padded, filtered with the separable taps ``fy`` (height) and ``fx`` (width),
    both in correlation order, and decimated; an axis whose taps are ``(1.0,)`` with no resampling or padding is left
    alone. No autograd."""
    if len(fy) > MAX_TAPS or len(fx) > MAX_TAPS:
        raise ValueError(f'the CPU kernel takes at most {MAX_TAPS} taps per axis')
    if x.stride(3) != 1:  # rows must be contiguous; a cropped view (other row, plane strides) is read in place
        x = x.contiguous()
    n, c, h, w = x.shape
    w_out = (w * upx + padx0 + padx1 - len(fx)) // downx + 1
    h_out = (h * upy + pady0 + pady1 - len(fy)) // downy + 1
    if w_out < 1 or h_out < 1 or x.numel() == 0:
        return x.new_zeros([n, c, max(h_out, 0), max(w_out, 0)])
    do_x = not (fx == (1.0,) and upx == downx == 1 and padx0 == padx1 == 0)
    do_y = not (fy == (1.0,) and upy == downy == 1 and pady0 == pady1 == 0)
    if not (do_x or do_y):
        return x.clone(memory_format=torch.contiguous_format)
    y = x.new_empty([n, c, h_out, w_out])
    status = getattr(KERNEL.library(), f'bigan_upfirdn2d_{_SUFFIX[x.dtype]}')(
        x.data_ptr(), y.data_ptr(), n, c, x.stride(0), x.stride(1), x.stride(2), h, w, h_out, w_out, upx, upy, downx,
        downy, padx0, pady0, _tap_array(fx), len(fx), _tap_array(fy), len(fy), int(do_x), int(do_y),
        torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f'upfirdn2d kernel rejected its arguments ({tuple(x.shape)} to {h_out}x{w_out})')
    return y
