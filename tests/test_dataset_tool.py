"""dataset_tool.py as a user runs it: the demo renderer (deterministic, sensible masks, aligned modalities), check,
convert (zip round trip, resizing), refusal of an existing destination, and one-line errors with exit code 2."""

import shutil
import subprocess
import sys
import zipfile

import numpy as np
import PIL.Image
import pytest
import scipy.ndimage

from conftest import REPO, assert_proc_error
from training.dataset import PairedImageDataset

DEMO_RES = 32
DEMO_COUNT = 6


def run_tool(*args):
    return subprocess.run([sys.executable, 'dataset_tool.py', *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    dest = tmp_path_factory.mktemp('demo') / 'eyes'
    proc = run_tool('demo', '--dest', dest, '--count', DEMO_COUNT, '--resolution', DEMO_RES, '--seed', 7)
    assert proc.returncode == 0, proc.stderr
    return dest


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def _load(demo_dir, i):
    name = f'eye_{i:05d}.png'
    rgb = PIL.Image.open(demo_dir / 'images' / name)
    nir = PIL.Image.open(demo_dir / 'NIR' / name)
    mask = PIL.Image.open(demo_dir / 'masks' / name)
    assert (rgb.mode, nir.mode, mask.mode) == ('RGB', 'L', 'L')
    return np.asarray(rgb), np.asarray(nir), np.asarray(mask)


# ---------------------------------------------------------------------------------------------------- demo


def test_demo_layout_and_determinism(demo_dir, tmp_path):
    files = _files(demo_dir)
    names = [f'eye_{i:05d}.png' for i in range(DEMO_COUNT)]
    assert sorted(files) == sorted(['classes.json'] + [f'{d}/{n}' for d in ('images', 'NIR', 'masks') for n in names])
    same = tmp_path / 'same'
    proc = run_tool('demo', '--dest', same, '--count', DEMO_COUNT, '--resolution', DEMO_RES, '--seed', 7)
    assert proc.returncode == 0, proc.stderr
    assert _files(same) == files
    other = tmp_path / 'other'
    assert run_tool('demo', '--dest', other, '--count', 2, '--resolution', DEMO_RES, '--seed', 8).returncode == 0
    other_files = _files(other)
    for d in ('images', 'NIR', 'masks'):
        assert other_files[f'{d}/eye_00000.png'] != files[f'{d}/eye_00000.png']
    # A sample depends on (seed, index) only, not on how many are rendered.
    assert other_files['images/eye_00001.png'] != files['images/eye_00001.png']


def test_demo_masks_have_sensible_topology(demo_dir):
    seen = set()
    occluded = 0
    for i in range(DEMO_COUNT):
        rgb, nir, mask = _load(demo_dir, i)
        assert rgb.shape == (DEMO_RES, DEMO_RES, 3) and nir.shape == mask.shape == (DEMO_RES, DEMO_RES)
        assert set(np.unique(mask)) <= {0, 1, 2, 3}
        seen |= set(np.unique(mask).tolist())
        pupil, iris, sclera = mask == 3, mask == 2, mask == 1
        assert pupil.any() and iris.any() and sclera.any()
        # The pupil lies inside the iris: one pixel around it is still pupil or iris.
        grown = scipy.ndimage.binary_dilation(pupil, structure=np.ones([3, 3], bool))
        assert np.all(pupil[grown] | iris[grown]), f'image {i}: pupil touches something other than the iris'
        # The eye opening is one region; iris and pupil are inside it, and the sclera borders the iris.
        _, n_regions = scipy.ndimage.label(mask > 0)
        assert n_regions == 1
        assert not (iris | pupil)[[0, -1], :].any() and not (iris | pupil)[:, [0, -1]].any()
        assert (scipy.ndimage.binary_dilation(iris) & sclera).any()
        # Lids that cover part of the iris make its visible part less tall than wide.
        rows, cols = np.nonzero(iris | pupil)
        if np.ptp(rows) < np.ptp(cols):
            occluded += 1
    assert seen == {0, 1, 2, 3}
    assert occluded >= 1


def test_demo_modalities_are_aligned(demo_dir):
    for i in range(DEMO_COUNT):
        rgb, nir, mask = _load(demo_dir, i)
        eye = mask >= 2
        # The brightest corneal highlight is white in both modalities and at the same place.
        spot_rgb = eye & (rgb.min(axis=2) >= 235)
        spot_nir = eye & (nir >= 235)
        assert spot_rgb.any() and spot_nir.any(), f'image {i}: no specular highlight'
        c_rgb = np.array(np.nonzero(spot_rgb)).mean(axis=1)
        c_nir = np.array(np.nonzero(spot_nir)).mean(axis=1)
        assert np.abs(c_rgb - c_nir).max() <= 1.0, (i, c_rgb, c_nir)
        # The pupil (away from the highlight) is the darkest part in NIR, darker than the iris.
        core = scipy.ndimage.binary_erosion(mask == 3) & ~scipy.ndimage.binary_dilation(spot_nir, iterations=2)
        if core.any():
            assert np.median(nir[core]) < 40
            assert np.median(nir[core]) + 30 < np.median(nir[mask == 2])
        assert len(np.unique(nir)) > 20  # a real image, not a flat fill


# ---------------------------------------------------------------------------------------------------- check


def test_check_passes_on_demo(demo_dir):
    proc = run_tool('check', demo_dir)
    assert proc.returncode == 0, proc.stderr
    assert f'pairs:       {DEMO_COUNT}' in proc.stdout
    assert f'{DEMO_RES}x{DEMO_RES}' in proc.stdout
    assert 'classes 0, 1, 2, 3' in proc.stdout


def test_check_fails_on_broken_copy(demo_dir, tmp_path):
    broken = tmp_path / 'broken'
    shutil.copytree(demo_dir, broken)
    (broken / 'NIR' / 'eye_00002.png').unlink()
    assert_proc_error(run_tool('check', broken / 'images'), 'eye_00002.png', 'NIR')
    shutil.copy(demo_dir / 'NIR' / 'eye_00002.png', broken / 'NIR')
    (broken / 'images' / 'eye_00004.png').write_bytes(b'\x89PNG garbage')
    assert_proc_error(run_tool('check', broken), 'eye_00004.png')


# ---------------------------------------------------------------------------------------------------- convert


def test_convert_to_zip_keeps_pixels_and_resizes(demo_dir, tmp_path):
    same = tmp_path / 'same.zip'
    proc = run_tool('convert', '--source', demo_dir, '--dest', same)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(same) as z:
        names = set(z.namelist())
    assert {'dataset.json', 'classes.json', 'images/eye_00000.png', 'NIR/eye_00000.png'} <= names
    ds = PairedImageDataset(same, load_masks=True)
    assert len(ds) == DEMO_COUNT and ds.resolution == DEMO_RES
    for idx in range(DEMO_COUNT):
        rgb, nir, _, mask = ds[idx]
        exp_rgb, exp_nir, exp_mask = _load(demo_dir, int(ds.raw_names[idx][4:9]))
        np.testing.assert_array_equal(rgb, exp_rgb.transpose(2, 0, 1))
        np.testing.assert_array_equal(nir[0], exp_nir)
        np.testing.assert_array_equal(mask, exp_mask)

    small = tmp_path / 'small'
    proc = run_tool('convert', '--source', same, '--dest', small, '--resolution', 16, '--resize-filter', 'box',
                    '--max-images', 3)
    assert proc.returncode == 0, proc.stderr
    ds = PairedImageDataset(small, load_masks=True)
    assert len(ds) == 3 and ds.resolution == 16
    rgb, nir, _, mask = ds[1]
    exp_rgb, exp_nir, exp_mask = _load(demo_dir, 1)
    box = exp_nir.reshape(16, 2, 16, 2).astype(np.float64).mean(axis=(1, 3))  # a 2x box filter by hand
    assert np.abs(nir[0].astype(np.float64) - box).max() <= 1.0
    box_rgb = exp_rgb.reshape(16, 2, 16, 2, 3).astype(np.float64).mean(axis=(1, 3)).transpose(2, 0, 1)
    assert np.abs(rgb.astype(np.float64) - box_rgb).max() <= 1.0
    np.testing.assert_array_equal(mask, exp_mask[1::2, 1::2])  # nearest neighbour: the pixel nearest each centre


def test_convert_center_crop_of_non_square_source(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / 'src'
    for d in ('images', 'NIR'):
        (src / d).mkdir(parents=True)
    rgb = rng.integers(0, 256, [16, 24, 3], dtype=np.uint8)
    nir = rng.integers(0, 256, [16, 24], dtype=np.uint8)
    PIL.Image.fromarray(rgb).save(src / 'images' / 'a.png')
    PIL.Image.fromarray(nir).save(src / 'NIR' / 'a.jpg', quality=100)
    assert_proc_error(run_tool('convert', '--source', src, '--dest', tmp_path / 'out'), 'a.png', 'square')
    assert not (tmp_path / 'out').exists()
    proc = run_tool('convert', '--source', src, '--dest', tmp_path / 'out', '--transform', 'center-crop')
    assert proc.returncode == 0, proc.stderr
    ds = PairedImageDataset(tmp_path / 'out')
    np.testing.assert_array_equal(ds[0][0], rgb[:, 4:20].transpose(2, 0, 1))
    decoded_nir = np.asarray(PIL.Image.open(src / 'NIR' / 'a.jpg'))
    np.testing.assert_array_equal(ds[0][1][0], decoded_nir[:, 4:20])


def test_existing_destination_is_refused_and_left_alone(demo_dir, tmp_path):
    dest = tmp_path / 'taken'
    dest.mkdir()
    (dest / 'keep.txt').write_text('mine')
    assert_proc_error(run_tool('convert', '--source', demo_dir, '--dest', dest), 'taken', 'exists')
    assert_proc_error(run_tool('demo', '--dest', dest, '--count', 1, '--resolution', 16), 'taken', 'exists')
    assert sorted(p.name for p in dest.iterdir()) == ['keep.txt']
    assert sorted(p.name for p in tmp_path.iterdir()) == ['taken']  # no temporary leftovers
    proc = run_tool('demo', '--dest', dest, '--count', 1, '--resolution', 16, '--overwrite')
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in dest.iterdir()) == ['NIR', 'classes.json', 'images', 'masks']


def test_bad_options_give_one_line_errors(demo_dir, tmp_path):
    assert_proc_error(run_tool('demo', '--dest', tmp_path / 'x', '--resolution', 48), '--resolution', '48')
    assert_proc_error(run_tool('convert', '--source', tmp_path / 'missing', '--dest', tmp_path / 'y.zip'),
                          'missing')
    assert_proc_error(run_tool('convert', '--source', demo_dir, '--dest', tmp_path / 'z', '--transform',
                                   'center-crop-wide'), '--resolution')
    assert not any(tmp_path.iterdir())


def test_help_texts(capsys):
    sys.path.insert(0, str(REPO))
    import dataset_tool

    for args in ([], ['convert'], ['check'], ['demo']):
        assert dataset_tool.main([*args, '--help']) == 0
        out = capsys.readouterr().out
        assert 'Usage:' in out and len(out.splitlines()) > 8


def test_tool_starts_without_importing_torch():
    code = 'import sys, dataset_tool; sys.exit(3 if "torch" in sys.modules else 0)'
    assert subprocess.run([sys.executable, '-c', code], cwd=REPO, timeout=60).returncode == 0
