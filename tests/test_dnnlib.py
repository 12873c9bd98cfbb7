"""dnnlib: EasyDict, objects by name, formatting, cache dirs, Logger, open_url (local, cache, offline, download),
atomic_write."""

import collections
import hashlib
import http.server
import io
import os
import pickle
import sys
import threading
from pathlib import Path

import pytest

import dnnlib
from dnnlib import util

# ---------------------------------------------------------------------------------------------------------------------
# EasyDict


def test_easydict_attribute_access_and_missing_attribute():
    d = dnnlib.EasyDict(a=1)
    d.b = 2
    assert d['b'] == 2 and d.a == 1
    del d.a
    assert 'a' not in d
    with pytest.raises(AttributeError):
        _ = d.missing
    assert getattr(d, 'missing', 42) == 42
    assert not hasattr(d, 'missing')


def test_easydict_is_util_class_and_pickles_by_reference():
    assert dnnlib.EasyDict is util.EasyDict
    d = util.EasyDict(x=1, nested=util.EasyDict(y=[1, 2]))
    data = pickle.dumps(d)
    assert b'dnnlib.util' in data and b'EasyDict' in data  # Stored by reference under upstream's module path.
    e = pickle.loads(data)
    assert type(e) is util.EasyDict and type(e.nested) is util.EasyDict
    assert e == {'x': 1, 'nested': {'y': [1, 2]}}
    assert e.nested.y == [1, 2]


# ---------------------------------------------------------------------------------------------------------------------
# Objects by name


def test_get_obj_by_name_and_construct():
    assert util.get_obj_by_name('collections.OrderedDict') is collections.OrderedDict
    assert util.get_obj_by_name('os.path.join') is os.path.join  # Module prefix, then a nested attribute.
    assert util.get_obj_by_name('dnnlib.util.EasyDict.__getattr__') is util.EasyDict.__getattr__
    obj = util.construct_class_by_name([('a', 1)], class_name='collections.OrderedDict', b=2)
    assert type(obj) is collections.OrderedDict and list(obj.items()) == [('a', 1), ('b', 2)]
    assert util.call_func_by_name(3, 4, func_name='math.hypot') == 5.0
    with pytest.raises(ImportError, match='nope'):
        util.get_obj_by_name('collections.nope')
    with pytest.raises(ImportError):
        util.get_obj_by_name('no_such_module_xyz.Thing')


def test_get_obj_by_name_reports_real_import_errors(tmp_path, monkeypatch):
    # A module that exists but fails to import a dependency must not be mistaken for "no such module".
    (tmp_path / 'broken_mod_for_test.py').write_text('import definitely_missing_dependency_xyz\nX = 1\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match='definitely_missing_dependency_xyz'):
        util.get_obj_by_name('broken_mod_for_test.X')


# ---------------------------------------------------------------------------------------------------------------------
# Formatting and cache dirs


@pytest.mark.parametrize('seconds, expected', [
    (0, '0s'), (7.4, '7s'), (59.4, '59s'), (60, '1m 00s'), (125, '2m 05s'), (3599, '59m 59s'),
    (3600, '1h 00m 00s'), (3723, '1h 02m 03s'), (86399, '23h 59m 59s'),
    (86400, '1d 00h 00m'), (3 * 86400 + 4 * 3600 + 5 * 60 + 6, '3d 04h 05m'),
])
def test_format_time(seconds, expected):
    assert util.format_time(seconds) == expected


def test_format_bytes():
    assert util.format_bytes(0) == '0 B'
    assert util.format_bytes(1023) == '1023 B'
    assert util.format_bytes(1536) == '1.5 KiB'
    assert util.format_bytes(5 * 1024 ** 2) == '5.0 MiB'
    assert util.format_bytes(3 * 1024 ** 3 + 300 * 1024 ** 2) == '3.3 GiB'  # 3.29 GiB


def test_is_url():
    assert util.is_url('https://example.com/a.pkl')
    assert util.is_url('http://127.0.0.1:8000/x')
    assert not util.is_url('/tmp/a.pkl')
    assert not util.is_url('a.pkl')
    assert not util.is_url(123)
    assert not util.is_url('file:///tmp/a.pkl')
    assert util.is_url('file:///tmp/a.pkl', allow_file_urls=True)


def test_make_cache_dir_path_order(tmp_path, monkeypatch):
    monkeypatch.setattr(util, '_dnnlib_cache_dir', None)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'env'))
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert util.make_cache_dir_path('downloads', 'x') == os.path.join(str(tmp_path / 'env'), 'downloads', 'x')
    util.set_cache_dir(str(tmp_path / 'explicit'))
    try:
        assert util.make_cache_dir_path('downloads') == os.path.join(str(tmp_path / 'explicit'), 'downloads')
    finally:
        util.set_cache_dir(None)
    monkeypatch.delenv('DNNLIB_CACHE_DIR')
    assert util.make_cache_dir_path('d') == os.path.join(str(tmp_path / 'home'), '.cache', 'dnnlib', 'd')
    monkeypatch.delenv('HOME')
    monkeypatch.setenv('USERPROFILE', str(tmp_path / 'profile'))
    assert util.make_cache_dir_path() == os.path.join(str(tmp_path / 'profile'), '.cache', 'dnnlib')


