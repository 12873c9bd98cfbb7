"""3x3 convolutions by the Winograd F(2x2, 3x3) algorithm on the CPU fast path.

A 3x3, stride-1, padding-1 correlation costs 9 multiply-adds per output and input channel; Winograd's minimal
filtering computes each 2x2 output tile from a 4x4 input patch with 16, i.e. 2.25 times fewer. The convolution
becomes

    y = wino_out( bmm(U, wino_in(x)) ),     U = (G (x) G) w     [16, O, C]

where ``wino_in`` cuts x into overlapping 4x4 patches and transforms each (``B^T d B``), the 16 batched products
over channels are PyTorch's matrix products, and ``wino_out`` transforms back and crops (``A^T m A``). The two maps
around the products run in ``csrc/winograd_cpu.c``. Every piece is linear and has its adjoint as its autograd
backward, so gradients of any order flow through the same algorithm (R1 and path length need the second).

The result is the convolution's up to rounding: the transforms only add and subtract, and the weight transform
halves; the error measured against float64 is about twice the direct convolution's (see tests/test_winograd.py).
It pays where the products dominate: many channels on small maps, which is where the GAN's 512-channel layers run.
"""

import ctypes
import functools
import os

import torch

from .. import c_kernel

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'winograd_cpu.c')
ABI = 1
_SUFFIX = {torch.float32: 'f32', torch.float64: 'f64'}

#: Channels per group (in and out) from which a 3x3 convolution runs as Winograd on the CPU fast path: with fewer,
#: the products are too small to pay for the transforms.
MIN_CHANNELS = 256
#: Map sizes (height * width) it takes. Below the minimum the weight transform (one per call, and per sample in the
#: fused modulated convolution) costs more than it saves; above the maximum the transforms, which are memory bound,
#: cost more than the products save (measured: bench/bench_ops.py).
MIN_PIXELS, MIN_PIXELS_GROUPED, MAX_PIXELS = 16 * 16, 32 * 32, 64 * 64


def _declare(lib):
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for suffix in _SUFFIX.values():
        for name, args in (('in', [ptr, ptr, i64, i64, i64, i64, i64, i64, i64, i32]),
                           ('in_t', [ptr, ptr, i64, i64, i64, i64, i32]),
                           ('out', [ptr, ptr, i64, i64, i64, i64, i32]),
                           ('out_t', [ptr, ptr, i64, i64, i64, i64, i64, i64, i64, i32])):
            fn = getattr(lib, f'bigan_wino_{name}_{suffix}')
            fn.argtypes = args
            fn.restype = i32


KERNEL = c_kernel.CKernel(SOURCE, ABI, _declare, what='CPU Winograd kernel',
                          fallback='3x3 convolutions use oneDNN directly')


def usable(x, w, groups=1) -> bool:
    """Whether ``conv2d(x, w, padding=1, groups=groups)`` runs as Winograd here: float32/float64 on the CPU, a 3x3
    kernel, at least ``MIN_CHANNELS`` channels per group in and out, a map within the measured range, kernel built.
    The caller has checked the reference ops, the stride and the padding."""
    pixels = x.shape[2] * x.shape[3]
    return (x.dtype in _SUFFIX and w.dtype == x.dtype and not x.is_cuda and w.shape[2] == 3 and w.shape[3] == 3
            and x.shape[1] // groups >= MIN_CHANNELS and w.shape[0] // groups >= MIN_CHANNELS
            and (MIN_PIXELS if groups == 1 else MIN_PIXELS_GROUPED) <= pixels <= MAX_PIXELS and x.shape[0] > 0
            and KERNEL.library() is not None)


