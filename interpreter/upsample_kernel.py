"""The optional C kernels behind the fast ensemble path on CPU (``csrc/upsample_accumulate.c``): fused upsampling
of several low-resolution projections into one band of output rows, and a tiled transpose for the pixel-major
copies of the feature maps.

Pure PyTorch needs one pass over the band per resolution (an x interpolation, then a small GEMM along y), which
makes the upsampling memory-bound; the kernel keeps each pixel's sum over all resolutions in registers and reads
the band once. The kernel is plain C (no PyTorch headers), compiled once with the system C compiler (``$CC`` or
``cc``) for the machine it runs on, cached next to the CUDA plugins (``torch_utils.custom_ops.build_root()``) under a
digest of the source, the compiler and the CPU (or, where that folder cannot be written, built privately per
process: it takes well under a second), and called through ``ctypes``. It is built with OpenMP where the
compiler has it and then runs on PyTorch's own OpenMP threads (``torch.get_num_threads()``): the library binds to
the ``libgomp.so.1`` PyTorch has loaded, so the two never fight over the cores (Python threads around the call
did, and were slower than one thread).

Where no compiler is available or the build fails, ``get()`` warns once and returns None and the callers use the
PyTorch path; ``BIGAN_REF_OPS=1`` (or ``torch_utils.custom_ops.reference_ops()``) selects the PyTorch path too.
Both paths compute the same sums up to float rounding.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from typing import Optional

import numpy as np
import torch

from torch_utils import custom_ops

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'upsample_accumulate.c')
FLAGS = ['-O3', '-march=native', '-std=gnu11', '-shared', '-fPIC']
OPENMP_FLAG = '-fopenmp'
ABI = 3
ACCUMULATE, RELU = 1, 2  # flags of bigan_upsample_accumulate

_lock = threading.Lock()
_state = {'tried': False, 'lib': None}


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags (a cache shared between different
    machines must not hand one machine's build to another)."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = [line for line in f if line.startswith(('model name', 'flags', 'Features', 'CPU part'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> str:
    return os.environ.get('CC') or 'cc'


def _build(out_dir: str) -> str:
    """Compile the kernel into ``out_dir`` (atomically) and return the library path."""
    cc = _compiler()
    if shutil.which(cc) is None:
        raise RuntimeError(f'no C compiler ({cc!r} not found; set CC)')
    version = subprocess.run([cc, '--version'], capture_output=True, text=True, timeout=60).stdout
    with open(SOURCE, 'rb') as f:
        source = f.read()
    digest = hashlib.sha256(b'\0'.join([source, version.encode(), ' '.join(FLAGS).encode(),
                                        _cpu_signature().encode()])).hexdigest()[:16]
    target_dir = os.path.join(out_dir, f'bigan_upsample_accumulate-{digest}')
    target = os.path.join(target_dir, 'upsample_accumulate.so')
    if os.path.isfile(target):
        return target
    os.makedirs(target_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=target_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *FLAGS, OPENMP_FLAG, '-o', tmp, SOURCE], capture_output=True, text=True,
                              timeout=300)
        if proc.returncode != 0:  # a compiler without OpenMP: a single-threaded build
            proc = subprocess.run([cc, *FLAGS, '-o', tmp, SOURCE], capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ['(no output)'])[0]
            raise RuntimeError(f'{cc} failed: {detail}')
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _load(path: str):
    lib = ctypes.CDLL(path)
    lib.bigan_kernel_abi.restype = ctypes.c_int
    if lib.bigan_kernel_abi() != ABI:
        raise RuntimeError(f'{path} has another kernel ABI')
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.bigan_upsample_accumulate.argtypes = [ptr, i64, i64, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64,
                                              ptr, i64, i64]
    lib.bigan_upsample_accumulate.restype = ctypes.c_int
    lib.bigan_transpose_into.argtypes = [ptr, i64, i64, ptr, i64, i64]
    lib.bigan_transpose_into.restype = ctypes.c_int
    return lib


def _load_built():
    """Build (or reuse) in the shared cache; where that folder cannot be written (a read-only or full home), build
    into a private temporary folder instead: the build takes well under a second, and the loaded library outlives
    its file."""
    try:
        path = _build(custom_ops.build_root())
    except OSError:
        with tempfile.TemporaryDirectory(prefix='bigan-kernel-') as tmp:
            return _load(_build(tmp))
    return _load(path)


def get():
    """The compiled kernel library (``ctypes.CDLL``), or None when the PyTorch path must be used."""
    if custom_ops.reference_ops_forced():
        return None
    with _lock:
        if not _state['tried']:
            _state['tried'] = True
            try:
                _state['lib'] = _load_built()
            except Exception as exc:  # no compiler, a failed build, an unloadable library: use PyTorch
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                warnings.warn(f'Could not build the CPU upsampling kernel ({reason[:200]}); the mask generator '
                              f'uses its slower PyTorch path. Set {custom_ops.FORCE_REF_ENV}=1 to skip the build.',
                              RuntimeWarning)
        return _state['lib']


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
