"""Importing a folder of annotations: GIMP projects or colour PNGs -> the interpreter's training folder.

Step 3 of the pipeline (``prepare_annotations.py``). The annotator gets ``image_{id}.jpg`` / ``image_{id}_NIR.jpg``
pairs from ``make_training_data.py``, paints each class in its own colour in GIMP, and saves ``image_{id}.xcf``
and/or a flattened ``image_{id}_mask.png``. :func:`import_annotations` finds and pairs those files, checks them,
maps them to class ids (:mod:`interpreter.class_mapping`, GIMP projects flattened by :mod:`interpreter.xcf_flatten`,
palettes from :mod:`interpreter.palette`) and writes what ``train_interpreter.py`` reads: ``image_mask{k}.npy``
(uint8 class ids), ``image_{k}.jpg``, ``image_{k}_NIR.jpg`` for k = 0..N-1, ``latent_stylegan.npy`` (row k = the z
of pair k) and ``annotations.json`` (what came from where).
"""

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image

import dnnlib
from dnnlib.util import atomic_write
from interpreter.annotation_errors import AnnotationError
from interpreter.class_mapping import map_to_classes
from interpreter.palette import Palette, load_palette
from interpreter.xcf import XcfError
from interpreter.xcf_flatten import flatten_xcf

__all__ = ['import_annotations', 'find_annotations']


_XCF_RE = re.compile(r'^image_(\d+)\.xcf$', re.IGNORECASE)
_PNG_RE = re.compile(r'^image_(\d+)_mask\.png$', re.IGNORECASE)
_IMAGE_EXTS = ('.jpg', '.jpeg', '.png')


def find_annotations(input_dir) -> Dict[int, Dict[str, Path]]:
    """Annotated ids in ``input_dir``: ``{id: {'xcf': path, 'png': path}}`` (either or both), ascending ids.

    Names are matched case-insensitively; ids are compared as numbers (``image_7`` and ``image_007`` clash).
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise AnnotationError(input_dir, 'input folder not found')
    found: Dict[int, Dict[str, Path]] = {}
    for p in sorted(input_dir.iterdir()):
        for kind, regex in (('xcf', _XCF_RE), ('png', _PNG_RE)):
            m = regex.match(p.name)
            if m and p.is_file():
                sample_id = int(m.group(1))
                entry = found.setdefault(sample_id, {})
                if kind in entry:
                    raise AnnotationError(p, f'id {sample_id} is annotated twice (also {entry[kind].name})')
                entry[kind] = p
    for sample_id, entry in found.items():
        stems = {_stem(p) for p in entry.values()}
        if len(stems) > 1:
            names = ' and '.join(p.name for p in entry.values())
            raise AnnotationError(input_dir, f'{names} give id {sample_id} different names; rename one')
    return dict(sorted(found.items()))


def _stem(annotation: Path) -> str:
    """``image_{id}`` as spelled in the annotation's file name."""
    m = _XCF_RE.match(annotation.name) or _PNG_RE.match(annotation.name)
    return annotation.name[:m.end(1)]


def _find_partner(input_dir: Path, stem: str, what: str, for_file: str) -> Path:
    wanted = {f'{stem}{ext}'.lower() for ext in _IMAGE_EXTS}
    hits = sorted(p for p in input_dir.iterdir() if p.name.lower() in wanted and p.is_file())
    if not hits:
        raise AnnotationError(input_dir / f'{stem}.jpg', f'missing ({what} for {for_file}; .jpeg or .png also '
                                                         'accepted)')
    if len(hits) > 1:
        raise AnnotationError(hits[0], f"ambiguous {what}: {', '.join(h.name for h in hits)} all exist; keep one")
    return hits[0]


def _open_image(path: Path) -> Tuple[Tuple[int, int], str, str]:
    """(size, mode, PIL format) of an image file, fully decoded once to catch truncation."""
    try:
        with PIL.Image.open(path) as im:
            im.load()
            return im.size, im.mode, im.format
    except (OSError, PIL.Image.DecompressionBombError, ValueError) as e:
        raise AnnotationError(path, f'cannot read image: {e}') from None


def _read_png_annotation(path: Path) -> np.ndarray:
    try:
        with PIL.Image.open(path) as im:
            im.load()
            if im.mode in ('RGBA', 'RGB', 'L', 'LA'):
                return np.asarray(im).copy()
            if im.mode == 'P' and 'transparency' in im.info:
                return np.asarray(im.convert('RGBA'))
            if im.mode in ('P', '1', 'I;16', 'I', 'CMYK', 'YCbCr'):
                return np.asarray(im.convert('RGB'))
            return np.asarray(im.convert('RGBA'))
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise AnnotationError(path, f'cannot read annotation image: {e}') from None


