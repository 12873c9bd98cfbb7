"""Annotation import (pipeline step 3): the XCF reader, flattening, palettes, colour -> class mapping, and
prepare_annotations.py on the authors' CrossEyed annotations, with its one-line errors (exit code 2) that leave no
output behind.

References used here are independent of the code under test: the authors' own flattened PNGs and preprocessed masks
and latents (shared/data/crosseyed_example), PIL's convert('L') for the grey-level rule, and synthetic XCF files
written by a small writer in this file from the format's public description.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import PIL.Image
import pytest

import prepare_annotations
from conftest import REPO, assert_one_line_error, shared_dir
from interpreter import annotation_import
from interpreter.annotation_errors import AnnotationError, PaletteError
from interpreter.class_mapping import mask_from_colors
from interpreter.palette import load_palette
from interpreter.xcf import XcfError, parse_xcf, read_xcf
from interpreter.xcf_flatten import flatten_xcf

AUTHORS_ORDER = [63, 15, 93, 2, 91, 83, 20, 0]  # k-th file of eyes_processed/ = this id (data README)
COLOURS_4 = {0: (0, 0, 0), 1: (0, 0, 255), 2: (255, 0, 0), 3: (0, 255, 0)}


def crosseyed():
    path = shared_dir() / 'data' / 'crosseyed_example'
    if not (path / 'eyes_GIMP').is_dir():
        message = f'{path} not found (set BIGAN_SHARED to the shared/ folder)'
        if os.environ.get('BIGAN_REQUIRE_SHARED'):
            pytest.fail(message)
        pytest.skip(message)
    return path


def copy_ids(dest, ids, kinds=('.xcf', '_mask.png', '.jpg', '_NIR.jpg')):
    src = crosseyed() / 'eyes_GIMP'
    dest.mkdir(parents=True, exist_ok=True)
    for i in ids:
        for kind in kinds:
            shutil.copy(src / f'image_{i}{kind}', dest / f'image_{i}{kind}')
    return dest


def run_cli(capsys, *args):
    code = prepare_annotations.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_nothing_written(output):
    assert not output.exists(), f'{output} was created'
    leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(output.name + '.')]
    assert not leftovers, leftovers


# ---------------------------------------------------------------------------------------------------------------------
# The authors' GIMP projects


@pytest.mark.parametrize('sample_id', sorted(AUTHORS_ORDER))
def test_xcf_flattens_to_the_authors_mask_png(sample_id):
    """All four RGBA channels of every pixel equal the authors' image_{id}_mask.png; the bottom layer is the photo."""
    folder = crosseyed() / 'eyes_GIMP'
    image = read_xcf(folder / f'image_{sample_id}.xcf')
    assert (image.width, image.height) == (256, 256)
    bottom = image.layers[0]
    assert bottom.name == f'image_{sample_id}.jpg'
    # The photo layer decodes to the jpg up to JPEG decoder differences: a check of the tile decoder on busy data.
    photo = np.asarray(PIL.Image.open(folder / f'image_{sample_id}.jpg').convert('RGB')).astype(int)
    diff = np.abs(bottom.pixels[..., :3].astype(int) - photo)
    assert diff.max() <= 8 and diff.mean() < 1.0, (diff.max(), diff.mean())

    flat = flatten_xcf(folder / f'image_{sample_id}.xcf')
    expected = np.asarray(PIL.Image.open(folder / f'image_{sample_id}_mask.png'))
    assert expected.shape == (256, 256, 4) and flat.dtype == np.uint8
    np.testing.assert_array_equal(flat, expected)


@pytest.mark.parametrize('source', ['xcf', 'png'])
def test_import_reproduces_the_authors_masks(tmp_path, source):
    data = crosseyed()
    summary = annotation_import.import_annotations(data / 'eyes_GIMP', tmp_path / 'out', 'ocular_4class', source=source)
    out = tmp_path / 'out'
    ids = sorted(AUTHORS_ORDER)  # numeric, not lexical, order: 0, 2, 15, 20, ...
    assert summary['ids'] == ids == [0, 2, 15, 20, 63, 83, 91, 93]
    recorded = json.loads((out / 'annotations.json').read_text())
    assert [item['id'] for item in recorded['items']] == ids
    for k, sample_id in enumerate(ids):
        mask = np.load(out / f'image_mask{k}.npy')
        authors = np.load(data / 'eyes_processed' / f'image_mask{AUTHORS_ORDER.index(sample_id)}.npy')
        assert mask.dtype == np.uint8 and mask.shape == (256, 256)
        np.testing.assert_array_equal(mask, authors)
        item = recorded['items'][k]
        suffix = '.xcf' if source == 'xcf' else '_mask.png'
        assert item['sources']['annotation'] == f'image_{sample_id}{suffix}'
        assert item['class_counts'] == {str(c): int((authors == c).sum()) for c in range(4)}
    assert recorded['latents'] is None and not (out / 'latent_stylegan.npy').exists()


