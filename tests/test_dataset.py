"""Paired RGB+NIR dataset: pairing by name, contents, x-flips, labels, masks, subsets, zip/folder layouts, pickling,
and a one-line DatasetError naming the file for every kind of bad input."""

import json
import pickle
import shutil
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from dataset_tool import summarize
from training.dataset import PairedImageDataset
from training.image_pairs import DatasetError

RES = 16

# ---------------------------------------------------------------------------------------------------- builders


def _rgb(rng, res=RES, w=None):
    return rng.integers(0, 256, size=[res, w or res, 3], dtype=np.uint8)


def _grey(rng, res=RES, w=None):
    return rng.integers(0, 256, size=[res, w or res], dtype=np.uint8)


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == '.npy':
        np.save(path, array)
    else:
        PIL.Image.fromarray(array, mode=mode).save(path)


def _make(root, names, seed=0, nir_ext=None, masks=False, res=RES):
    """images/<name>, NIR/<name with nir_ext> (and masks/<key>.png) with random known pixels under root."""
    rng = np.random.default_rng(seed)
    truth = {}
    for name in names:
        key = name.rsplit('.', 1)[0]
        rgb, nir = _rgb(rng, res), _grey(rng, res)
        _save(root / 'images' / name, rgb)
        _save(root / 'NIR' / (f'{key}.{nir_ext}' if nir_ext else name), nir)
        mask = rng.integers(0, 4, size=[res, res], dtype=np.uint8)
        if masks:
            _save(root / 'masks' / f'{key}.png', mask)
        truth[key] = (rgb, nir, mask)
    return truth


def _zip_folder(folder, zip_path, top=''):
    with zipfile.ZipFile(zip_path, 'w') as z:
        for f in sorted(folder.rglob('*')):
            if f.is_file():
                z.write(f, top + f.relative_to(folder).as_posix())
    return zip_path


def _key_of(ds, idx):
    return ds.raw_names[ds.get_details(idx).raw_idx].rsplit('.', 1)[0]


# ---------------------------------------------------------------------------------------------------- pairing, contents


def test_pairs_are_matched_by_name_not_by_sorted_position(tmp_path):
    # RGB sorted: m.bmp < m.d.png < z.png; NIR sorted: m.d.png < m.png < z.bmp. Position pairing would mismatch.
    rng = np.random.default_rng(1)
    truth = {}
    for key, rgb_ext, nir_ext in [('m', 'bmp', 'png'), ('m.d', 'png', 'png'), ('z', 'png', 'bmp')]:
        rgb, nir = _rgb(rng), _grey(rng)
        _save(tmp_path / 'images' / f'{key}.{rgb_ext}', rgb)
        _save(tmp_path / 'NIR' / f'{key}.{nir_ext}', nir)
        truth[key] = (rgb, nir)
    rgb_sorted = sorted(p.name for p in (tmp_path / 'images').iterdir())
    nir_sorted = sorted(p.name for p in (tmp_path / 'NIR').iterdir())
    assert [n.rsplit('.', 1)[0] for n in rgb_sorted] != [n.rsplit('.', 1)[0] for n in nir_sorted]

    ds = PairedImageDataset(tmp_path)
    assert len(ds) == 3
    for idx in range(3):
        rgb, nir, label = ds[idx]
        exp_rgb, exp_nir = truth[_key_of(ds, idx)]
        np.testing.assert_array_equal(rgb, exp_rgb.transpose(2, 0, 1))
        np.testing.assert_array_equal(nir[0], exp_nir)


def test_items_have_upstream_shapes_and_dtypes(tmp_path):
    truth = _make(tmp_path, ['a.png', 'sub/b.png'])
    ds = PairedImageDataset(tmp_path)
    assert isinstance(ds, torch.utils.data.Dataset)
    assert (ds.image_shape, ds.nir_shape, ds.resolution) == ([3, RES, RES], [1, RES, RES], RES)
    assert (ds.num_channels, ds.nir_channels, ds.label_dim, ds.has_labels, ds.has_masks) == (3, 1, 0, False, False)
    assert ds.raw_names == ['a.png', 'sub/b.png']
    rgb, nir, label = ds[1]
    assert rgb.dtype == np.uint8 and rgb.shape == (3, RES, RES)
    assert nir.dtype == np.uint8 and nir.shape == (1, RES, RES)
    assert label.dtype == np.float32 and label.shape == (0,)
    np.testing.assert_array_equal(rgb, truth['sub/b'][0].transpose(2, 0, 1))
    np.testing.assert_array_equal(nir[0], truth['sub/b'][1])


