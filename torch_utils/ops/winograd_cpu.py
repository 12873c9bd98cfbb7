"""3x3 convolutions by the Winograd F(2x2, 3x3) algorithm on the CPU fast path.

A 3x3, stride-1, padding-1 correlation costs 9 multiply-adds per output and input channel; Winograd's minimal
filtering computes each 2x2 output tile from a 4x4 input patch with 16, i.e. 2.25 times fewer. The convolution
becomes

    y = wino_out( bmm(U, wino_in(x)) ),     U = (G (x) G) w     [16, O, C]

where ``wino_in`` cuts x into overlapping 4x4 patches and transforms each (``B^T d B``), the 16 batched products
over channels are PyTorch's matrix products, and ``wino_out`` transforms back and crops (``A^T m A``). The two maps
around the products run in ``csrc/winograd_cpu.c``. Every piece is linear and has its adjoint as its autograd
backward, so gradients of any order flow through the same algorithm (R1 and path length need the second). The
transformed tensors are temporaries in a per-thread workspace that is reused from call to call (at most two parts'
worth, see ``CHUNK_BYTES``); the backward transforms x again rather than keep its transform.

The result is the convolution's up to rounding: the transforms only add and subtract, and the weight transform
halves; the error measured against float64 is about twice the direct convolution's (see tests/test_winograd.py).
It pays where the products dominate: many channels on small maps, which is where the GAN's 512-channel layers run.
"""

import ctypes
import functools
import os
import threading

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
#: cost more than the products save (measured per shape against oneDNN on two cores, forward and forward + backward:
#: 1.5-1.9x at 16-64 px with 256-512 channels, 0.7-1.0x at 4-8 px, 0.5-0.9x at 128-256 px).
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


def _to_tiles(name, x, out=None):
    """A map from x [N, C, H, W] (rows contiguous; other strides read in place) to [16, C, N * T] (into ``out``, a
    contiguous tensor of that shape, if given)."""
    if x.stride(3) != 1:
        x = x.contiguous()
    n, c, h, w = x.shape
    t = x.new_empty([16, c, n * _tiles(h, w)]) if out is None else out
    _call(name, x, x.data_ptr(), t.data_ptr(), n, c, x.stride(0), x.stride(1), x.stride(2), h, w)
    return t


def _from_tiles(name, t, n, h, w):
    """A map from [16, C, N * T] to [N, C, H, W]."""
    t = t.contiguous()
    x = t.new_empty([n, t.shape[1], h, w])
    _call(name, t, t.data_ptr(), x.data_ptr(), n, t.shape[1], h, w)
    return x


def transform_input(x, out=None):
    """x [N, C, H, W] -> V [16, C, N * T]: ``B^T d B`` of every tile's 4x4 input patch (no autograd)."""
    return _to_tiles('in', x, out)


def transform_input_adjoint(v, n, h, w):
    """The adjoint of ``transform_input``: V [16, C, N * T] -> x [N, C, H, W] (no autograd)."""
    return _from_tiles('in_t', v, n, h, w)


def transform_output(m, n, h, w):
    """M [16, O, N * T] -> y [N, O, H, W]: ``A^T m A`` of every tile, cropped (no autograd)."""
    return _from_tiles('out', m, n, h, w)


def transform_output_adjoint(y, out=None):
    """The adjoint of ``transform_output``: y [N, O, H, W] -> M [16, O, N * T] (no autograd)."""
    return _to_tiles('out_t', y, out)


class _LinearMap(torch.autograd.Function):
    """``op(t, *op_args)`` for a linear map whose gradient is ``adjoint(grad, *adjoint_args)``: the backward is the
    same Function with the roles swapped, so the gradient is differentiable again, to any order."""

    @staticmethod
    def forward(ctx, t, op, op_args, adjoint, adjoint_args):
        ctx.maps = (adjoint, adjoint_args, op, op_args)
        return op(t, *op_args)

    @staticmethod
    def backward(ctx, grad):
        return _LinearMap.apply(grad, *ctx.maps), None, None, None, None


def _input(x, out=None):
    n, _c, h, w = x.shape
    return _LinearMap.apply(x, transform_input, (out,), transform_input_adjoint, (n, h, w))


class _Workspace(threading.local):
    """One reusable buffer per role and dtype (per thread) for the temporaries of ``_Part``'s forward and first-order
    backward, which nothing keeps past the call."""

    def __init__(self):
        self.buffers = {}

    def get(self, role, shape, like):
        numel = shape[0] * shape[1] * shape[2]
        buf = self.buffers.get((role, like.dtype))
        if buf is None or buf.numel() < numel:
            buf = self.buffers[(role, like.dtype)] = like.new_empty([numel])
        return buf[:numel].view(shape)


_WORKSPACE = _Workspace()


