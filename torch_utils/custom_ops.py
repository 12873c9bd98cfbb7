"""Runtime build of the C++/CUDA plugins behind the custom ops.

A plugin is compiled once with ninja through ``torch.utils.cpp_extension`` into a build folder whose name
carries a digest of the sources, the torch version and the CUDA version, so a rebuilt torch or an edited
kernel gets a fresh build while an unchanged one is reused across runs. A failed build prints one line and
the op falls back to its pure-PyTorch reference path; the failure is remembered so it is not retried on
every call. Set ``BIGAN_REF_OPS=1`` to skip building altogether and always use the reference paths.
"""

import contextlib
import hashlib
import importlib
import os
import sys
import traceback
import warnings

import torch

#: 'none' (silent), 'brief' (one line per plugin) or 'full' (compiler output and tracebacks).
verbosity = 'brief'

#: Environment variable that forces every op onto its reference path.
FORCE_REF_ENV = 'BIGAN_REF_OPS'

_plugins = {}  # module name -> loaded module, or None after a failed build


_force_reference = False  # set by reference_ops(); lets one process compare both paths


def reference_ops_forced() -> bool:
    """True when the reference implementation of every op must be used (environment or ``reference_ops()``)."""
    return _force_reference or _env_forces_reference()


def _env_forces_reference() -> bool:
    value = os.environ.get(FORCE_REF_ENV)
    return value is not None and value.strip().lower() in ('1', 'true', 'yes', 'on')


def cpu_fast_path(*tensors, inference_only=False) -> bool:
    """Whether an op on ``tensors`` takes its CPU fast path: every tensor (None is skipped) on the CPU, the reference
    ops not forced and, for a fast path that only pays without gradients (``inference_only``), none of them needing
    a gradient. (Called for every op of a network, so it is kept cheap.)"""
    if _force_reference or _env_forces_reference():
        return False
    for t in tensors:
        if t is not None and not t.is_cpu:
            return False
    if inference_only and torch.is_grad_enabled():
        return not any(t is not None and t.requires_grad for t in tensors)
    return True


@contextlib.contextmanager
def reference_ops(enable=True):
    """Run the ops on their reference paths inside this context (for benchmarks and checks)."""
    global _force_reference
    old = _force_reference
    _force_reference = enable
    try:
        yield
    finally:
        _force_reference = old


def build_root() -> str:
    """Folder that holds the plugin builds: ``TORCH_EXTENSIONS_DIR`` or ``~/.cache/bigan/torch_extensions``."""
    root = os.environ.get('TORCH_EXTENSIONS_DIR')
    if not root:
        root = os.path.join(os.path.expanduser('~'), '.cache', 'bigan', 'torch_extensions')
    return root


def _source_digest(paths) -> str:
    md5 = hashlib.md5()
    for path in sorted(paths):
        md5.update(os.path.basename(path).encode())
        with open(path, 'rb') as f:
            md5.update(f.read())
    md5.update(torch.__version__.encode())
    md5.update(str(torch.version.cuda).encode())
    md5.update(sys.version.encode())
    return md5.hexdigest()[:16]


def get_plugin(module_name, sources, headers=(), source_dir=None, **build_kwargs):
    """Build (or reuse) and import a plugin; return the module, or None when the reference path must be used.

    ``sources`` and ``headers`` are file names relative to ``source_dir``; headers only enter the digest.
    Extra keyword arguments go to ``torch.utils.cpp_extension.load`` (e.g. ``extra_cuda_cflags``).
    """
    if module_name in _plugins:
        return _plugins[module_name]
    if os.environ.get(FORCE_REF_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on'):
        _plugins[module_name] = None
        return None

    source_dir = source_dir or os.path.dirname(os.path.abspath(__file__))
    source_paths = [os.path.join(source_dir, name) for name in sources]
    all_paths = source_paths + [os.path.join(source_dir, name) for name in headers]
    if verbosity in ('brief', 'full'):
        print(f'Setting up PyTorch plugin "{module_name}"... ', end='', flush=True)
    try:
        from torch.utils import cpp_extension  # imported late: it is slow and only needed for a build

        build_dir = os.path.join(build_root(), f'{module_name}-{_source_digest(all_paths)}')
        os.makedirs(build_dir, exist_ok=True)
        cpp_extension.load(name=module_name, sources=source_paths, build_directory=build_dir,
                           verbose=(verbosity == 'full'), **build_kwargs)
        module = importlib.import_module(module_name)
    except Exception as exc:  # any failure (no compiler, no CUDA toolkit, compile error) means: use the reference
        if verbosity in ('brief', 'full'):
            print('Failed!')
        if verbosity == 'full':
            traceback.print_exc()
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        warnings.warn(f'Could not build the CUDA plugin "{module_name}" ({reason[:200]}); using the slower '
                      f'reference implementation. Set {FORCE_REF_ENV}=1 to skip the build, or '
                      f'torch_utils.custom_ops.verbosity = "full" to see the compiler output.', RuntimeWarning)
        _plugins[module_name] = None
        return None
    if verbosity in ('brief', 'full'):
        print('Done.')
    _plugins[module_name] = module
    return module


class LazyPlugin:
    """A plugin built on first use; ``get()`` returns the module, or None when the reference path must be used
    (no CUDA toolkit, a failed build, or reference ops forced)."""

    def __init__(self, module_name, sources, headers=(), **build_kwargs):
        self.module_name = module_name
        self.sources = list(sources)
        self.headers = list(headers)
        self.build_kwargs = build_kwargs
        self.module = None
        self.tried = False

    def get(self):
        if reference_ops_forced():
            return None
        if not self.tried:
            self.tried = True
            self.module = get_plugin(self.module_name, sources=self.sources, headers=self.headers,
                                     **self.build_kwargs)
        return self.module

    def available(self) -> bool:
        """True when the plugin is built and loaded (only meaningful on a CUDA machine)."""
        import torch
        return torch.cuda.is_available() and self.get() is not None
