"""The optional C kernels behind the fast ensemble path on CPU (``csrc/upsample_accumulate.c``): fused upsampling
of several low-resolution projections into one band of output rows, and a tiled transpose for the pixel-major
copies of the feature maps.

Pure PyTorch needs one pass over the band per resolution (an x interpolation, then a small GEMM along y), which
makes the upsampling memory-bound; the kernel keeps each pixel's sum over all resolutions in registers and reads
the band once. The kernel is plain C, built and loaded by ``torch_utils.c_kernel`` (compiled once for the machine
it runs on, cached, called through ``ctypes``). It runs on PyTorch's own OpenMP threads (``torch.get_num_threads()``),
so the two never fight over the cores (Python threads around the call did, and were slower than one thread).

Where no compiler is available or the build fails, ``get()`` warns once and returns None and the callers use the
PyTorch path; ``BIGAN_REF_OPS=1`` (or ``torch_utils.custom_ops.reference_ops()``) selects the PyTorch path too.
Both paths compute the same sums up to float rounding.
"""

import ctypes
import os
from typing import Optional

import numpy as np
import torch

from torch_utils.c_kernel import CKernel

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'upsample_accumulate.c')
ABI = 3
ACCUMULATE, RELU = 1, 2  # flags of bigan_upsample_accumulate


def _declare(lib):
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.bigan_upsample_accumulate.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64,
                                              ptr, i64, i64]
    lib.bigan_upsample_accumulate.restype = ctypes.c_int
    lib.bigan_transpose_into.argtypes = [ptr, i64, i64, ptr, i64, i64]
    lib.bigan_transpose_into.restype = ctypes.c_int


KERNEL = CKernel(SOURCE, ABI, _declare, what='CPU upsampling kernel',
                 fallback='the mask generator uses its slower PyTorch path')


def get():
    """The compiled kernel library (``ctypes.CDLL``), or None when the PyTorch path must be used."""
    return KERNEL.get()


class BandAccumulator:
    """``out[rows of the band] += sum_k up(P_k)`` for fixed projection buffers ``P_k`` [r_k, r_k, h].

    ``sources``: list of (P_k tensor [r_k * r_k, h] or [r_k, r_k, h], contiguous float32 CPU, ``source_taps``
    tuple of resolution r_k to ``out_res``). The tensors must stay allocated while this object is used (it holds
    references to them); their contents may change between calls.
    """

    def __init__(self, lib, sources, out_res: int, hidden: int, threads: int = None):
        self.fn = lib.bigan_upsample_accumulate
        self.out_res = int(out_res)
        self.hidden = int(hidden)
        self.threads = max(1, int(threads or torch.get_num_threads()))
        n = len(sources)
        self._keep = []
        res, ptrs, taps = [], [], [[], [], [], []]
        for P, (i0, i1, w0, w1) in sources:
            if P.dtype != torch.float32 or P.device.type != 'cpu' or not P.is_contiguous():
                raise ValueError('projection buffers must be contiguous float32 CPU tensors')
            r = int(round((P.numel() // self.hidden) ** 0.5))
            if r * r * self.hidden != P.numel():
                raise ValueError(f'projection buffer of {P.numel()} values is not [r, r, {self.hidden}]')
            res.append(r)
            ptrs.append(P.data_ptr())
            self._keep.append(P)
            for j, (a, kind) in enumerate(zip((i0, i1, w0, w1), (np.int32, np.int32, np.float32, np.float32))):
                arr = np.ascontiguousarray(a, dtype=kind)
                if arr.shape != (self.out_res,):
                    raise ValueError(f'taps must have {self.out_res} entries, got {arr.shape}')
                self._keep.append(arr)
                taps[j].append(arr.ctypes.data)
        self._n = n
        self._P = (ctypes.c_void_p * n)(*ptrs)
        self._res = (ctypes.c_int64 * n)(*res)
        self._taps = [(ctypes.c_void_p * n)(*t) for t in taps]
        self._stride = max(1, sum(res) * self.hidden)
        self._scratch = torch.empty(self._stride * self.threads, dtype=torch.float32)

    def __call__(self, out: torch.Tensor, y0: int, rows: int, bias: Optional[torch.Tensor] = None,
                 accumulate: bool = True, relu: bool = False):
        """``out`` (contiguous float32 [rows * out_res, hidden], the band from output row ``y0``) becomes
        ``relu?(out? + bias? + sum_k up(P_k))``: ``accumulate`` adds to what ``out`` holds (else it is overwritten),
        ``bias`` [hidden] is added when given, ``relu`` clamps the result at 0."""
        if (out.dtype != torch.float32 or not out.is_contiguous()
                or out.numel() != rows * self.out_res * self.hidden):
            raise ValueError('band must be a contiguous float32 tensor of rows * out_res * hidden values')
        if bias is not None and (bias.dtype != torch.float32 or not bias.is_contiguous()
                                 or bias.numel() != self.hidden):
            raise ValueError(f'bias must be a contiguous float32 tensor of {self.hidden} values')
        flags = (ACCUMULATE if accumulate else 0) | (RELU if relu else 0)
        status = self.fn(out.data_ptr(), y0, rows, self.out_res, self.hidden, self._n, self._P, self._res,
                         *self._taps, None if bias is None else bias.data_ptr(), flags, self._scratch.data_ptr(),
                         self._stride, self.threads)
        if status != 0:
            raise RuntimeError(f'upsampling kernel rejected its arguments (rows {y0}..{y0 + rows})')


def transpose_into(lib, src: torch.Tensor, dst: torch.Tensor, col: int, threads: int = None):
    """``dst[:, col:col + C] = src.reshape(C, -1).t()`` for a contiguous float32 ``src`` [C, ...] and a
    contiguous float32 ``dst`` [N, ld] (tiled; PyTorch's strided copy of a transpose is several times slower)."""
    C = src.shape[0]
    N = src.numel() // max(C, 1)
    if (src.dtype != torch.float32 or dst.dtype != torch.float32 or not src.is_contiguous()
            or not dst.is_contiguous() or dst.ndim != 2 or dst.shape[0] != N or not 0 <= col <= dst.shape[1] - C):
        raise ValueError('transpose_into needs contiguous float32 src [C, N] and dst [N, >= col + C]')
    threads = max(1, int(threads or torch.get_num_threads()))
    if lib.bigan_transpose_into(src.data_ptr(), C, N, dst.data_ptr() + 4 * col, dst.shape[1], threads) != 0:
        raise RuntimeError('transpose kernel rejected its arguments')