@dataclass
class _Item:
    id: int
    mask: np.ndarray
    annotation: Path
    checked: Optional[Path]
    image: Path
    image_format: str
    nir: Path
    nir_format: str
    nir_mode: str
    image_mode: str
    snapped: int


def _load_item(sample_id: int, files: Dict[str, Path], input_dir: Path, palette: Palette, snap: float, match: str,
               source: str) -> _Item:
    use = [k for k in ('png', 'xcf') if k in files and (source == 'auto' or source == k)]
    if not use:
        want = {'xcf': f'image_{sample_id}.xcf', 'png': f'image_{sample_id}_mask.png'}[source]
        raise AnnotationError(input_dir / want, f'missing (--source {source} was asked for id {sample_id})')
    masks = {}
    snapped = 0
    for kind in use:
        path = files[kind]
        try:
            rgba = flatten_xcf(path) if kind == 'xcf' else _read_png_annotation(path)
        except XcfError as e:
            raise AnnotationError(e.file, e.problem) from None
        masks[kind], n = map_to_classes(rgba, palette, str(path), snap=snap, match=match)
        snapped = max(snapped, n)
    if len(masks) == 2:
        a, b = masks['png'], masks['xcf']
        if a.shape != b.shape:
            raise AnnotationError(files['xcf'], f"is {b.shape[1]}x{b.shape[0]} but {files['png'].name} is "
                                                f"{a.shape[1]}x{a.shape[0]}; delete the stale one")
        diff = int((a != b).sum())
        if diff:
            raise AnnotationError(files['xcf'], f"and {files['png'].name} disagree on {diff} pixels; delete the stale "
                                                "one (or choose with --source xcf|png)")
    annotation = files[use[0]]
    checked = files[use[1]] if len(use) == 2 else None
    mask = masks[use[0]]

    stem = _stem(annotation)
    image = _find_partner(input_dir, stem, 'RGB image', annotation.name)
    nir = _find_partner(input_dir, f'{stem}_NIR', 'NIR image', annotation.name)
    size, image_mode, image_format = _open_image(image)
    nir_size, nir_mode, nir_format = _open_image(nir)
    if nir_size != size:
        raise AnnotationError(nir, f'is {nir_size[0]}x{nir_size[1]} but {image.name} is {size[0]}x{size[1]}')
    if (mask.shape[1], mask.shape[0]) != size:
        raise AnnotationError(annotation, f'mask is {mask.shape[1]}x{mask.shape[0]} but {image.name} is '
                                          f'{size[0]}x{size[1]}')
    return _Item(id=sample_id, mask=mask, annotation=annotation, checked=checked, image=image,
                 image_format=image_format, nir=nir, nir_format=nir_format, nir_mode=nir_mode,
                 image_mode=image_mode, snapped=snapped)


def _check_destination(output_dir: Path, input_dir: Path, overwrite: bool):
    out_abs, in_abs = output_dir.resolve(), input_dir.resolve()
    if out_abs == in_abs or out_abs in in_abs.parents:
        raise AnnotationError(output_dir, 'the output folder may not be the input folder or contain it')
    if output_dir.exists():
        if not output_dir.is_dir():
            raise AnnotationError(output_dir, 'exists and is not a folder')
        if any(output_dir.iterdir()) and not overwrite:
            raise AnnotationError(output_dir, 'already exists and is not empty; use --overwrite to replace it')


def _write_image(src: Path, src_format: str, dst: Path, fmt: str, mode: str):
    """Copy ``src`` byte for byte when it is already in ``fmt``, else convert it (``mode`` 'RGB' or 'L')."""
    want = 'JPEG' if fmt == 'jpg' else 'PNG'
    if src_format == want:
        with atomic_write(dst, 'wb') as f, open(src, 'rb') as g:
            shutil.copyfileobj(g, f)
        return True
    with PIL.Image.open(src) as im:
        im = im.convert(mode)
        with atomic_write(dst, 'wb') as f:
            im.save(f, format=want)
    return False


