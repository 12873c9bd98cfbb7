"""General helpers: attribute dicts, log teeing, objects by dotted name, cache dirs, formatting, URL opening.

The names and call signatures follow StyleGAN2-ADA's `dnnlib.util` because user code, configs (`class_name`
strings) and network pickles (`dnnlib.util.EasyDict`) refer to them.
"""

import contextlib
import errno
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.parse
from typing import Any, Optional

# ---------------------------------------------------------------------------------------------------------------------
# EasyDict


class EasyDict(dict):
    """A dict whose keys can also be read and written as attributes (`d.lr` is `d['lr']`).

    A missing key read as an attribute raises AttributeError (not KeyError) so that `hasattr`, `getattr(d, k, default)`
    and pickle's probing of special methods behave as they do for ordinary objects.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


# ---------------------------------------------------------------------------------------------------------------------
# Logger


class _StreamTee:
    """Writes everything to an original stream and to the logger's file; other attributes come from the stream."""

    def __init__(self, logger: 'Logger', stream):
        self._logger = logger
        self._stream = stream

    def write(self, text) -> int:
        if isinstance(text, bytes):
            text = text.decode(errors='replace')
        if len(text) == 0:  # Some writers (e.g. print with end='') emit empty strings; skip the useless flushes.
            return 0
        if self._logger.file is not None:
            self._logger.file.write(text)
        if self._stream is not None:
            self._stream.write(text)
        if self._logger.should_flush:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._logger.file is not None:
            self._logger.file.flush()
        if self._stream is not None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        if name.startswith('_'):  # Never delegate private names (avoids recursion before __init__ has run).
            raise AttributeError(name)
        # isatty(), encoding, fileno() ... are asked by tqdm, click, faulthandler; answer for the real stream.
        return getattr(self._stream, name)


class Logger:
    """Tees `sys.stdout` and `sys.stderr` into a log file while still printing to the console.

    Use as a context manager or call `close()`; both restore the original streams. `file_name=None` installs the tee
    without a file (handy to keep call sites uniform). The training script opens `log.txt` with mode 'a' so that a
    resumed run appends to its log.
    """

    def __init__(self, file_name: Optional[str] = None, file_mode: str = 'w', should_flush: bool = True):
        self.file = None
        if file_name is not None:
            self.file = open(file_name, file_mode, encoding='utf-8')
        self.should_flush = should_flush
        self.stdout = sys.stdout
        self.stderr = sys.stderr
        self._stdout_tee = _StreamTee(self, self.stdout)
        self._stderr_tee = _StreamTee(self, self.stderr)
        sys.stdout = self._stdout_tee
        sys.stderr = self._stderr_tee

    def __enter__(self) -> 'Logger':
        return self

    def __exit__(self, exc_type, exc_value, traceback) -> None:
        self.close()

    def write(self, text) -> int:
        """Write to stdout and the log file (the tee that replaced `sys.stdout`)."""
        return self._stdout_tee.write(text)

    def flush(self) -> None:
        self._stdout_tee.flush()

    def close(self) -> None:
        """Flush, restore the original streams (only if still ours) and close the file. Safe to call twice."""
        if self.file is None and sys.stdout is not self._stdout_tee and sys.stderr is not self._stderr_tee:
            return
        self.flush()
        self._stderr_tee.flush()
        if sys.stdout is self._stdout_tee:
            sys.stdout = self.stdout
        if sys.stderr is self._stderr_tee:
            sys.stderr = self.stderr
        if self.file is not None:
            self.file.close()
            self.file = None


# ---------------------------------------------------------------------------------------------------------------------
# Objects by dotted name


def _import_longest_prefix(name: str):
    """Import the longest importable module prefix of `name`; return (module, remaining attribute path)."""
    parts = name.split('.')
    for split in range(len(parts), 0, -1):
        module_name = '.'.join(parts[:split])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            # Only "this prefix is not a module" means "try a shorter prefix". A module that exists but fails to
            # import one of *its* dependencies is a real error the user must see.
            missing = err.name or ''
            if module_name == missing or module_name.startswith(missing + '.'):
                continue
            raise
        return module, parts[split:]
    return None, parts