# ---------------------------------------------------------------------------------------------------------------------
# Logger


def test_logger_tees_stdout_and_stderr(tmp_path, capsys):
    log = tmp_path / 'log.txt'
    with util.Logger(str(log), 'w'):
        print('hello out')
        print('hello err', file=sys.stderr)
    print('after')  # Streams are restored: this must not reach the file.
    text = log.read_text()
    assert 'hello out' in text and 'hello err' in text and 'after' not in text
    captured = capsys.readouterr()
    assert 'hello out' in captured.out and 'hello err' in captured.err


# ---------------------------------------------------------------------------------------------------------------------
# open_url: local files and the cache


def test_open_url_local_path_and_file_url(tmp_path):
    path = tmp_path / 'data file.bin'
    path.write_bytes(b'\x00\x01payload')
    with util.open_url(str(path)) as f:
        assert f.read() == b'\x00\x01payload'
    with util.open_url(path.as_uri()) as f:  # file:///.../data%20file.bin
        assert f.read() == b'\x00\x01payload'
    assert util.open_url(str(path), return_filename=True) == str(path)
    missing = tmp_path / 'missing.pkl'
    with pytest.raises(FileNotFoundError, match='missing.pkl'):
        util.open_url(str(missing))
    with pytest.raises(FileNotFoundError, match='missing.pkl'):
        util.open_url(missing.as_uri())


def _expected_cache_path(cache_dir, url, name):
    return os.path.join(str(cache_dir), hashlib.md5(url.encode('utf-8')).hexdigest() + '_' + name)


def test_open_url_uses_preplaced_cache_file_without_network(tmp_path):
    # Port 9 on localhost is closed: any network access would fail, so success proves the cache was used.
    url = 'http://127.0.0.1:9/models/net.pkl'
    cached = _expected_cache_path(tmp_path, url, 'net.pkl')
    with open(cached, 'wb') as f:
        f.write(b'cached bytes')
    with util.open_url(url, cache_dir=str(tmp_path), num_attempts=1, verbose=False) as f:
        assert f.read() == b'cached bytes'
    assert util.open_url(url, cache_dir=str(tmp_path), return_filename=True, verbose=False) == cached


def test_open_url_offline_error_names_url_and_cache_path(tmp_path, monkeypatch):
    monkeypatch.setattr(util, '_RETRY_DELAY_S', 0.0)
    url = 'http://127.0.0.1:9/x.pkl'
    with pytest.raises(util.OfflineDownloadError) as info:
        util.open_url(url, cache_dir=str(tmp_path), num_attempts=2, verbose=False, timeout=5)
    message = str(info.value)
    assert isinstance(info.value, IOError)
    assert url in message
    assert _expected_cache_path(tmp_path, url, 'x.pkl') in message
    assert '\n' not in message
    assert os.listdir(tmp_path) == []  # No temp or partial file left behind.