def import_annotations(input_dir, output_dir, palette: Union[str, os.PathLike, Palette] = 'ocular_4class',
                       latents=None, ids: Optional[Sequence[int]] = None, snap: float = 0,
                       image_format: str = 'jpg', source: str = 'auto', match: str = 'auto',
                       overwrite: bool = False) -> dict:
    """Turn a folder of annotations into the interpreter's training folder; returns the ``annotations.json`` dict.

    ``input_dir`` holds ``image_{id}.xcf`` and/or ``image_{id}_mask.png`` with ``image_{id}.jpg|png`` and
    ``image_{id}_NIR.jpg|png``. ``source``: ``'auto'`` reads the mask PNG when there is one (that is what the
    authors' notebook read) and, when the .xcf exists too, checks that both give the same classes (error if not);
    ``'xcf'`` or ``'png'`` reads only that kind. ``ids`` picks and orders the samples (default: all annotated ids,
    ascending). Output k = 0..N-1: ``image_mask{k}.npy`` (uint8 [H, W]), ``image_{k}.{image_format}``,
    ``image_{k}_NIR.{image_format}`` (byte copies when the source is already in that format), ``annotations.json``,
    and with ``latents`` (an .npy [num_samples, z_dim], row = sample id) ``latent_stylegan.npy`` holding rows ``ids``
    in order, dtype kept. Everything is validated first and written into a temporary folder that is renamed to
    ``output_dir`` at the end; an existing non-empty ``output_dir`` is replaced only with ``overwrite``.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if image_format not in ('jpg', 'png'):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if source not in ('auto', 'xcf', 'png'):
        raise ValueError(f"source must be 'auto', 'xcf' or 'png', got {source!r}")
    palette = load_palette(palette)
    found = find_annotations(input_dir)
    if not found:
        raise AnnotationError(input_dir, 'no annotations found (expected image_{id}.xcf or image_{id}_mask.png)')
    if ids is None:
        order = list(found)
    else:
        order = [int(i) for i in ids]
        if not order:
            raise AnnotationError(input_dir, 'the list of ids is empty')
        dup = sorted({i for i in order if order.count(i) > 1})
        if dup:
            raise AnnotationError(input_dir, f'id {dup[0]} is listed more than once in ids')
        for i in order:
            if i not in found:
                raise AnnotationError(input_dir / f'image_{i}_mask.png',
                                      f'no annotation for id {i} (expected image_{i}.xcf or image_{i}_mask.png)')
    _check_destination(output_dir, input_dir, overwrite)

    latent_rows = None
    if latents is not None:
        latents = Path(latents)
        try:
            lat = np.load(latents, allow_pickle=False)
        except FileNotFoundError:
            raise AnnotationError(latents, 'latent file not found') from None
        except (OSError, ValueError) as e:
            raise AnnotationError(latents, f'cannot read as .npy: {e}') from None
        if lat.ndim != 2:
            raise AnnotationError(latents, f'latents must have shape [num_samples, z_dim], got {list(lat.shape)}')
        too_big = [i for i in order if i >= lat.shape[0]]
        if too_big:
            raise AnnotationError(latents, f'has {lat.shape[0]} rows, so there is no latent for id {too_big[0]}')
        latent_rows = lat[order]

    items = [_load_item(i, found[i], input_dir, palette, snap, match, source) for i in order]
    shape = items[0].mask.shape
    for it in items[1:]:
        if it.mask.shape != shape:
            raise AnnotationError(it.annotation, f'is {it.mask.shape[1]}x{it.mask.shape[0]} but '
                                                 f'{items[0].annotation.name} is {shape[1]}x{shape[0]}; all '
                                                 'annotated images must have one size')

    # Everything goes into a temporary folder beside the output that replaces it only once complete.
    output_dir = Path(os.path.abspath(output_dir))
    with dnnlib.util.staged_folder(output_dir) as stage:
        tmp = Path(stage)
        records = []
        for k, it in enumerate(items):
            with atomic_write(tmp / f'image_mask{k}.npy', 'wb') as f:
                np.save(f, it.mask)
            img_name, nir_name = f'image_{k}.{image_format}', f'image_{k}_NIR.{image_format}'
            img_copied = _write_image(it.image, it.image_format, tmp / img_name, image_format, 'RGB')
            nir_copied = _write_image(it.nir, it.nir_format, tmp / nir_name, image_format, 'L')
            counts = np.bincount(it.mask.reshape(-1), minlength=256)
            records.append({
                'index': k,
                'id': it.id,
                'mask': f'image_mask{k}.npy',
                'image': img_name,
                'nir': nir_name,
                'sources': {
                    'annotation': it.annotation.name,
                    'checked_against': it.checked.name if it.checked else None,
                    'image': it.image.name,
                    'nir': it.nir.name,
                },
                'image_copied': img_copied,
                'nir_copied': nir_copied,
                'snapped_pixels': it.snapped,
                'class_counts': {str(c.id): int(counts[c.id]) for c in palette.classes},
            })
        summary = {
            'input_dir': str(input_dir.resolve()),
            'palette': palette.to_json(),
            'num_classes': palette.num_classes,
            'snap': snap,
            'match': match,
            'source': source,
            'ids': order,
            'items': records,
            'latents': None,
        }
        if latent_rows is not None:
            with atomic_write(tmp / 'latent_stylegan.npy', 'wb') as f:
                np.save(f, latent_rows)
            summary['latents'] = {'file': 'latent_stylegan.npy', 'source': str(latents.resolve()), 'rows': order,
                                  'shape': list(latent_rows.shape), 'dtype': str(latent_rows.dtype)}
        with atomic_write(tmp / 'annotations.json', 'w', encoding='utf-8') as f:
            json.dump(summary, f, indent=1)
            f.write('\n')
    summary['output_dir'] = str(output_dir)
    return summary