def test_cli_with_the_authors_order_and_latents(tmp_path, capsys):
    data = crosseyed()
    out = tmp_path / 'eyes_processed'
    code, stdout, err = run_cli(capsys, '--input', data / 'eyes_GIMP', '--output', out, '--latents',
                                data / 'back_latent_stylegan.npy', '--ids', ','.join(map(str, AUTHORS_ORDER)))
    assert code == 0, err
    assert 'wrote 8 annotated pairs' in stdout
    for k, sample_id in enumerate(AUTHORS_ORDER):
        np.testing.assert_array_equal(np.load(out / f'image_mask{k}.npy'),
                                      np.load(data / 'eyes_processed' / f'image_mask{k}.npy'))
        # jpg in, jpg out: byte-for-byte copies of the annotated pair.
        assert (out / f'image_{k}.jpg').read_bytes() == (data / 'eyes_GIMP' / f'image_{sample_id}.jpg').read_bytes()
        assert ((out / f'image_{k}_NIR.jpg').read_bytes()
                == (data / 'eyes_GIMP' / f'image_{sample_id}_NIR.jpg').read_bytes())
    latents = np.load(out / 'latent_stylegan.npy')
    authors = np.load(data / 'latent_stylegan.npy')
    assert latents.dtype == np.float64 == authors.dtype
    np.testing.assert_array_equal(latents, authors)
    recorded = json.loads((out / 'annotations.json').read_text())
    assert recorded['ids'] == AUTHORS_ORDER and recorded['latents']['rows'] == AUTHORS_ORDER
    # Both sources existed: the PNG was read and the .xcf checked against it.
    assert all(item['sources']['checked_against'] == f'image_{item["id"]}.xcf' for item in recorded['items'])


def test_png_output_format_converts_the_pair(tmp_path):
    folder = copy_ids(tmp_path / 'in', [2], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    summary = annotation_import.import_annotations(folder, tmp_path / 'out', image_format='png')
    assert summary['items'][0]['image_copied'] is False
    for name, mode in (('image_2.jpg', 'RGB'), ('image_2_NIR.jpg', 'L')):
        out_name = name.replace('image_2', 'image_0').replace('.jpg', '.png')
        with PIL.Image.open(tmp_path / 'out' / out_name) as im:
            assert im.format == 'PNG' and im.mode == mode
            np.testing.assert_array_equal(np.asarray(im), np.asarray(PIL.Image.open(folder / name).convert(mode)))


# ---------------------------------------------------------------------------------------------------------------------
# Palettes and colour mapping


def test_builtin_palettes_match_the_reference():
    p4 = load_palette('ocular_4class')
    assert p4.num_classes == 4
    assert {c.id: c.colors for c in p4.classes} == {i: (rgb,) for i, rgb in COLOURS_4.items()}
    assert [c.name for c in p4.classes] == ['background', 'iris', 'pupil', 'sclera']
    p10 = load_palette('ocular_10class')
    assert p10.num_classes == 10
    grey = {c.id: {g for lo, hi in c.grey_levels for g in range(lo, hi + 1)} for c in p10.classes}
    assert grey == {0: set(range(15)), 1: {29}, 2: {76}, 3: {150}, 4: {177, 174}, 5: {121}, 6: {226, 222},
                    7: {71}, 8: {209}, 9: {151, 156}}
    # Every colour given in the 10-class palette has the grey level the notebook used for its class.
    for c in p10.classes:
        for rgb in c.colors:
            luma = int(np.asarray(PIL.Image.new('RGB', (1, 1), rgb).convert('L'))[0, 0])
            assert luma in grey[c.id], (c.name, rgb, luma)


def test_grey_rule_matches_the_notebook(tmp_path):
    """match='grey' = PIL convert('L') then the notebook's remapping (<15 -> 0, 29 -> 1, 76 -> 2, 150 -> 3)."""
    rgba = np.asarray(PIL.Image.open(crosseyed() / 'eyes_GIMP' / 'image_63_mask.png'))
    grey = np.asarray(PIL.Image.fromarray(rgba).convert('L'))
    expected = np.full(grey.shape, 255, np.uint8)
    expected[grey < 15] = 0
    for level, cls in ((29, 1), (76, 2), (150, 3)):
        expected[grey == level] = cls
    assert (expected != 255).all()
    np.testing.assert_array_equal(mask_from_colors(rgba, 'ocular_4class', 'x', match='grey'), expected)
    np.testing.assert_array_equal(mask_from_colors(grey, 'ocular_4class', 'x'), expected)
    np.testing.assert_array_equal(mask_from_colors(rgba, 'ocular_4class', 'x'), expected)


def test_transparent_pixels_are_background_and_colours_map_exactly():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, :3] = COLOURS_4[1]
    rgba[1, 2, :3] = COLOURS_4[2]
    rgba[3, 4, :3] = COLOURS_4[3]
    rgba[2, 1] = (123, 45, 67, 0)  # unknown colour, but fully transparent
    rgba[2, 2] = (0, 255, 0, 1)  # barely visible: judged by its colour
    mask = mask_from_colors(rgba, 'ocular_4class', 'x')
    expected = np.zeros((4, 5), np.uint8)
    expected[0, 0], expected[1, 2], expected[3, 4], expected[2, 2] = 1, 2, 3, 3
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(mask_from_colors(rgba[..., :3][:2], 'ocular_4class', 'x'), expected[:2])