def test_nir_in_other_lossless_format_pairs_across_extensions(tmp_path):
    truth = _make(tmp_path, ['a.png', 'b.png'], nir_ext='bmp')
    ds = PairedImageDataset(tmp_path)
    for idx in range(2):
        np.testing.assert_array_equal(ds[idx][1][0], truth[_key_of(ds, idx)][1])


def test_xflip_mirrors_all_modalities_together(tmp_path):
    truth = _make(tmp_path, ['a.png', 'b.png', 'c.png'], masks=True)
    ds = PairedImageDataset(tmp_path, xflip=True, load_masks=True)
    assert len(ds) == 6
    for idx in range(6):
        rgb, nir, label, mask = ds[idx]
        exp_rgb, exp_nir, exp_mask = truth[_key_of(ds, idx)]
        exp_rgb, exp_nir = exp_rgb.transpose(2, 0, 1), exp_nir[None]
        if idx >= 3:
            assert ds.get_details(idx).xflip
            exp_rgb, exp_nir, exp_mask = exp_rgb[:, :, ::-1], exp_nir[:, :, ::-1], exp_mask[:, ::-1]
        else:
            assert not ds.get_details(idx).xflip
        np.testing.assert_array_equal(rgb, exp_rgb)
        np.testing.assert_array_equal(nir, exp_nir)
        np.testing.assert_array_equal(mask, exp_mask)
        assert mask.dtype == np.int64 and mask.shape == (RES, RES)


def test_masks_png_and_npy(tmp_path):
    truth = _make(tmp_path, ['a.png', 'b.png'], masks=True)
    (tmp_path / 'masks' / 'b.png').unlink()
    big = np.arange(RES * RES, dtype=np.int32).reshape(RES, RES)  # class ids beyond 255 only fit in .npy
    np.save(tmp_path / 'masks' / 'b.npy', big)
    ds = PairedImageDataset(tmp_path, load_masks=True)
    assert ds.has_masks
    np.testing.assert_array_equal(ds[0][3], truth['a'][2])
    np.testing.assert_array_equal(ds[1][3], big)
    plain = PairedImageDataset(tmp_path)  # masks are ignored unless asked for
    assert not plain.has_masks and len(plain[0]) == 3


def test_labels_from_dataset_json_are_one_hot(tmp_path):
    _make(tmp_path, ['a.png', 'b.png', 'c.png'])
    labels = {'a.png': 2, 'b.png': 0, 'c.png': 1}
    (tmp_path / 'images' / 'dataset.json').write_text(json.dumps({'labels': [[k, v] for k, v in labels.items()]}))
    ds = PairedImageDataset(tmp_path, use_labels=True)
    assert ds.has_labels and ds.has_onehot_labels and ds.label_shape == [3] and ds.label_dim == 3
    for idx in range(3):
        expected = np.zeros(3, np.float32)
        expected[labels[ds.raw_names[idx]]] = 1
        np.testing.assert_array_equal(ds.get_label(idx), expected)
        np.testing.assert_array_equal(ds[idx][2], expected)
        assert ds.get_details(idx).raw_label == labels[ds.raw_names[idx]]
    assert PairedImageDataset(tmp_path, use_labels=False).label_dim == 0


def test_float_vector_labels_and_top_level_dataset_json(tmp_path):
    _make(tmp_path, ['a.png', 'b.png'])
    vectors = {'a.png': [0.5, -1.0], 'b.png': [2.0, 3.25]}
    (tmp_path / 'dataset.json').write_text(json.dumps({'labels': [[k, v] for k, v in vectors.items()]}))
    ds = PairedImageDataset(tmp_path, use_labels=True)
    assert not ds.has_onehot_labels and ds.label_shape == [2]
    np.testing.assert_array_equal(ds.get_label(1), np.float32(vectors['b.png']))


def test_use_labels_without_dataset_json_gives_no_labels(tmp_path):
    _make(tmp_path, ['a.png'])
    ds = PairedImageDataset(tmp_path, use_labels=True)
    assert not ds.has_labels and ds.get_label(0).shape == (0,)


def test_max_size_takes_upstream_random_subset(tmp_path):
    names = [f'{i:02d}.png' for i in range(8)]
    truth = _make(tmp_path, names)
    ds = PairedImageDataset(tmp_path, max_size=3, random_seed=5)
    order = np.arange(8)
    np.random.RandomState(5).shuffle(order)
    expected = sorted(order[:3])
    assert len(ds) == 3
    assert [ds.get_details(i).raw_idx for i in range(3)] == expected
    np.testing.assert_array_equal(ds[2][1][0], truth[f'{expected[2]:02d}'][1])
    assert len(PairedImageDataset(tmp_path, max_size=3, random_seed=5, xflip=True)) == 6
    assert len(PairedImageDataset(tmp_path, max_size=100)) == 8


def _all_items(ds):
    return [tuple(np.asarray(a) for a in ds[i]) for i in range(len(ds))]