def _tiles(h, w):
    return ((h + 1) // 2) * ((w + 1) // 2)


def _call(name, x, *args):
    status = getattr(KERNEL.library(), f'bigan_wino_{name}_{_SUFFIX[x.dtype]}')(*args, torch.get_num_threads())
    if status != 0:
        raise RuntimeError(f'Winograd kernel {name} rejected its arguments ({tuple(x.shape)})')


def _rows_contiguous(x):
    return x if x.stride(3) == 1 else x.contiguous()


def transform_input(x):
    """x [N, C, H, W] -> V [16, C, N * T]: ``B^T d B`` of every tile's 4x4 input patch (no autograd)."""
    x = _rows_contiguous(x)
    n, c, h, w = x.shape
    v = x.new_empty([16, c, n * _tiles(h, w)])
    _call('in', x, x.data_ptr(), v.data_ptr(), n, c, x.stride(0), x.stride(1), x.stride(2), h, w)
    return v


def transform_input_adjoint(v, n, h, w):
    """The adjoint of ``transform_input``: V [16, C, N * T] -> x [N, C, H, W] (no autograd)."""
    v = v.contiguous()
    x = v.new_empty([n, v.shape[1], h, w])
    _call('in_t', v, v.data_ptr(), x.data_ptr(), n, v.shape[1], h, w)
    return x


def transform_output(m, n, h, w):
    """M [16, O, N * T] -> y [N, O, H, W]: ``A^T m A`` of every tile, cropped (no autograd)."""
    m = m.contiguous()
    y = m.new_empty([n, m.shape[1], h, w])
    _call('out', m, m.data_ptr(), y.data_ptr(), n, m.shape[1], h, w)
    return y


def transform_output_adjoint(y):
    """The adjoint of ``transform_output``: y [N, O, H, W] -> M [16, O, N * T] (no autograd)."""
    y = _rows_contiguous(y)
    n, c, h, w = y.shape
    m = y.new_empty([16, c, n * _tiles(h, w)])
    _call('out_t', y, y.data_ptr(), m.data_ptr(), n, c, y.stride(0), y.stride(1), y.stride(2), h, w)
    return m


class _Input(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return transform_input(x)

    @staticmethod
    def backward(ctx, dv):
        n, _c, h, w = ctx.shape
        return _InputAdjoint.apply(dv, n, h, w)


class _InputAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, n, h, w):
        return transform_input_adjoint(v, n, h, w)

    @staticmethod
    def backward(ctx, dx):
        return _Input.apply(dx), None, None, None


class _Output(torch.autograd.Function):
    @staticmethod
    def forward(ctx, m, n, h, w):
        return transform_output(m, n, h, w)

    @staticmethod
    def backward(ctx, dy):
        return _OutputAdjoint.apply(dy), None, None, None


class _OutputAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        ctx.shape = y.shape
        return transform_output_adjoint(y)

    @staticmethod
    def backward(ctx, dm):
        n, _c, h, w = ctx.shape
        return _Output.apply(dm, n, h, w)


# G of F(2x2, 3x3) (points 0, 1, -1, infinity), and G (x) G, which maps a flattened 3x3 kernel to its 16 points.
_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


@functools.lru_cache(maxsize=8)
def _kron_g(dtype):
    g = torch.tensor(_G, dtype=torch.float64)
    return torch.kron(g, g).to(dtype)  # [16, 9]: row 4 i + j, column 3 k + l


def transform_weight(w):
    """w [O, C, 3, 3] -> U [16, O, C] = G w G^T at every (output, input) pair, as one differentiable product."""
    o, c = w.shape[:2]
    return (_kron_g(w.dtype) @ w.reshape(o * c, 9).t()).reshape(16, o, c)


#: Largest transformed tensor (bytes) made at once; a call whose transforms are larger runs in parts. This bounds
#: the extra memory (the transform of a 2x2 tile is four times its size); on the auto 64x64 training step parts of
#: 16 to 64 MiB ran within 3 % of each other.
CHUNK_BYTES = 32 << 20


def _conv(x, w, groups):
    n, c, h, wd = x.shape
    o = w.shape[0]
    v = _Input.apply(x)
    m = torch.bmm(transform_weight(w).reshape(16 * groups, o // groups, c // groups),
                  v.reshape(16 * groups, c // groups, v.shape[2]))
    return _Output.apply(m.reshape(16, o, v.shape[2]), n, h, wd)


def conv2d(x, w, groups=1):
    """``torch.nn.functional.conv2d(x, w, padding=1, groups=groups)`` for a 3x3 kernel, by Winograd F(2x2, 3x3);
    differentiable to any order. Groups (the fused modulated convolution's one group per sample) are a batch
    dimension of the products. A call whose transformed tensors would exceed ``CHUNK_BYTES`` runs in parts: groups
    of images, or of convolution groups when there is one image."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    per_image = 16 * max(c, o) * _tiles(h, wd) * x.element_size()
    if per_image * n <= CHUNK_BYTES:
        return _conv(x, w, groups)
    if n > 1:
        step = max(1, CHUNK_BYTES // per_image)
        return torch.cat([conv2d(xs, w, groups) for xs in x.split(step)])
    step = max(1, groups * CHUNK_BYTES // per_image)  # convolution groups per part
    if step >= groups:
        return _conv(x, w, groups)
    return torch.cat([_conv(xs, ws, xs.shape[1] // (c // groups))
                      for xs, ws in zip(x.split(step * (c // groups), dim=1), w.split(step * (o // groups)))], dim=1)