def get_obj_by_name(name: str) -> Any:
    """Return the object a dotted name refers to, e.g. 'torch.optim.Adam' or 'training.networks.Generator'.

    The longest importable prefix is imported as a module and the rest is looked up as (nested) attributes.
    A single bare name is looked up among the builtins.
    """
    if not isinstance(name, str) or not name or any(part == '' for part in name.split('.')):
        raise ValueError(f'Invalid object name: {name!r}')
    module, attrs = _import_longest_prefix(name)
    if module is None:
        import builtins

        module = builtins
    obj = module
    for idx, attr in enumerate(attrs):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            found = '.'.join([module.__name__] + attrs[:idx]) if module.__name__ != 'builtins' else 'builtins'
            raise ImportError(f'Cannot find {name!r}: {found!r} has no attribute {attr!r}') from None
    return obj


def call_func_by_name(*args, func_name: str = None, **kwargs) -> Any:
    """Look up a callable by dotted name and call it with the given arguments."""
    if func_name is None:
        raise TypeError('call_func_by_name() needs func_name')
    func = get_obj_by_name(func_name)
    if not callable(func):
        raise TypeError(f'{func_name!r} is not callable')
    return func(*args, **kwargs)


def construct_class_by_name(*args, class_name: str = None, **kwargs) -> Any:
    """Instantiate a class given by dotted name; how configs build datasets, networks, losses and optimisers."""
    if class_name is None:
        raise TypeError('construct_class_by_name() needs class_name')
    return call_func_by_name(*args, func_name=class_name, **kwargs)


def get_module_from_obj_name(obj_name: str):
    """Return (module, attribute path string) for a dotted name, as used by the functions above."""
    module, attrs = _import_longest_prefix(obj_name)
    if module is None:
        raise ImportError(f'No importable module in {obj_name!r}')
    return module, '.'.join(attrs)


# ---------------------------------------------------------------------------------------------------------------------
# Cache directories

_dnnlib_cache_dir: Optional[str] = None


def set_cache_dir(path: Optional[str]) -> None:
    """Override where downloads and other cached files go (None restores the default search)."""
    global _dnnlib_cache_dir
    _dnnlib_cache_dir = None if path is None else os.fspath(path)


def make_cache_dir_path(*paths: str) -> str:
    """Path inside the cache root (not created). Root: set_cache_dir() value, $DNNLIB_CACHE_DIR,
    $HOME/.cache/dnnlib, %USERPROFILE%/.cache/dnnlib, then <tempdir>/.cache/dnnlib."""
    if _dnnlib_cache_dir is not None:
        return os.path.join(_dnnlib_cache_dir, *paths)
    if os.environ.get('DNNLIB_CACHE_DIR'):
        return os.path.join(os.environ['DNNLIB_CACHE_DIR'], *paths)
    if os.environ.get('HOME'):
        return os.path.join(os.environ['HOME'], '.cache', 'dnnlib', *paths)
    if os.environ.get('USERPROFILE'):
        return os.path.join(os.environ['USERPROFILE'], '.cache', 'dnnlib', *paths)
    return os.path.join(tempfile.gettempdir(), '.cache', 'dnnlib', *paths)


# ---------------------------------------------------------------------------------------------------------------------
# Formatting


def format_time(seconds: float) -> str:
    """Compact duration: '7s', '2m 05s', '1h 02m 03s', '3d 04h 05m' (rounded to whole seconds)."""
    s = int(round(seconds))
    if s < 60:
        return f'{s}s'
    if s < 60 * 60:
        return f'{s // 60}m {s % 60:02d}s'
    if s < 24 * 60 * 60:
        return f'{s // 3600}h {(s // 60) % 60:02d}m {s % 60:02d}s'
    return f'{s // 86400}d {(s // 3600) % 24:02d}h {(s // 60) % 60:02d}m'


def format_bytes(num_bytes: float) -> str:
    """Human-readable size with binary units: '512 B', '1.5 KiB', '3.2 GiB'."""
    sign = '-' if num_bytes < 0 else ''
    value = float(abs(num_bytes))
    if value < 1024:
        return f'{sign}{int(value)} B'
    for unit in ('KiB', 'MiB', 'GiB', 'TiB', 'PiB'):
        value /= 1024
        if value < 1024 or unit == 'PiB':
            return f'{sign}{value:.1f} {unit}'
    raise AssertionError('unreachable')


# ---------------------------------------------------------------------------------------------------------------------
# Atomic writes


def staging_path(path) -> str:
    """The temporary name ``path`` is written under before it is renamed into place: ``<path>.tmp-<pid>``, beside it
    (same file system, so the rename is atomic) and distinct per process."""
    return f'{os.fspath(path)}.tmp-{os.getpid()}'


