"""Shared test helpers: locating the parity vectors and comparing arrays relative to their scale."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def shared_dir() -> Path:
    """The project's ``shared/`` folder: ``$BIGAN_SHARED`` or ``../shared`` beside the checkout."""
    return Path(os.environ.get('BIGAN_SHARED', REPO.parent / 'shared'))


def load_parity(name):
    """Load ``shared/parity/<name>.npz`` as (arrays, metadata); skip, or fail when CI requires it."""
    path = shared_dir() / 'parity' / f'{name}.npz'
    if not path.is_file():
        message = f'parity file {path} not found (set BIGAN_SHARED to the shared/ folder)'
        if os.environ.get('BIGAN_REQUIRE_SHARED'):
            pytest.fail(message)
        pytest.skip(message)
    npz = np.load(path, allow_pickle=False)
    arrays, meta = {}, {}
    for key in npz.files:
        value = npz[key]
        if value.dtype.kind == 'U':
            meta[key] = json.loads(value.item())
        else:
            arrays[key] = value
    return arrays, meta


def assert_close_to_scale(actual, expected, rel, floor=0.0, name=''):
    """``max|actual - expected| <= rel * max(floor, max|expected|)``, the parity README's criterion."""
    actual = actual.detach().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f'{name}: shape {actual.shape} != expected {expected.shape}'
    scale = max(floor, float(np.abs(expected).max()) if expected.size else 0.0)
    err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) if expected.size else 0.0
    assert err <= rel * scale, f'{name}: max abs error {err:.3g} > {rel:g} x scale {scale:.3g}'


def assert_one_line_error(code, err, *fragments):
    """A bad-input exit: code 2 and exactly one stderr line ``error: ...`` holding every fragment."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for fragment in fragments:
        assert str(fragment) in lines[0], lines[0]


def assert_proc_error(proc, *fragments):
    """`assert_one_line_error` for a finished ``subprocess.run`` (its stdout shown when the exit code is wrong)."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert_one_line_error(proc.returncode, proc.stderr, *fragments)


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # The parity vectors were made with 2 threads; keep the count fixed so results do not depend on the host.
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope='module')
def _one_torch_thread_module():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def one_torch_thread(_one_torch_thread_module, _deterministic_threads):
    """One torch thread for a module (its module fixtures too; use with ``pytest.mark.usefixtures``). Tiny models
    gain nothing from a second thread, and two threads slow down many-fold while another process holds a core
    (OpenMP's spinning barriers); one thread keeps such tests fast and steady."""
    torch.set_num_threads(1)
    yield