def test_unknown_colour_message_lists_three_and_counts_the_rest():
    rgb = np.zeros((10, 10, 3), np.uint8)
    odd = [((255, 0, 255), 7), ((1, 2, 3), 5), ((200, 200, 200), 3), ((9, 90, 9), 2), ((10, 20, 30), 1)]
    flat = rgb.reshape(-1, 3)
    start = 0
    for colour, count in odd:
        flat[start:start + count] = colour
        start += count
    with pytest.raises(AnnotationError) as info:
        mask_from_colors(rgb, 'ocular_4class', 'some/file.png')
    message = str(info.value)
    assert '\n' not in message and message.startswith('some/file.png: 5 colours')
    assert '#ff00ff = RGB(255, 0, 255) on 7 pixels' in message
    assert '#010203 = RGB(1, 2, 3) on 5 pixels' in message
    assert '#c8c8c8 = RGB(200, 200, 200) on 3 pixels' in message
    assert 'and 2 more colours' in message and '#0a141e' not in message


def test_snap_fixes_near_colours_only():
    rgb = np.zeros((6, 6, 3), np.uint8)
    rgb[0, :3] = (0, 0, 245)  # 10 from blue
    rgb[1, 0] = (250, 4, 0)  # ~6.4 from red
    np.testing.assert_array_equal(mask_from_colors(rgb, 'ocular_4class', 'x', snap=12)[:2, :3],
                                  [[1, 1, 1], [2, 0, 0]])
    with pytest.raises(AnnotationError, match='#0000f5'):
        mask_from_colors(rgb, 'ocular_4class', 'x', snap=5)
    far = rgb.copy()
    far[5, 5] = (128, 128, 0)
    with pytest.raises(AnnotationError, match=r'#808000 = RGB\(128, 128, 0\) on 1 pixel \(nearest'):
        mask_from_colors(far, 'ocular_4class', 'x', snap=12)
    # Within reach of two classes: still an error, never a guess.
    with pytest.raises(AnnotationError, match="ambiguous: within 200 of 'iris' and 'pupil'"):
        mask_from_colors(np.full((2, 2, 3), (160, 0, 160), np.uint8), 'ocular_4class', 'x', snap=200)


def test_ten_class_palette_matches_grey_only_classes_by_luma():
    colours = [(0, 0, 0), (0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 255, 0)]
    classes = [0, 1, 2, 3, 6]
    # colours whose luma is a grey-only class's level (PIL luma, computed here independently per pixel)
    for level, cls in ((177, 4), (121, 5), (71, 7), (209, 8), (156, 9)):
        colours.append((level, level, level))
        classes.append(cls)
    rgb = np.array(colours, np.uint8)[None]
    assert np.asarray(PIL.Image.fromarray(rgb).convert('L'))[0, 5:].tolist() == [177, 121, 71, 209, 156]
    assert mask_from_colors(rgb, 'ocular_10class', 'x')[0].tolist() == classes