def test_zip_and_folder_layouts_give_the_same_items(tmp_path):
    root = tmp_path / 'train'
    _make(root, ['a.png', 'b.png', 'x/c.png'], masks=True)
    labels = [['a.png', 1], ['b.png', 0], ['x/c.png', 1]]
    (root / 'images' / 'dataset.json').write_text(json.dumps({'labels': labels}))
    kwargs = dict(use_labels=True, load_masks=True)
    reference = _all_items(PairedImageDataset(root, **kwargs))
    paths = [str(root / 'images') + '/', root / 'images', _zip_folder(root, tmp_path / 'flat.zip'),
             _zip_folder(root, tmp_path / 'wrapped.zip', top='train/')]
    for path in paths:
        ds = PairedImageDataset(path, **kwargs)
        assert ds.label_shape == [2] and ds.has_masks
        got = _all_items(ds)
        assert len(got) == len(reference)
        for a, b in zip(got, reference):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    assert PairedImageDataset(paths[0]).name == 'train'
    assert PairedImageDataset(paths[2]).name == 'flat'


def test_zip_dataset_pickles_without_its_handle_and_works_in_workers(tmp_path):
    _make(tmp_path / 'd', ['a.png', 'b.png', 'c.png', 'd.png'])
    ds = PairedImageDataset(_zip_folder(tmp_path / 'd', tmp_path / 'd.zip'))
    first = ds[0]  # opens the zip
    clone = pickle.loads(pickle.dumps(ds))
    assert type(clone) is type(ds)
    np.testing.assert_array_equal(clone[0][0], first[0])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    rgb = torch.cat([batch[0] for batch in loader])
    np.testing.assert_array_equal(rgb.numpy(), np.stack([ds[i][0] for i in range(4)]))


def test_grey_rgb_is_expanded_and_grey_three_channel_nir_is_reduced(tmp_path):
    rng = np.random.default_rng(3)
    grey_rgb, nir_as_rgb = _grey(rng), _grey(rng)
    _save(tmp_path / 'images' / 'a.png', grey_rgb)
    _save(tmp_path / 'NIR' / 'a.png', np.repeat(nir_as_rgb[:, :, None], 3, axis=2))
    ds = PairedImageDataset(tmp_path)
    rgb, nir, _ = ds[0]
    np.testing.assert_array_equal(rgb, np.stack([grey_rgb] * 3))
    np.testing.assert_array_equal(nir[0], nir_as_rgb)
    info = summarize(ds, deep=True)
    assert info['grayscale_converted'] == 1 and info['nir_reduced'] == 1
    assert info['count'] == 1 and info['resolution'] == RES and info['channels'] == dict(rgb=3, nir=1)


def test_summarize_reports_labels_and_mask_classes(tmp_path):
    truth = _make(tmp_path, ['a.png', 'b.png'], masks=True)
    (tmp_path / 'dataset.json').write_text(json.dumps({'labels': [['a.png', 0], ['b.png', 4]]}))
    info = summarize(PairedImageDataset(tmp_path, use_labels=True, load_masks=True), deep=True)
    assert info['labels'] == dict(kind='class', dim=5)
    assert info['masks'] == 2
    assert info['mask_classes'] == sorted(set(np.unique(truth['a'][2])) | set(np.unique(truth['b'][2])))


# ---------------------------------------------------------------------------------------------------- bad input


def _expect_error(path, culprit, *fragments, **kwargs):
    with pytest.raises(DatasetError) as info:
        PairedImageDataset(path, **kwargs)
    message = str(info.value)
    assert '\n' not in message
    assert culprit in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_error_rgb_without_nir_partner_lists_names_and_count(tmp_path):
    _make(tmp_path, ['a.png', 'b.png', 'c.png', 'd.png'])
    (tmp_path / 'NIR' / 'b.png').unlink()
    (tmp_path / 'NIR' / 'd.png').unlink()
    _expect_error(tmp_path, 'b.png', 'NIR', 'd.png', '2')


def test_error_nir_without_rgb_partner(tmp_path):
    _make(tmp_path, ['a.png', 'b.png'])
    _save(tmp_path / 'NIR' / 'extra.png', np.zeros([RES, RES], np.uint8))
    _expect_error(tmp_path, 'extra.png', 'RGB')