@contextlib.contextmanager
def atomic_write(path, mode: str = 'wb', fsync: bool = False, **open_kwargs):
    """Open `path + '.tmp-<pid>'` for writing and rename it to `path` only when the block succeeds.

    A crash or an exception therefore never leaves a half-written file under the final name (an old file there stays
    intact), and the temporary file is removed on failure. `fsync=True` also survives power loss, at some cost.
    """
    if 'w' not in mode or any(c in mode for c in 'ax'):
        raise ValueError(f"atomic_write needs a 'w' mode, got {mode!r}")
    path = os.fspath(path)
    tmp_path = staging_path(path)
    f = open(tmp_path, mode, **open_kwargs)
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp_path, path)
    except BaseException:
        f.close()
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        raise


def copy_atomic(src, dst) -> None:
    """Copy file ``src`` to ``dst`` the way `atomic_write` writes: under a temporary name, renamed when complete. A
    hard link where the file system allows one (no bytes copied; the files the project writes are only ever replaced
    by renaming, never changed in place, so sharing the data is safe)."""
    dst = os.fspath(dst)
    tmp_path = staging_path(dst)
    try:
        try:
            os.link(src, tmp_path)
        except OSError:
            shutil.copyfile(src, tmp_path)
        os.replace(tmp_path, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp_path)
        raise


_TMP_SUFFIX_RE = re.compile(r'\.tmp-\d+$')


def read_jsonl(path, error=None, skip_bad_lines=False):
    """``[(line number, value), ...]`` of a JSON-lines file, blank lines left out. A line that is not JSON raises
    ``error(path, 'line N is not valid JSON (...)')`` (``error`` defaults to `FileError`), or is left out too with
    ``skip_bad_lines`` (e.g. a line cut short by a crash)."""
    entries = []
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entries.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                if not skip_bad_lines:
                    raise (error or FileError)(path, f'line {n} is not valid JSON ({e.msg})') from None
    return entries


def remove_path(path) -> None:
    """Remove a file, a link or a whole folder (a link to a folder is unlinked, not followed); nothing if absent."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def swap_in(staged, dest) -> None:
    """Move the finished ``staged`` file or folder to ``dest``, replacing whatever is there as a whole: an old folder
    is first renamed aside and removed only after the new one is in place, so ``dest`` is never a mixture."""
    staged, dest = os.fspath(staged), os.fspath(dest)
    old = None
    if os.path.islink(dest) or os.path.isdir(dest):  # a link is replaced, not followed
        old = f'{dest}.old-{os.getpid()}'
        remove_path(old)
        os.replace(dest, old)
    os.replace(staged, dest)
    if old is not None:
        remove_path(old)


@contextlib.contextmanager
def staged_folder(dest):
    """Yield an empty temporary folder beside ``dest`` (``<dest>.tmp-<pid>``, on the same file system) to write into;
    when the block succeeds it replaces ``dest`` as a whole (`swap_in`), when it fails it is removed and ``dest`` is
    untouched. Missing parent folders are created."""
    dest = os.path.abspath(os.fspath(dest))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    stage = staging_path(dest)
    remove_path(stage)
    os.mkdir(stage)
    try:
        yield stage
        swap_in(stage, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            remove_path(stage)
        raise

# ---------------------------------------------------------------------------------------------------------------------
# URLs


class OfflineDownloadError(IOError):
    """A file could not be downloaded; the message says where to put it by hand (one line, names URL and path)."""

    def __init__(self, url: str, reason: str, cache_path: Optional[str] = None):
        self.url = url
        self.reason = reason
        self.cache_path = cache_path
        if cache_path is not None:
            how = f'download it elsewhere and place it at {cache_path}, or pass a local file path instead of the URL'
        else:
            how = 'download it elsewhere and pass its local file path instead of the URL'
        super().__init__(f'Download of {url} failed ({reason}); to work offline, {how}.')

    def __reduce__(self):  # Keep the exception picklable across processes (DataLoader workers, spawn).
        return (type(self), (self.url, self.reason, self.cache_path))


def is_url(obj: Any, allow_file_urls: bool = False) -> bool:
    """True if `obj` is a string that looks like a network URL (`scheme://host...`); file:// only if allowed."""
    if not isinstance(obj, str) or '://' not in obj:
        return False
    if obj.startswith('file://'):
        return allow_file_urls
    try:
        parsed = urllib.parse.urlparse(obj)
    except ValueError:
        return False
    return bool(re.fullmatch(r'[a-z][a-z0-9+.-]*', parsed.scheme)) and bool(parsed.netloc)