BAD_PALETTES = [
    ('{"classes": [', 'not valid JSON'),
    ('{"classes": [{"id": 0, "name": "bg", "colors": ["#000000"]}], "colour": 1}', "unknown key 'colour'"),
    ('{"classes": [{"id": 0, "name": "bg", "colours": ["#000000"]}]}', "classes[0]: unknown key 'colours'"),
    ('{"classes": [{"id": 0, "name": "bg", "colors": ["#000000"]}, {"id": 0, "name": "x", "colors": ["#ffffff"]}]}',
     "duplicate 'id' 0"),
    ('{"classes": [{"id": 0, "name": "bg", "colors": ["#000000"]}, {"id": 1, "name": "x", "colors": ["#000000"]}]}',
     'duplicate colour'),
    ('{"classes": [{"id": 0, "name": "bg", "colors": ["black"]}]}', "bad entry in 'colors'"),
    ('{"classes": [{"id": 0, "name": "bg", "colors": [[0, 0, 256]]}]}', "bad entry in 'colors'"),
    ('{"classes": [{"id": 1, "name": "x", "colors": ["#0000ff"]}]}', "no class with 'id' 0"),
    ('{"classes": [{"id": 0, "name": "bg", "grey_levels": [[0, 20]]}, {"id": 1, "name": "x", "grey_levels": [15]}]}',
     'grey level 15'),
    ('{"classes": [{"id": 0, "name": "bg"}]}', "needs 'colors' or 'grey_levels'"),
    ('{"classes": [{"id": 300, "name": "bg", "colors": ["#000000"]}]}', "'id' must be an integer 0..255"),
    ('{"classes": [{"id": 0, "colors": ["#000000"]}]}', "missing key 'name'"),
]


@pytest.mark.parametrize('text,fragment', BAD_PALETTES)
def test_bad_palette_files_are_refused(tmp_path, text, fragment):
    path = tmp_path / 'my_palette.json'
    path.write_text(text)
    with pytest.raises(PaletteError) as info:
        load_palette(path)
    message = str(info.value)
    assert '\n' not in message and str(path) in message and fragment in message, message


def test_bad_palette_via_cli(tmp_path, capsys):
    folder = copy_ids(tmp_path / 'in', [2], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    palette = tmp_path / 'p.json'
    palette.write_text('{"classes": [{"id": 0, "name": "bg", "colors": ["#000000"], "greys": [0]}]}')
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out', '--palette', palette)
    assert_one_line_error(code, err, str(palette), "unknown key 'greys'")
    assert_nothing_written(tmp_path / 'out')
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out', '--palette', 'ocular_5class')
    assert_one_line_error(code, err, 'ocular_5class', 'not a built-in palette')


# ---------------------------------------------------------------------------------------------------------------------
# Bad input through the command line: one line, exit code 2, no output


def test_unknown_colour_via_cli_leaves_no_output(tmp_path):
    folder = copy_ids(tmp_path / 'in', [2, 15], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    mask_path = folder / 'image_15_mask.png'
    rgba = np.array(PIL.Image.open(mask_path))
    rgba[100:102, 50:53] = (255, 0, 255, 255)  # 6 pixels of magenta
    PIL.Image.fromarray(rgba).save(mask_path)
    out = tmp_path / 'out'
    proc = subprocess.run([sys.executable, 'prepare_annotations.py', '--input', str(folder), '--output', str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, str(mask_path), '#ff00ff', 'RGB(255, 0, 255)',
                          'on 6 pixels')
    assert_nothing_written(out)


def test_snap_via_cli(tmp_path, capsys):
    folder = copy_ids(tmp_path / 'in', [2], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    mask_path = folder / 'image_2_mask.png'
    rgba = np.array(PIL.Image.open(mask_path))
    authors = np.load(crosseyed() / 'eyes_processed' / f'image_mask{AUTHORS_ORDER.index(2)}.npy')
    iris = np.argwhere(authors == 1)[:4]
    rgba[iris[:, 0], iris[:, 1]] = (0, 10, 240, 255)  # an anti-aliased blue, ~18 from (0, 0, 255)
    PIL.Image.fromarray(rgba).save(mask_path)
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'a')
    assert_one_line_error(code, err, '#000af0', 'on 4 pixels', 'nearest: iris')
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'b', '--snap', 20)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / 'b' / 'image_mask0.npy'), authors)
    assert json.loads((tmp_path / 'b' / 'annotations.json').read_text())['items'][0]['snapped_pixels'] == 4
    rgba[iris[0, 0], iris[0, 1]] = (90, 90, 90, 255)  # far from every palette colour
    PIL.Image.fromarray(rgba).save(mask_path)
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'c', '--snap', 20)
    assert_one_line_error(code, err, '#5a5a5a', 'on 1 pixel')
    assert_nothing_written(tmp_path / 'c')