class _Part(torch.autograd.Function):
    """``wino_out(bmm(u, wino_in(x)))``: the convolution of one part with the transformed weight u
    [16 * groups, O / groups, C / groups].

    The forward's transformed input and products (4x the size of x and of y) live in a reused workspace, and the
    backward keeps x and transforms it again (a fraction of a millisecond per MiB) instead of keeping the transform.
    As fresh tensors held until the backward they grew and trimmed glibc's heap by about 100 MiB on every
    discriminator pass, i.e. 25,000 page faults. The backward is made of differentiable operations, so second-order
    gradients flow."""

    @staticmethod
    def forward(ctx, u, x):
        ctx.save_for_backward(u, x)
        n, c, h, w = x.shape
        nt = n * _tiles(h, w)
        v = transform_input(x, _WORKSPACE.get('v', [16, c, nt], x))
        m = _WORKSPACE.get('m', [u.shape[0], u.shape[1], nt], x)
        torch.bmm(u, v.view(u.shape[0], u.shape[2], nt), out=m)
        return transform_output(m.view(16, -1, nt), n, h, w)

    @staticmethod
    def backward(ctx, dy):
        u, x = ctx.saved_tensors
        n, c, h, w = x.shape
        g, nt = u.shape[0], n * _tiles(h, w)
        # Building no graph, the temporaries go in the workspace; building one (second order), they are kept.
        graph = torch.is_grad_enabled()

        def temporary(role, shape):
            return None if graph else _WORKSPACE.get(role, shape, x)

        dm = _LinearMap.apply(dy, transform_output_adjoint, (temporary('m', [16, u.shape[1] * g // 16, nt]),),
                              transform_output, (n, h, w)).view(g, u.shape[1], nt)
        du = dx = None
        if ctx.needs_input_grad[0]:
            v = _input(x, temporary('v', [16, c, nt]))
            du = torch.bmm(dm, v.view(g, u.shape[2], nt).transpose(1, 2))
        if ctx.needs_input_grad[1]:  # (the transform of x above is no longer needed: its buffer is reused)
            dv = torch.bmm(u.transpose(1, 2), dm, out=temporary('v', [g, u.shape[2], nt]))
            dx = _LinearMap.apply(dv.view(16, c, nt), transform_input_adjoint, (n, h, w), transform_input, ())
        return du, dx


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


#: Largest transformed tensor (bytes) made at once; a call whose transforms are larger runs in parts. Besides bounding
#: the extra memory (the transform of a 2x2 tile is four times its size), this keeps every temporary well under
#: glibc's largest mmap threshold (32 MiB): larger blocks are mapped afresh by each call and zero-filled page by page,
#: which took the 64x64, 256-channel forward + backward from 0.13 s to 0.20 s on two cores (90k page faults a call).
CHUNK_BYTES = 16 << 20


def _conv(x, u, groups):
    """The convolution of x with the transformed weight u [16, O, C / groups], in one part."""
    c, o = x.shape[1], u.shape[1]
    return _Part.apply(u.reshape(16 * groups, o // groups, c // groups), x)


def _by_groups(x, w, groups, per_image):
    """One image whose transforms exceed ``CHUNK_BYTES``: parts of convolution groups (each its own weights)."""
    c, o = x.shape[1], w.shape[0]
    step = max(1, groups * CHUNK_BYTES // per_image)  # convolution groups per part
    if step >= groups:
        return _conv(x, transform_weight(w), groups)
    return torch.cat([_conv(xs, transform_weight(ws), xs.shape[1] // (c // groups))
                      for xs, ws in zip(x.split(step * (c // groups), dim=1), w.split(step * (o // groups)))], dim=1)


def conv2d(x, w, groups=1):
    """``torch.nn.functional.conv2d(x, w, padding=1, groups=groups)`` for a 3x3 kernel, by Winograd F(2x2, 3x3);
    differentiable to any order. Groups (the fused modulated convolution's one group per sample) are a batch
    dimension of the products. A call whose transformed tensors would exceed ``CHUNK_BYTES`` runs in parts of
    equal numbers of images (sharing one weight transform), or of convolution groups when one image is too large."""
    n, c, h, wd = x.shape
    o = w.shape[0]
    per_image = 16 * max(c, o) * _tiles(h, wd) * x.element_size()
    if per_image * n <= CHUNK_BYTES:
        return _conv(x, transform_weight(w), groups)
    if per_image > CHUNK_BYTES and groups > 1:
        return _by_groups(x, w, groups, per_image) if n == 1 else torch.cat(
            [_by_groups(xs, w, groups, per_image) for xs in x.split(1)])
    parts = x.split(-(-n // -(-n * per_image // CHUNK_BYTES)))
    u = transform_weight(w)
    return _conv(x, u, groups) if len(parts) == 1 else torch.cat([_conv(xs, u, groups) for xs in parts])