def _file_url_to_path(url: str) -> str:
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ('', 'localhost'):
        raise ValueError(f'Unsupported file URL {url!r}: use file:///absolute/path (no host name)')
    path = urllib.parse.unquote(parsed.path)
    if re.match(r'^/[a-zA-Z]:', path):  # file:///C:/x -> C:/x on Windows.
        path = path[1:]
    return path


def _sanitise_file_name(name: str) -> str:
    name = re.sub(r'[^0-9a-zA-Z\-._]', '_', name)
    return name if name.strip('._') else 'download'


def _url_file_name(url: str) -> str:
    return _sanitise_file_name(os.path.basename(urllib.parse.urlparse(url).path))


def _content_disposition_name(header: Optional[str]) -> Optional[str]:
    if not header:
        return None
    match = re.search(r"filename\*\s*=\s*[^']*'[^']*'([^;]+)", header)  # RFC 5987 form, e.g. UTF-8''name.pkl
    if match:
        return urllib.parse.unquote(match.group(1).strip().strip('"'))
    match = re.search(r'filename\s*=\s*"([^"]*)"', header) or re.search(r'filename\s*=\s*([^;]+)', header)
    return os.path.basename(match.group(1).strip()) if match else None


def _describe_error(err: BaseException) -> str:
    """A short, single-line reason for a failed request."""
    text = ' '.join(str(err).split())
    status = getattr(getattr(err, 'response', None), 'status_code', None)
    if status is not None:
        reason = getattr(err.response, 'reason', '') or ''
        return f'HTTP {status} {reason}'.strip()
    if 'NameResolutionError' in text or 'Name or service not known' in text or 'getaddrinfo failed' in text:
        return 'cannot resolve the host name; no network?'
    match = re.search(r"\[Errno -?\d+\] [^'\")]+", text) or re.search(r"\[WinError -?\d+\] [^'\")]+", text)
    if match:
        return match.group(0).strip()
    if 'timed out' in text.lower():
        return 'connection timed out'
    text = text or type(err).__name__
    return text if len(text) <= 200 else text[:197] + '...'


class _BadResponseError(Exception):
    """The server answered, but not with the file (e.g. an HTML error page); retried like a network error."""


# Seconds to wait before retry k (1-based) is min(_RETRY_DELAY_S * k, 1.0): gentle on flaky links, fast when offline.
_RETRY_DELAY_S = 0.2
_HTML_SNIFF_LIMIT = 8192  # A response this small that is an HTML page is an error page (quota, login, 404 text).


def _looks_like_html(head: bytes) -> bool:
    head = head.lstrip().lower()
    return head.startswith(b'<!doctype html') or head.startswith(b'<html')