def test_missing_nir_is_named(tmp_path, capsys):
    folder = copy_ids(tmp_path / 'in', [2, 15], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    (folder / 'image_15_NIR.jpg').unlink()
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out')
    assert_one_line_error(code, err, str(folder / 'image_15_NIR.jpg'), 'missing')
    assert_nothing_written(tmp_path / 'out')


def test_size_mismatch_is_refused(tmp_path, capsys):
    folder = copy_ids(tmp_path / 'in', [2, 15], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    with PIL.Image.open(folder / 'image_15_mask.png') as im:
        im.resize((128, 128), PIL.Image.NEAREST).save(folder / 'image_15_mask.png')
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out')
    assert_one_line_error(code, err, 'image_15_mask.png', '128x128', '256x256')
    assert_nothing_written(tmp_path / 'out')
    copy_ids(folder, [15], kinds=('_mask.png',))
    with PIL.Image.open(folder / 'image_2_NIR.jpg') as im:
        im.resize((200, 256)).save(folder / 'image_2_NIR.jpg')
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out')
    assert_one_line_error(code, err, 'image_2_NIR.jpg', '200x256')


def test_xcf_and_png_that_disagree_are_refused(tmp_path, capsys):
    folder = copy_ids(tmp_path / 'in', [2])
    rgba = np.array(PIL.Image.open(folder / 'image_2_mask.png'))
    rgba[:3, :3] = (0, 255, 0, 255)  # 9 background pixels painted sclera in the PNG only
    PIL.Image.fromarray(rgba).save(folder / 'image_2_mask.png')
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out')
    assert_one_line_error(code, err, 'image_2.xcf', 'image_2_mask.png', 'disagree on 9 pixels')
    code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out', '--source', 'xcf')
    assert code == 0, err


def test_corrupt_xcf_files(tmp_path, capsys):
    src = (crosseyed() / 'eyes_GIMP' / 'image_2.xcf').read_bytes()
    folder = copy_ids(tmp_path / 'in', [2], kinds=('.jpg', '_NIR.jpg'))
    cases = [
        (src[:len(src) // 2], 'truncated'),
        (src[:40], 'truncated'),
        (b'\x89PNG\r\n\x1a\n' + src[8:], 'not a GIMP XCF file'),
        (src[:26] + struct.pack('>I', 600) + src[30:], 'unsupported precision: 32-bit linear float'),
    ]
    for data, fragment in cases:
        with pytest.raises(XcfError, match=fragment):
            parse_xcf(data, 'bad.xcf')
        (folder / 'image_2.xcf').write_bytes(data)
        code, _, err = run_cli(capsys, '--input', folder, '--output', tmp_path / 'out')
        assert_one_line_error(code, err, str(folder / 'image_2.xcf'), fragment)
        assert_nothing_written(tmp_path / 'out')


def test_ids_and_destination_checks(tmp_path, capsys):
    folder = copy_ids(tmp_path / 'in', [2, 15], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    out = tmp_path / 'out'
    code, _, err = run_cli(capsys, '--input', folder, '--output', out, '--ids', '15,7')
    assert_one_line_error(code, err, 'no annotation for id 7')
    code, _, err = run_cli(capsys, '--input', folder, '--output', out, '--ids', '15,a')
    assert_one_line_error(code, err, '--ids')
    code, _, err = run_cli(capsys, '--input', folder, '--output', out, '--latents',
                           crosseyed() / 'latent_stylegan.npy')  # 8 rows: no row 15
    assert_one_line_error(code, err, 'latent_stylegan.npy', 'has 8 rows', 'id 15')
    assert_nothing_written(out)
    code, _, err = run_cli(capsys, '--input', folder, '--output', folder)
    assert_one_line_error(code, err, 'may not be the input folder')

    code, _, err = run_cli(capsys, '--input', folder, '--output', out, '--ids', '15')
    assert code == 0, err
    code, _, err = run_cli(capsys, '--input', folder, '--output', out)
    assert_one_line_error(code, err, str(out), '--overwrite')
    assert [json.loads((out / 'annotations.json').read_text())['ids']] == [[15]]
    code, _, err = run_cli(capsys, '--input', folder, '--output', out, '--overwrite')
    assert code == 0, err
    assert json.loads((out / 'annotations.json').read_text())['ids'] == [2, 15]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in', 'out']


def test_failure_while_writing_leaves_no_output(tmp_path, monkeypatch):
    folder = copy_ids(tmp_path / 'in', [2, 15], kinds=('_mask.png', '.jpg', '_NIR.jpg'))
    calls = []

    def broken(*args):
        calls.append(args)
        if len(calls) == 3:
            raise OSError(28, 'No space left on device')
        return original(*args)

    original = annotation_import._write_image
    monkeypatch.setattr(annotation_import, '_write_image', broken)
    with pytest.raises(OSError):
        annotation_import.import_annotations(folder, tmp_path / 'out')
    assert_nothing_written(tmp_path / 'out')


# ---------------------------------------------------------------------------------------------------------------------
# Synthetic XCF files: features the authors' projects do not use (old versions, other compressions, offsets,
# opacity, hidden layers, grey layers, layer masks, groups), written here from the format description.


class XcfWriter:
    """Writes a minimal XCF: one image, layers given top to bottom, 8-bit gamma precision."""

    def __init__(self, version, compression, width, height):
        self.version, self.compression, self.width, self.height = version, compression, width, height
        self.ptr = '>Q' if version >= 11 else '>I'
        self.buf = bytearray()

    def pointer(self, value=0):
        pos = len(self.buf)
        self.buf += struct.pack(self.ptr, value)
        return pos

    def patch(self, pos):
        struct.pack_into(self.ptr, self.buf, pos, len(self.buf))

    def prop(self, ptype, payload=b''):
        self.buf += struct.pack('>II', ptype, len(payload)) + payload

    def string(self, text):
        raw = text.encode() + b'\0'
        self.buf += struct.pack('>I', len(raw)) + raw

    @staticmethod
    def rle_plane(plane):
        out, i, n = bytearray(), 0, len(plane)
        while i < n:
            j = i
            while j < n and plane[j] == plane[i]:
                j += 1
            if j - i >= 2:
                run = j - i
                out += bytes([run - 1, plane[i]]) if run <= 127 else bytes([127]) + struct.pack('>H', run) + \
                    bytes([plane[i]])
                i = j
                continue
            j = i + 1
            while j < n and not (j + 1 < n and plane[j] == plane[j + 1]):
                j += 1
            lit = bytes(plane[i:j])
            out += bytes([256 - len(lit)]) + lit if len(lit) <= 127 else bytes([128]) + \
                struct.pack('>H', len(lit)) + lit
            i = j
        return bytes(out)

    def tile(self, pixels):
        if self.compression == 0:
            return pixels.tobytes()
        if self.compression == 2:
            return zlib.compress(pixels.tobytes())
        flat = pixels.reshape(-1, pixels.shape[-1])
        return b''.join(self.rle_plane(flat[:, c].tobytes()) for c in range(flat.shape[1]))

    def hierarchy(self, pixels):
        h, w, bpp = pixels.shape
        self.buf += struct.pack('>III', w, h, bpp)
        level_ptr = self.pointer()
        self.pointer(0)
        self.patch(level_ptr)
        self.buf += struct.pack('>II', w, h)
        tile_ptrs = [self.pointer() for _ in range(-(-h // 64) * -(-w // 64))]
        self.pointer(0)
        i = 0
        for ty in range(0, h, 64):
            for tx in range(0, w, 64):
                self.patch(tile_ptrs[i])
                self.buf += self.tile(np.ascontiguousarray(pixels[ty:ty + 64, tx:tx + 64]))
                i += 1

    def write(self, layers):
        """layers: top to bottom, dicts with name, type, pixels [h, w, bpp], x, y, opacity, float_opacity, visible,
        mode, mask, item_path, group."""
        tag = b'file' if self.version == 0 else b'v%03d' % self.version
        self.buf += b'gimp xcf ' + tag + b'\0' + struct.pack('>III', self.width, self.height, 0)
        if self.version >= 4:
            self.buf += struct.pack('>I', 150)
        self.prop(17, bytes([self.compression]))
        self.prop(19, struct.pack('>ff', 72.0, 72.0))  # resolution: skipped by the reader
        self.prop(0)
        layer_ptrs = [self.pointer() for _ in layers]
        self.pointer(0)
        self.pointer(0)  # no channels
        for ptr, layer in zip(layer_ptrs, layers):
            self.patch(ptr)
            pixels = layer['pixels']
            self.buf += struct.pack('>III', pixels.shape[1], pixels.shape[0], layer['type'])
            self.string(layer['name'])
            self.prop(6, struct.pack('>I', int(round(layer.get('opacity', 1.0) * 255))))
            if 'float_opacity' in layer:
                self.prop(33, struct.pack('>f', layer['float_opacity']))
            self.prop(8, struct.pack('>I', int(layer.get('visible', True))))
            self.prop(15, struct.pack('>ii', layer.get('x', 0), layer.get('y', 0)))
            self.prop(7, struct.pack('>I', layer.get('mode', 28)))
            if layer.get('group'):
                self.prop(29)
            if 'item_path' in layer:
                self.prop(30, struct.pack(f'>{len(layer["item_path"])}I', *layer['item_path']))
            if layer.get('mask') is not None:
                self.prop(11, struct.pack('>I', 1))
            self.prop(0)
            hier_ptr = self.pointer()
            mask_ptr = self.pointer()
            self.patch(hier_ptr)
            self.hierarchy(pixels)
            if layer.get('mask') is not None:
                self.patch(mask_ptr)
                mask = layer['mask']
                self.buf += struct.pack('>II', mask.shape[1], mask.shape[0])
                self.string('mask')
                self.prop(0)
                channel_hier = self.pointer()
                self.patch(channel_hier)
                self.hierarchy(mask[..., None])
        return bytes(self.buf)


def over(dst, rgba, x, y, opacity=1.0, mask=None):
    """Reference straight-alpha Normal compositing (float canvas, alpha 0..1) written for this test."""
    h, w = rgba.shape[:2]
    H, W = dst.shape[:2]
    for yy in range(max(0, y), min(H, y + h)):
        for xx in range(max(0, x), min(W, x + w)):
            src = rgba[yy - y, xx - x].astype(float)
            a = src[3] / 255.0 * opacity * (1.0 if mask is None else mask[yy - y, xx - x] / 255.0)
            da = dst[yy, xx, 3]
            oa = a + da * (1 - a)
            if oa > 0:
                dst[yy, xx, :3] = (src[:3] * a + dst[yy, xx, :3] * da * (1 - a)) / oa
            else:
                dst[yy, xx, :3] = 0
            dst[yy, xx, 3] = oa


def to_uint8(canvas):
    out = np.empty(canvas.shape, np.uint8)
    out[..., :3] = np.rint(canvas[..., :3])
    out[..., 3] = np.rint(canvas[..., 3] * 255)
    return out


@pytest.mark.parametrize('version,compression', [(0, 0), (3, 0), (7, 1), (10, 1), (11, 2), (12, 1)])
def test_synthetic_xcf_features(tmp_path, version, compression):
    rng = np.random.default_rng(version)
    W, H = 70, 67  # edge tiles narrower and shorter than 64
    photo = rng.integers(0, 256, (H, W, 3), np.uint8)
    base = np.zeros((H, W, 4), np.uint8)
    base[..., 3] = 255
    base[:40, :35] = (0, 0, 255, 255)  # long runs
    base[50:, 60:, :3] = rng.integers(0, 256, (17, 10, 3))  # literal runs
    base[20:30, 36:70, 3] = 0  # a hole: the photo would show through if it were not left out
    red = np.zeros((20, 30, 4), np.uint8)
    red[...] = (255, 0, 0, 255)
    red[5:8, 5:8, 3] = 0
    grey = np.zeros((16, 16, 2), np.uint8)
    grey[..., 0] = 200
    grey[..., 1] = rng.choice([0, 128, 255], (16, 16))
    green = np.zeros((20, 20, 4), np.uint8)
    green[...] = (0, 255, 0, 255)
    mask = np.zeros((20, 20), np.uint8)
    mask[:, :10] = 255
    mask[:, 10:15] = 100
    hidden = np.full((H, W, 4), 255, np.uint8)
    layers = [  # top to bottom
        dict(name='masked', type=1, pixels=green, x=10, y=30, mask=mask),
        dict(name='grey', type=3, pixels=grey, x=3, y=4, opacity=0.8),
        dict(name='hidden', type=1, pixels=hidden, visible=False),
        dict(name='red', type=1, pixels=red, x=50, y=-5, opacity=1.0, float_opacity=0.5),
        dict(name='base', type=1, pixels=base),
        dict(name='photo.jpg', type=0, pixels=photo),
    ]
    data = XcfWriter(version, compression, W, H).write(layers)
    path = tmp_path / 'image_5.xcf'
    path.write_bytes(data)

    image = read_xcf(path)
    assert image.version == version and (image.width, image.height) == (W, H)
    assert [layer.name for layer in image.layers] == ['photo.jpg', 'base', 'red', 'hidden', 'grey', 'masked']
    np.testing.assert_array_equal(image.layers[0].pixels[..., :3], photo)
    assert (image.layers[0].pixels[..., 3] == 255).all()
    red_layer = image.layers[2]
    assert (red_layer.x, red_layer.y, red_layer.width, red_layer.height) == (50, -5, 30, 20)
    assert red_layer.opacity == 0.5 and not image.layers[3].visible
    np.testing.assert_array_equal(image.layers[4].pixels[..., 0], grey[..., 0])
    np.testing.assert_array_equal(image.layers[4].pixels[..., 3], grey[..., 1])
    np.testing.assert_array_equal(image.layers[5].mask, mask)

    canvas = np.zeros((H, W, 4))
    over(canvas, base, 0, 0)
    over(canvas, red, 50, -5, 0.5)
    grey_rgba = np.concatenate([np.repeat(grey[..., :1], 3, -1), grey[..., 1:]], -1)
    over(canvas, grey_rgba, 3, 4, 0.8)
    over(canvas, green, 10, 30, 1.0, mask)
    np.testing.assert_array_equal(flatten_xcf(path), to_uint8(canvas))
    # Without leaving out the bottom layer the photo shows where the annotation layers are transparent.
    with_photo = np.zeros((H, W, 4))
    over(with_photo, np.concatenate([photo, np.full((H, W, 1), 255, np.uint8)], -1), 0, 0)
    for src, x, y, op, m in ((base, 0, 0, 1, None), (red, 50, -5, 0.5, None), (grey_rgba, 3, 4, 0.8, None),
                             (green, 10, 30, 1, mask)):
        over(with_photo, src, x, y, op, m)
    np.testing.assert_array_equal(flatten_xcf(path, exclude_bottom=False), to_uint8(with_photo))
    assert (to_uint8(with_photo) != to_uint8(canvas)).any()


def test_synthetic_xcf_groups_and_refusals(tmp_path):
    W = H = 8
    black = np.zeros((H, W, 4), np.uint8)
    black[..., 3] = 255
    red = np.zeros((4, 6, 4), np.uint8)
    red[...] = (255, 0, 0, 255)
    blue = np.zeros((6, 4, 4), np.uint8)
    blue[...] = (0, 0, 255, 255)
    empty = np.zeros((H, W, 4), np.uint8)
    photo = np.full((H, W, 3), 77, np.uint8)
    layers = [  # file order: a group, then its children (top to bottom), then the rest
        dict(name='group', type=1, pixels=empty, group=True, opacity=0.6, item_path=[0]),
        dict(name='red', type=1, pixels=red, x=1, y=1, item_path=[0, 0]),
        dict(name='blue', type=1, pixels=blue, x=2, y=0, item_path=[0, 1]),
        dict(name='black', type=1, pixels=black, item_path=[1]),
        dict(name='photo', type=0, pixels=photo, item_path=[2]),
    ]
    path = tmp_path / 'g.xcf'
    path.write_bytes(XcfWriter(11, 1, W, H).write(layers))
    group = np.zeros((H, W, 4))
    over(group, blue, 2, 0)
    over(group, red, 1, 1)
    canvas = np.zeros((H, W, 4))
    over(canvas, black, 0, 0)
    over(canvas, to_uint8(group), 0, 0, opacity=round(0.6 * 255) / 255)
    np.testing.assert_array_equal(flatten_xcf(path), to_uint8(canvas))

    layers[3]['mode'] = 30  # multiply
    path.write_bytes(XcfWriter(11, 1, W, H).write(layers))
    with pytest.raises(AnnotationError, match="layer 'black' uses blend mode multiply"):
        flatten_xcf(path)
    path.write_bytes(XcfWriter(11, 1, W, H).write([layers[-1]]))
    with pytest.raises(AnnotationError, match='no layer above the bottom'):
        flatten_xcf(path)
