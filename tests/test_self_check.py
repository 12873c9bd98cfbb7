"""self_check.py, the installation check of the README's troubleshooting: it must succeed here and write the
RGB | NIR pair."""

import subprocess
import sys

from PIL import Image

from conftest import REPO


def test_self_check_generates_a_pair(tmp_path):
    out = tmp_path / 'pair.png'
    result = subprocess.run([sys.executable, 'self_check.py', '--device', 'cpu', '--out', str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'snapshot round trip identical' in result.stdout
    with Image.open(out) as img:
        assert img.size == (128, 64) and img.mode == 'RGB'  # RGB and NIR side by side at 64x64