def test_error_rgb_and_nir_sizes_differ(tmp_path):
    _make(tmp_path, ['a.png', 'b.png'])
    _save(tmp_path / 'NIR' / 'b.png', np.zeros([RES // 2, RES // 2], np.uint8))
    _expect_error(tmp_path, 'b.png', f'{RES // 2}x{RES // 2}', f'{RES}x{RES}')


def test_error_non_square(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / 'images' / 'wide.png', _rgb(rng, RES, 2 * RES))
    _save(tmp_path / 'NIR' / 'wide.png', _grey(rng, RES, 2 * RES))
    _expect_error(tmp_path, 'wide.png', 'square')


def test_error_non_power_of_two(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / 'images' / 'odd.png', _rgb(rng, 24))
    _save(tmp_path / 'NIR' / 'odd.png', _grey(rng, 24))
    _expect_error(tmp_path, 'odd.png', 'power of two')


def test_error_resolution_argument_mismatch(tmp_path):
    _make(tmp_path, ['a.png'])
    _expect_error(tmp_path, 'a.png', str(2 * RES), resolution=2 * RES)


def test_error_images_of_different_sizes(tmp_path):
    _make(tmp_path, ['a.png'])
    _make(tmp_path, ['b.png'], res=2 * RES)
    _expect_error(tmp_path, 'b.png', 'a.png')


@pytest.mark.parametrize('folder', ['images', 'NIR'])
def test_error_corrupt_file(tmp_path, folder):
    _make(tmp_path, ['a.png', 'b.png'])
    (tmp_path / folder / 'b.png').write_bytes(b'this is not a png at all' * 10)
    _expect_error(tmp_path, f'{folder}/b.png')


def test_error_truncated_file_is_reported_when_loaded(tmp_path):
    _make(tmp_path, ['a.png'])
    data = (tmp_path / 'images' / 'a.png').read_bytes()
    (tmp_path / 'images' / 'a.png').write_bytes(data[:len(data) // 2])
    ds = PairedImageDataset(tmp_path)  # the header is intact
    with pytest.raises(DatasetError, match='a.png'):
        ds[0]


def test_error_colour_nir(tmp_path):
    _make(tmp_path, ['a.png', 'b.png'])
    _save(tmp_path / 'NIR' / 'b.png', _rgb(np.random.default_rng(0)))
    _expect_error(tmp_path, 'NIR/b.png', 'colour')


def test_error_empty_folder(tmp_path):
    (tmp_path / 'empty').mkdir()
    _expect_error(tmp_path / 'empty', 'empty', 'no image')
    (tmp_path / 'e2' / 'images').mkdir(parents=True)
    (tmp_path / 'e2' / 'NIR').mkdir()
    _expect_error(tmp_path / 'e2', 'images', 'no image')


def test_error_missing_nir_folder(tmp_path):
    _make(tmp_path, ['a.png'])
    shutil.rmtree(tmp_path / 'NIR')
    _expect_error(tmp_path, 'NIR', 'not found')
    _expect_error(tmp_path / 'images', 'NIR', 'not found')


def test_error_missing_path_and_non_zip_file(tmp_path):
    _expect_error(tmp_path / 'nothere', 'nothere')
    (tmp_path / 'f.txt').write_text('x')
    _expect_error(tmp_path / 'f.txt', 'f.txt', 'zip')


def test_error_same_name_with_two_extensions(tmp_path):
    _make(tmp_path, ['a.png'])
    _save(tmp_path / 'images' / 'a.bmp', _rgb(np.random.default_rng(0)))
    _expect_error(tmp_path, 'a.bmp', 'a.png')


def test_error_label_missing_for_a_file(tmp_path):
    _make(tmp_path, ['a.png', 'b.png'])
    (tmp_path / 'dataset.json').write_text(json.dumps({'labels': [['a.png', 0]]}))
    _expect_error(tmp_path, 'b.png', 'label', use_labels=True)
    assert not PairedImageDataset(tmp_path).has_labels  # labels are not read unless asked for


def test_error_masks_requested_but_missing(tmp_path):
    _make(tmp_path, ['a.png', 'b.png'], masks=True)
    (tmp_path / 'masks' / 'b.png').unlink()
    _expect_error(tmp_path, 'b.png', 'mask', load_masks=True)
    shutil.rmtree(tmp_path / 'masks')
    _expect_error(tmp_path, 'masks', load_masks=True)


def test_error_mask_of_wrong_size(tmp_path):
    _make(tmp_path, ['a.png'], masks=True)
    _save(tmp_path / 'masks' / 'a.png', np.zeros([RES, 2 * RES], np.uint8))
    _expect_error(tmp_path, 'masks/a.png', load_masks=True)


def test_error_alpha_channel(tmp_path):
    _make(tmp_path, ['a.png'])
    _save(tmp_path / 'images' / 'a.png', np.zeros([RES, RES, 4], np.uint8))
    _expect_error(tmp_path, 'a.png', 'alpha')


def test_error_is_one_line_and_pickles():
    e = DatasetError('some/file.png', 'is broken')
    assert str(e) == 'some/file.png: is broken' and (e.file, e.problem) == ('some/file.png', 'is broken')
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e)
