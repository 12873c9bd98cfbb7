"""2-D convolution with optional FIR-filtered upsampling and downsampling, fused where possible.

The geometry follows StyleGAN2-ADA exactly, because pickled weights depend on it: ``flip_weight=True`` is
correlation (what ``F.conv2d`` does) and the network layers pass ``flip_weight=(up == 1)``, so upsampling
layers run a transposed convolution on the stored weight without flipping it.
"""

import math

import torch
import torch.nn.functional as F

from .. import custom_ops
from . import conv2d_gradfix, winograd_cpu
from .upfirdn2d import _get_filter_size, _parse_padding, upfirdn2d


def _conv2d_wrapper(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    """Plain or transposed convolution; ``flip_weight=False`` flips the kernel (true convolution)."""
    if not flip_weight and (w.shape[2] > 1 or w.shape[3] > 1):
        w = w.flip([2, 3])
    if not transpose and stride == 1 and custom_ops.cpu_fast_path(x, w):
        if (groups == 1 and w.shape[2] == 1 and w.shape[3] == 1 and padding in (0, [0, 0])
                and _small_pointwise(x, w)):
            return pointwise_matmul(x, w)
        if padding in (1, [1, 1]) and winograd_cpu.usable(x, w, groups):
            return winograd_cpu.conv2d(x, w, groups=groups)
    if transpose:
        # Inference only: with gradients, the per-phase convolutions' backward costs more than the transposed one.
        if stride > 1 and custom_ops.cpu_fast_path(x, w, inference_only=True):
            return conv_transpose2d_polyphase(x, w, stride=stride, padding=padding, groups=groups)
        return conv2d_gradfix.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    return conv2d_gradfix.conv2d(x, w, stride=stride, padding=padding, groups=groups)


#: A 1x1 convolution of at most this many multiply-adds runs as a matrix product on the CPU fast path.
POINTWISE_MATMUL_MAX_MACS = 1 << 22


def _small_pointwise(x, w):
    return x.shape[0] * x.shape[1] * x.shape[2] * x.shape[3] * w.shape[0] <= POINTWISE_MATMUL_MAX_MACS


def pointwise_matmul(x, w):
    """``conv2d(x, w)`` for a 1x1 kernel as one batched product ``w [O, I] @ x [N, I, H*W]``. On small maps (the
    tiny networks' skip, toRGB and fromRGB layers) this is two to three times faster than oneDNN's convolution,
    forward and backward, whose fixed cost dominates there; on large ones the convolution is faster."""
    n, c, h, wd = x.shape
    return torch.matmul(w.reshape(w.shape[0], c), x.reshape(n, c, h * wd)).reshape(n, w.shape[0], h, wd)


def conv_transpose2d_polyphase(x, w, stride, padding=0, groups=1, output_padding=0):
    """``conv_transpose2d(x, w, stride, padding, output_padding, groups)`` as ordinary convolutions, one per output
    phase.

    A stride-s transposed convolution writes output phase (py, px) from the kernel taps ``p, p + s, ...`` only, so
    each phase is a small correlation of the input with those taps, flipped; the s * s phase outputs are then
    interleaved. This does exactly the transposed convolution's multiplications, as dense convolutions, which on the
    CPU are several times faster than PyTorch's transposed convolution, and it stays differentiable to any order.
    """
    s = int(stride)
    pad_y, pad_x = conv2d_gradfix._pair(padding)
    n, c_in, h, wd = x.shape
    _, c_out_g, kh, kw = w.shape
    c_in_g = c_in // groups
    ty, tx = math.ceil(kh / s), math.ceil(kw / s)  # most taps of a phase
    len_y, len_x = (h - 1) * s + kh, (wd - 1) * s + kw  # the full transposed-convolution output
    my, mx = h - 1 + ty, wd - 1 + tx  # outputs per phase
    w = w.reshape(groups, c_in_g, c_out_g, kh, kw).transpose(1, 2)  # [g, Cout/g, Cin/g, kh, kw]
    y = x.new_empty([n, groups * c_out_g, my, s, mx, s])  # phase (py, px) of row my, column mx
    for py in range(s):
        for px in range(s):
            taps = w[..., py::s, px::s]
            ny, nx = taps.shape[-2:]
            if ny == 0 or nx == 0:  # a stride above the kernel size leaves this phase at zero
                y[:, :, :, py, :, px] = 0
                continue
            # Output row i of the phase sums taps[a] * x[i + a - (ny - 1)]: the convolution's own zero padding,
            # so x is read as it is; a phase with fewer taps than the most has zero rows (columns) at the end.
            taps = taps.flip([3, 4]).reshape(groups * c_out_g, c_in_g, ny, nx).to(x.dtype)
            y[:, :, :h + ny - 1, py, :wd + nx - 1, px] = conv2d_gradfix.conv2d(x, taps, padding=[ny - 1, nx - 1],
                                                                               groups=groups)
            y[:, :, h + ny - 1:, py, :, px] = 0
            y[:, :, :, py, wd + nx - 1:, px] = 0
    y = y.reshape(n, groups * c_out_g, my * s, mx * s)
    op_y, op_x = conv2d_gradfix._pair(output_padding)
    end_y, end_x = len_y - pad_y + op_y, len_x - pad_x + op_x  # output padding: rows past the full output are zero
    if end_y > my * s or end_x > mx * s:
        y = F.pad(y, [0, max(end_x - mx * s, 0), 0, max(end_y - my * s, 0)])
    return y[:, :, pad_y: end_y, pad_x: end_x]


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True, flip_filter=False):
    """Convolve ``x`` [N, C, H, W] with ``w`` [O, C/groups, kh, kw], upsampling by ``up`` before and
    downsampling by ``down`` after, both filtered with the prepared FIR filter ``f``. ``padding`` is
    relative to the upsampled image and is applied once."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError('x must be a 4-D tensor [N, C, H, W]')
    if not isinstance(w, torch.Tensor) or w.ndim != 4 or w.dtype != x.dtype:
        raise ValueError('w must be a 4-D tensor [O, I, kh, kw] with the dtype of x')
    if f is not None and (not isinstance(f, torch.Tensor) or f.ndim not in (1, 2) or f.dtype != torch.float32):
        raise ValueError('f must be None or a float32 filter from setup_filter()')
    if not (isinstance(up, int) and up >= 1 and isinstance(down, int) and down >= 1 and isinstance(groups, int)):
        raise ValueError('up and down must be ints >= 1 and groups an int')
    out_channels, in_channels_per_group, kh, kw = w.shape
    fw, fh = _get_filter_size(f)
    px0, px1, py0, py1 = _parse_padding(padding)

    # Grow the padding to cover the filter's support around the resampling.
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2

    # 1x1 kernel + downsampling: filter and decimate first, then the cheap 1x1 conv on fewer pixels.
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)

    # 1x1 kernel + upsampling: the 1x1 conv first, on fewer pixels, then upsample.
    if kw == 1 and kh == 1 and (up > 1 and down == 1):
        x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
        return upfirdn2d(x, f, up=up, padding=[px0, px1, py0, py1], gain=up ** 2, flip_filter=flip_filter)

    # Downsampling only: filter, then a strided convolution.
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1], flip_filter=flip_filter)
        return _conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)

    # Upsampling (optionally followed by downsampling): a transposed convolution, then the filter.
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_channels // groups, in_channels_per_group, kh, kw)
            w = w.transpose(1, 2)
            w = w.reshape(groups * in_channels_per_group, out_channels // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt = max(min(-px0, -px1), 0)
        pyt = max(min(-py0, -py1), 0)
        x = _conv2d_wrapper(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                            flip_weight=(not flip_weight))
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2,
                      flip_filter=flip_filter)
        if down > 1:
            x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
        return x

    # No resampling and symmetric, non-negative padding: one ordinary convolution.
    if up == 1 and down == 1 and px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return _conv2d_wrapper(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)

    # Anything else (e.g. asymmetric padding): pad/resample, convolve, then downsample.
    x = upfirdn2d(x, (f if up > 1 else None), up=up, padding=[px0, px1, py0, py1], gain=up ** 2,
                  flip_filter=flip_filter)
    x = _conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1:
        x = upfirdn2d(x, f, down=down, flip_filter=flip_filter)
    return x