# ---------------------------------------------------------------------------------------------------------------------
# open_url: real downloads from a local HTTP server


_PAYLOAD = bytes(range(256)) * 64  # 16 KiB of binary data.


class _Handler(http.server.BaseHTTPRequestHandler):
    hits = collections.Counter()

    def do_GET(self):  # noqa: N802 (http.server's name)
        _Handler.hits[self.path] += 1
        if self.path == '/files/model.pkl':
            body, ctype, extra = _PAYLOAD, 'application/octet-stream', {}
        elif self.path == '/get?id=7':
            body, ctype = _PAYLOAD[:1000], 'application/octet-stream'
            extra = {'Content-Disposition': 'attachment; filename="weights v2.pt"'}
        elif self.path == '/quota.pkl':
            body, ctype, extra = b'<!DOCTYPE html><html><body>Quota exceeded</body></html>', 'text/html', {}
        else:
            self.send_error(404, 'Not Found')
            return
        self.send_response(200)
        self.send_header('Content-Type', ctype)
        self.send_header('Content-Length', str(len(body)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # Keep test output quiet.
        pass


@pytest.fixture
def http_base(monkeypatch):
    for var in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv('NO_PROXY', '127.0.0.1,localhost')
    monkeypatch.setattr(util, '_RETRY_DELAY_S', 0.0)
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={'poll_interval': 0.05}, daemon=True)
    thread.start()
    _Handler.hits.clear()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_open_url_downloads_into_cache_once(tmp_path, http_base):
    url = http_base + '/files/model.pkl'
    with util.open_url(url, cache_dir=str(tmp_path), verbose=False, timeout=10) as f:
        assert f.read() == _PAYLOAD
    expected = _expected_cache_path(tmp_path, url, 'model.pkl')
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(expected)]  # Final name only, no temp file.
    with open(expected, 'rb') as f:
        assert f.read() == _PAYLOAD
    # Second call: served from the cache, no new request.
    assert util.open_url(url, cache_dir=str(tmp_path), verbose=False, return_filename=True) == expected
    assert _Handler.hits['/files/model.pkl'] == 1


def test_open_url_content_disposition_name_and_no_cache(tmp_path, http_base):
    url = http_base + '/get?id=7'
    path = util.open_url(url, cache_dir=str(tmp_path), verbose=False, return_filename=True, timeout=10)
    assert path == _expected_cache_path(tmp_path, url, 'weights_v2.pt')  # Name sanitised to [0-9a-zA-Z-._].
    with open(path, 'rb') as f:
        assert f.read() == _PAYLOAD[:1000]
    buf = util.open_url(url, cache_dir=str(tmp_path / 'unused'), cache=False, verbose=False, timeout=10)
    assert isinstance(buf, io.BytesIO) and buf.read() == _PAYLOAD[:1000]
    assert not (tmp_path / 'unused').exists()


def test_open_url_http_errors_and_html_pages_are_offline_errors(tmp_path, http_base):
    for path, needle in (('/missing.pkl', '404'), ('/quota.pkl', 'HTML')):
        url = http_base + path
        with pytest.raises(util.OfflineDownloadError, match=needle) as info:
            util.open_url(url, cache_dir=str(tmp_path), num_attempts=2, verbose=False, timeout=10)
        assert url in str(info.value)
    assert _Handler.hits['/missing.pkl'] == 1  # A 404 is permanent: not retried.
    assert _Handler.hits['/quota.pkl'] == 2
    assert os.listdir(tmp_path) == []  # The HTML page was not kept as the cached file.