def _download(session, url: str, timeout: float, verbose: bool, sink_factory):
    """One attempt: stream `url` into the sink given by `sink_factory(file_name)`; return the file name."""
    with session.get(url, stream=True, timeout=timeout, allow_redirects=True) as res:
        res.raise_for_status()
        file_name = _content_disposition_name(res.headers.get('Content-Disposition'))
        file_name = _sanitise_file_name(file_name) if file_name else _url_file_name(url)
        total = res.headers.get('Content-Length')
        total = int(total) if total and total.isdigit() else None
        progress = None
        if verbose:
            try:
                from tqdm import tqdm

                progress = tqdm(total=total, unit='B', unit_scale=True, unit_divisor=1024, leave=False,
                                desc=file_name[:40], file=sys.stderr)
            except ImportError:
                progress = None
        try:
            with sink_factory(file_name) as sink:
                head = b''
                size = 0
                for chunk in res.iter_content(chunk_size=1 << 20):
                    if not chunk:
                        continue
                    if len(head) < 64:
                        head += chunk[:64]
                    sink.write(chunk)
                    size += len(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
                # Raising inside the sink discards the partial data (atomic_write removes its temp file).
                if size == 0:
                    raise _BadResponseError('the server sent no data')
                if total is not None and size != total:
                    raise _BadResponseError(f'incomplete download: {size} of {total} bytes')
                if size < _HTML_SNIFF_LIMIT and _looks_like_html(head):
                    raise _BadResponseError('the server sent an HTML page instead of the file (quota/login/error page)')
        finally:
            if progress is not None:
                progress.close()
    return file_name


def open_url(url, cache_dir: Optional[str] = None, num_attempts: int = 10, verbose: bool = True,
             return_filename: bool = False, cache: bool = True, timeout: float = 60.0) -> Any:
    """Open a local path, a file:// URL or an http(s) URL as a binary file object.

    Network files are cached as `<cache_dir>/<md5(url)>_<name>` (cache_dir defaults to
    `make_cache_dir_path('downloads')`); if exactly one `<md5(url)>_*` file is there it is used without touching the
    network, so copying a file to that name by hand makes a URL work offline. Downloads go to a temporary file that is
    renamed when complete. Returns a file object, an io.BytesIO when cache=False, or the path when return_filename=True.
    A failed download raises OfflineDownloadError saying where to place the file.
    """
    if num_attempts < 1:
        raise ValueError('num_attempts must be at least 1')
    if return_filename and not cache:
        raise ValueError('return_filename=True needs cache=True')
    url = os.fspath(url)

    # Local paths and file:// URLs.
    if not re.match(r'^[a-z][a-z0-9+.-]*://', url):
        path = url
    elif url.startswith('file://'):
        path = _file_url_to_path(url)
    else:
        path = None
    if path is not None:
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, 'Is a directory, not a file', path)
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, 'No such file', path)
        return path if return_filename else open(path, 'rb')

    # Cached copy?
    if cache_dir is None:
        cache_dir = make_cache_dir_path('downloads')
    cache_dir = os.fspath(cache_dir)
    url_md5 = hashlib.md5(url.encode('utf-8')).hexdigest()
    expected_path = os.path.join(cache_dir, f'{url_md5}_{_url_file_name(url)}')
    if cache:
        prefix = url_md5 + '_'
        matches = []
        if os.path.isdir(cache_dir):
            matches = sorted(os.path.join(cache_dir, name) for name in os.listdir(cache_dir)
                             if name.startswith(prefix) and not _TMP_SUFFIX_RE.search(name))
        if len(matches) > 1 and expected_path in matches:
            matches = [expected_path]
        if len(matches) == 1:
            return matches[0] if return_filename else open(matches[0], 'rb')

    # Download.
    try:
        import requests
    except ImportError:
        raise OfflineDownloadError(url, "the 'requests' package is not installed",
                                   expected_path if cache else None) from None
    if verbose:
        print(f'Downloading {url} ...', file=sys.stderr, flush=True)
    if cache:
        os.makedirs(cache_dir, exist_ok=True)
    buffer = io.BytesIO()
    final_path = None

    def sink_factory(file_name):
        nonlocal final_path
        if not cache:
            buffer.seek(0)
            buffer.truncate()
            return contextlib.nullcontext(buffer)
        final_path = os.path.join(cache_dir, f'{url_md5}_{file_name}')
        return atomic_write(final_path, 'wb', fsync=True)

    with requests.Session() as session:
        for attempt in range(1, num_attempts + 1):
            try:
                _download(session, url, timeout, verbose, sink_factory)
                break
            except (requests.RequestException, _BadResponseError) as err:
                reason = _describe_error(err)
                status = getattr(getattr(err, 'response', None), 'status_code', None)
                permanent = status is not None and 400 <= status < 500 and status not in (408, 429)
                if attempt == num_attempts or permanent:
                    raise OfflineDownloadError(url, reason, expected_path if cache else None) from err
                if verbose:
                    print(f'  attempt {attempt}/{num_attempts} failed ({reason}); retrying', file=sys.stderr,
                          flush=True)
                time.sleep(min(_RETRY_DELAY_S * attempt, 1.0))

    if not cache:
        buffer.seek(0)
        return buffer
    return final_path if return_filename else open(final_path, 'rb')


class FileError(ValueError):
    """Bad input tied to a file. ``str(e)`` is one line: ``<file>: <problem>``; ``e.file`` and ``e.problem`` hold
    the parts. A single argument is the whole message (also what unpickling passes when only a message survives)."""

    def __init__(self, file, problem=None):
        if problem is None:
            file, problem = None, str(file)
        self.file = None if file is None else str(file)
        self.problem = str(problem)
        super().__init__(self.file, self.problem)

    def __str__(self):
        return self.problem if self.file is None else f'{self.file}: {self.problem}'
