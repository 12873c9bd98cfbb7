"""Optional plain-C CPU kernels: compiled on first use with the system C compiler, cached, called through ctypes.

A kernel is one C file without PyTorch headers, so it builds in well under a second. It is compiled with
``-O3 -march=native`` for the machine it runs on and cached next to the CUDA plugins
(``torch_utils.custom_ops.build_root()``) under a digest of the source, the compiler, the flags and the CPU; where
that folder cannot be written it is built privately per process. It is built with OpenMP where the compiler has it
and then binds to the ``libgomp.so.1`` PyTorch has already loaded, so the kernel runs on PyTorch's own thread team
instead of competing with it.

Where no compiler is available or the build fails, ``CKernel.get()`` warns once and returns None and the caller uses
its PyTorch path; ``BIGAN_REF_OPS=1`` (or ``torch_utils.custom_ops.reference_ops()``) selects the PyTorch path too.
Every source exports ``int bigan_kernel_abi(void)``, checked against the version the Python side expects.
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

from torch_utils import custom_ops

FLAGS = ['-O3', '-march=native', '-std=gnu11', '-shared', '-fPIC']
OPENMP_FLAG = '-fopenmp'


def cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and feature flags (a cache shared between different
    machines must not hand one machine's build to another)."""
    try:
        with open('/proc/cpuinfo') as f:
            lines = [line for line in f if line.startswith(('model name', 'flags', 'Features', 'CPU part'))]
        return ''.join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def compiler() -> str:
    return os.environ.get('CC') or 'cc'


class CKernel:
    """One C source built on first use.

    ``declare(lib)`` sets the ctypes signatures of the library's functions; ``what`` names the kernel and
    ``fallback`` says what runs instead, both for the one warning a failed build gives.
    """

    def __init__(self, source: str, abi: int, declare, what: str, fallback: str, extra_flags=()):
        self.source = source
        self.abi = int(abi)
        self.declare = declare
        self.what = what
        self.fallback = fallback
        self.flags = FLAGS + list(extra_flags)
        self.stem = os.path.splitext(os.path.basename(source))[0]
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        """Forget the library (and a failed attempt), so the next ``get()`` builds or loads again."""
        self._tried = False
        self._lib = None

    def get(self):
        """The compiled library (``ctypes.CDLL``), or None when the PyTorch path must be used."""
        if custom_ops.reference_ops_forced():
            return None
        return self.library()

    def library(self):
        """``get()`` for a caller that has already checked that the reference ops are not forced (an op's hot
        path, which ``custom_ops.cpu_fast_path`` has let through)."""
        if self._tried:
            return self._lib
        with self._lock:
            if not self._tried:
                try:
                    self._lib = self._load_built()
                except Exception as exc:  # no compiler, a failed build, an unloadable library: use PyTorch
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    warnings.warn(f'Could not build the {self.what} ({reason[:200]}); {self.fallback}. Set '
                                  f'{custom_ops.FORCE_REF_ENV}=1 to skip the build.', RuntimeWarning)
                self._tried = True
        return self._lib

    def build(self, out_dir: str) -> str:
        """Compile into ``out_dir`` (atomically, unless an identical build is there) and return the library path."""
        cc = compiler()
        if shutil.which(cc) is None:
            raise RuntimeError(f'no C compiler ({cc!r} not found; set CC)')
        version = subprocess.run([cc, '--version'], capture_output=True, text=True, timeout=60).stdout
        with open(self.source, 'rb') as f:
            source = f.read()
        digest = hashlib.sha256(b'\0'.join([source, version.encode(), ' '.join(self.flags).encode(),
                                            cpu_signature().encode()])).hexdigest()[:16]
        target_dir = os.path.join(out_dir, f'bigan_{self.stem}-{digest}')
        target = os.path.join(target_dir, f'{self.stem}.so')
        if os.path.isfile(target):
            return target
        os.makedirs(target_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=target_dir)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *self.flags, OPENMP_FLAG, '-o', tmp, self.source], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode != 0:  # a compiler without OpenMP: a single-threaded build
                proc = subprocess.run([cc, *self.flags, '-o', tmp, self.source], capture_output=True, text=True,
                                      timeout=300)
            if proc.returncode != 0:
                detail = (proc.stderr.strip().splitlines() or ['(no output)'])[0]
                raise RuntimeError(f'{cc} failed: {detail}')
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return target

    def _load(self, path: str):
        lib = ctypes.CDLL(path)
        lib.bigan_kernel_abi.restype = ctypes.c_int
        if lib.bigan_kernel_abi() != self.abi:
            raise RuntimeError(f'{path} has another kernel ABI')
        self.declare(lib)
        return lib

    def _load_built(self):
        """Build (or reuse) in the shared cache; where that folder cannot be written (a read-only or full home),
        build into a private temporary folder instead: the loaded library outlives its file."""
        try:
            path = self.build(custom_ops.build_root())
        except OSError:
            with tempfile.TemporaryDirectory(prefix='bigan-kernel-') as tmp:
                return self._load(self.build(tmp))
        return self._load(path)