# ---------------------------------------------------------------------------------------------------------------------
# atomic_write


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / 'out.txt'
    target.write_text('old')
    with util.atomic_write(str(target), 'w') as f:
        f.write('new')
        assert target.read_text() == 'old'  # Not visible under the final name until the block ends.
    assert target.read_text() == 'new'
    assert os.listdir(tmp_path) == ['out.txt']


def test_atomic_write_keeps_old_file_and_removes_temp_on_error(tmp_path):
    target = tmp_path / 'out.bin'
    target.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='boom'):
        with util.atomic_write(target) as f:
            f.write(b'half')
            raise RuntimeError('boom')
    assert target.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['out.bin']


def test_copy_atomic_copies_and_cleans_up(tmp_path):
    src = tmp_path / 'src.bin'
    src.write_bytes(b'\x00payload' * 100)
    dst = tmp_path / 'out' / 'dst.bin'
    dst.parent.mkdir()
    dst.write_bytes(b'old')
    util.copy_atomic(src, dst)
    assert dst.read_bytes() == src.read_bytes()
    with pytest.raises(FileNotFoundError):
        util.copy_atomic(tmp_path / 'missing.bin', tmp_path / 'out' / 'never.bin')
    assert sorted(p.name for p in dst.parent.iterdir()) == ['dst.bin']  # no temporary file, no half copy


# ---------------------------------------------------------------------------------------------------------------------
# staged_folder / swap_in / remove_path


def test_staged_folder_replaces_the_old_folder_as_a_whole(tmp_path):
    dest = tmp_path / 'out'
    dest.mkdir()
    (dest / 'stale.txt').write_text('old')
    with util.staged_folder(dest) as stage:
        assert os.path.dirname(stage) == str(tmp_path) and os.listdir(stage) == []
        (Path(stage) / 'new.txt').write_text('new')
        assert os.listdir(dest) == ['stale.txt']  # nothing visible until the block ends
    assert os.listdir(dest) == ['new.txt']  # no file of the old folder survives
    assert sorted(os.listdir(tmp_path)) == ['out']  # neither the stage nor the old folder is left behind


def test_staged_folder_leaves_dest_untouched_on_error(tmp_path):
    dest = tmp_path / 'a' / 'out'
    with pytest.raises(RuntimeError, match='boom'):
        with util.staged_folder(dest) as stage:
            (Path(stage) / 'half.txt').write_text('half')
            raise RuntimeError('boom')
    assert not dest.exists() and os.listdir(tmp_path / 'a') == []
    dest.mkdir()
    (dest / 'keep.txt').write_text('keep')
    with pytest.raises(KeyboardInterrupt):
        with util.staged_folder(dest):
            raise KeyboardInterrupt
    assert os.listdir(dest) == ['keep.txt'] and sorted(os.listdir(tmp_path / 'a')) == ['out']


def test_swap_in_replaces_a_file_and_remove_path_handles_links(tmp_path):
    (tmp_path / 'new.zip').write_bytes(b'new')
    (tmp_path / 'dest.zip').write_bytes(b'old')
    util.swap_in(tmp_path / 'new.zip', tmp_path / 'dest.zip')
    assert (tmp_path / 'dest.zip').read_bytes() == b'new' and not (tmp_path / 'new.zip').exists()
    target = tmp_path / 'target'
    target.mkdir()
    (target / 'f').write_text('x')
    (tmp_path / 'link').symlink_to(target)
    util.remove_path(tmp_path / 'link')  # unlinked, the folder it points to kept
    assert not os.path.lexists(tmp_path / 'link') and (target / 'f').exists()
    (tmp_path / 'link').symlink_to(target)  # a link as the destination is replaced by the folder, not followed
    with util.staged_folder(tmp_path / 'link') as stage:
        (Path(stage) / 'g').write_text('y')
    assert not os.path.islink(tmp_path / 'link') and os.listdir(tmp_path / 'link') == ['g']
    assert os.listdir(target) == ['f']
    util.remove_path(target)
    util.remove_path(tmp_path / 'missing')
    assert not target.exists()
