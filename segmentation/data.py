"""Segmentation datasets: aligned RGB + NIR pairs with class-index masks, from any of the project's folders.

``find_samples(path)`` (and so ``SegmentationSet``) recognises, in this order:

* a **generated dataset** (``train_interpreter.py --generate_data`` output): its ``kept.jsonl`` (the samples that
  passed the uncertainty filter) unless ``all_samples``; without ``kept.jsonl``, its ``metadata-*.jsonl`` shards;
* a **privacy-filter output** (``apf_filter.py --outdir``): ``metadata.jsonl`` (copied samples) or
  ``accepted.jsonl`` (``--manifest-only``, paths into the generated folder);
* an **annotation folder** (``prepare_annotations.py`` output, e.g. ``eyes_processed``): ``image_mask{k}.npy`` with
  ``image_{k}.*`` and ``image_{k}_NIR.*``, i.e. the few annotated pairs the mask generator was trained on;
* a **paired dataset** with ``masks/`` (``images/`` or ``RGB/``, ``NIR/``, ``masks/``; a folder or a zip).

Every file is checked (exists, decodes as the right kind, one size for all) before any training starts; problems are
``DatasetError``: one line naming the file. Items are uint8 images ``[C, H, W]`` (``rgb``: 3, ``nir``: 1,
``rgbnir``: 4 = R, G, B, NIR) and int64 masks ``[H, W]``; small sets are decoded once and kept in memory.
"""

import glob
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional

import numpy as np
import PIL.Image
import torch

import dnnlib.util
from training.image_pairs import DatasetError, PairedFiles

INPUTS = {'rgb': 3, 'nir': 1, 'rgbnir': 4}
PRELOAD_LIMIT = 2 << 30  # decode everything up front when the set fits in this many bytes


def input_channels(modality: str) -> int:
    if modality not in INPUTS:
        raise ValueError(f'input must be one of {", ".join(INPUTS)}, got {modality!r}')
    return INPUTS[modality]


@dataclass
class Sample:
    name: str
    load_rgb: Callable[[], np.ndarray]  # [H, W, 3] uint8
    load_nir: Callable[[], np.ndarray]  # [H, W] uint8
    load_mask: Callable[[], np.ndarray]  # [H, W] int64
    mask_file: str


# ------------------------------------------------------------------------------------------------ plain files


def _read_image(path, kind):
    """``kind`` 'rgb' -> [H, W, 3], 'nir' -> [H, W] (a grey RGB file is accepted), 'mask' -> [H, W] int64."""
    if not os.path.isfile(path):
        raise DatasetError(path, f'{kind} file not found')
    if path.lower().endswith('.npy'):
        if kind != 'mask':
            raise DatasetError(path, f'a .npy file cannot be the {kind} image')
        try:
            mask = np.load(path, allow_pickle=False)
        except Exception as e:
            raise DatasetError(path, f'cannot be read as a .npy array ({e})') from None
        mask = np.squeeze(mask)
        if mask.ndim != 2 or mask.dtype.kind not in 'iub':
            raise DatasetError(path, f'holds a {mask.dtype} array of shape {list(mask.shape)}; a mask must be a 2-D '
                                     f'integer array')
        return mask.astype(np.int64)
    try:
        with PIL.Image.open(path) as img:
            img.load()
            mode = img.mode
            if kind == 'rgb':
                if mode not in ('RGB', 'RGBA', 'L', 'P'):
                    raise DatasetError(path, f'has pixel mode {mode}; expected an RGB image')
                return np.asarray(img.convert('RGB'))
            if kind == 'nir':
                array = np.asarray(img.convert('RGB') if mode not in ('L', 'RGB') else img)
                if array.ndim == 3:
                    if int((array.max(axis=2).astype(np.int16) - array.min(axis=2)).max()) > 2:
                        raise DatasetError(path, 'is a colour image; an NIR image must be single-channel grey')
                    array = array[..., 0]
                return np.ascontiguousarray(array)
            if mode not in ('L', 'P', 'I', 'I;16'):
                raise DatasetError(path, f'has pixel mode {mode}; a mask must be a class-index image (mode L or P) '
                                         f'or a .npy integer array')
            return np.asarray(img).astype(np.int64)
    except DatasetError:
        raise
    except Exception as e:  # PIL raises many types for broken files
        raise DatasetError(path, f'cannot be decoded as an image ({e})') from None


def _file_sample(name, rgb, nir, mask):
    return Sample(name=name, load_rgb=lambda: _read_image(rgb, 'rgb'), load_nir=lambda: _read_image(nir, 'nir'),
                  load_mask=lambda: _read_image(mask, 'mask'), mask_file=mask)


def _read_jsonl(path):
    return [entry for _, entry in dnnlib.util.read_jsonl(path, DatasetError)]


def _entry_sample(root, entry, where):
    """A sample from a JSON entry's ``rgb``, ``nir`` and ``mask`` paths (relative to ``root`` or absolute)."""
    paths = [os.path.join(root, entry[k]) for k in ('rgb', 'nir', 'mask')]
    for kind, path in zip(('RGB', 'NIR', 'mask'), paths):
        if not os.path.isfile(path):
            raise DatasetError(path, f'{kind} file of {where} not found')
    return _file_sample(os.path.splitext(os.path.basename(entry['rgb']))[0], *paths)


def read_mask(path):
    """A class-index mask (PNG of mode L/P/I or a .npy integer array) as int64 [H, W]; ``DatasetError`` otherwise."""
    return _read_image(path, 'mask')


def _manifest_samples(root, manifest):
    """Samples named by JSON lines with ``rgb``, ``nir`` and ``mask`` paths (relative to ``root`` or absolute)."""
    samples = []
    for n, entry in enumerate(_read_jsonl(manifest), 1):
        missing = [k for k in ('rgb', 'nir') if k not in entry]
        if missing:
            raise DatasetError(manifest, f'line {n} has no {missing[0]!r} path')
        if 'mask' not in entry:
            raise DatasetError(manifest, f'line {n} has no mask: this dataset has no masks to train or test on')
        samples.append(_entry_sample(root, entry, f'{manifest} line {n}'))
    if not samples:
        raise DatasetError(manifest, 'lists no samples')
    return samples


def _generated_manifest(path):
    from interpreter.generate import finished_samples

    entries = sorted(finished_samples(path).values(), key=lambda e: e['index'])
    if not entries:
        raise DatasetError(path, 'holds metadata-*.jsonl files but no finished sample')
    temp = os.path.join(path, 'metadata-*.jsonl')
    samples = []
    for entry in entries:
        if 'mask' not in entry:
            raise DatasetError(temp, f'sample {entry["index"]} has no mask')
        samples.append(_entry_sample(path, entry, f'generated sample {entry["index"]}'))
    return samples


_ANNOTATION_MASK = re.compile(r'^image_mask(\d+)\.npy$')


def _annotation_samples(path):
    """``prepare_annotations.py`` output: ``image_mask{k}.npy``, ``image_{k}.<ext>``, ``image_{k}_NIR.<ext>``."""
    ids = sorted(int(m.group(1)) for m in (_ANNOTATION_MASK.match(n) for n in os.listdir(path)) if m)
    samples = []
    for k in ids:
        found = {}
        for kind, stem in (('RGB', f'image_{k}'), ('NIR', f'image_{k}_NIR')):
            files = [f for f in glob.glob(os.path.join(glob.escape(path), stem + '.*')) if not f.endswith('.npy')]
            if not files:
                raise DatasetError(os.path.join(path, f'image_mask{k}.npy'), f'has no {kind} image {stem}.png/.jpg '
                                                                           f'beside it')
            found[kind] = sorted(files)[0]
        samples.append(_file_sample(f'image_{k}', found['RGB'], found['NIR'],
                                    os.path.join(path, f'image_mask{k}.npy')))
    return samples


def _paired_samples(path):
    files = PairedFiles(path, masks=True)
    if not files.has_masks:  # masks=True raises when the folder is missing; keep the message for an empty one too
        raise DatasetError(files.display('masks'), 'no masks found; a segmentation dataset needs masks/')
    return [Sample(name=os.path.splitext(files.rgb_names[i])[0], load_rgb=lambda i=i: files.load_rgb(i),
                   load_nir=lambda i=i: files.load_nir(i), load_mask=lambda i=i: files.load_mask(i),
                   mask_file=files.display_mask(i)) for i in range(len(files))]


def find_samples(path, all_samples=False):
    """``(kind, samples)`` for a dataset folder (see the module docstring for the kinds recognised)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DatasetError(path, 'no such file or directory')
    if os.path.isdir(path):
        if glob.glob(os.path.join(glob.escape(path), 'metadata-*.jsonl')):
            kept = os.path.join(path, 'kept.jsonl')
            if os.path.isfile(kept) and not all_samples:
                return 'generated (kept.jsonl)', _manifest_samples(path, kept)
            return 'generated', _generated_manifest(path)
        for manifest, kind in (('metadata.jsonl', 'privacy-filtered'), ('accepted.jsonl', 'privacy-filtered manifest')):
            if os.path.isfile(os.path.join(path, manifest)):
                return kind, _manifest_samples(path, os.path.join(path, manifest))
        if any(_ANNOTATION_MASK.match(n) for n in os.listdir(path)):
            return 'annotations', _annotation_samples(path)
    return 'paired', _paired_samples(path)


def read_class_names(path) -> Optional[List[str]]:
    """Class names from ``classes.json`` (``{"classes": [...]}``, written by ``dataset_tool.py demo``) in the
    dataset folder, or None."""
    if not os.path.isdir(path):
        return None
    file = os.path.join(path, 'classes.json')
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            names = json.load(f)['classes']
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetError(file, f'is not a {{"classes": [names]}} file ({e})') from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(file, '"classes" must be a list of names')
    return names


# ------------------------------------------------------------------------------------------------ the dataset


def stack_input(rgb, nir, modality):
    """uint8 [H, W, 3] + [H, W] -> uint8 [C, H, W] for the input modality."""
    if modality == 'rgb':
        return np.ascontiguousarray(rgb.transpose(2, 0, 1))
    if modality == 'nir':
        return np.ascontiguousarray(nir[None])
    return np.ascontiguousarray(np.concatenate([rgb.transpose(2, 0, 1), nir[None]], axis=0))


class SegmentationSet(torch.utils.data.Dataset):
    """The validated samples of one folder; ``ds[i]`` is ``(image uint8 [C, H, W], mask int64 [H, W])``.

    ``class_map``: optional int64 lookup table applied to every mask value (see ``classmap.ClassMap``); ``resolution``
    (optional) is checked against the images. Opening checks every sample (decodes it), so problems surface first.
    """

    def __init__(self, path, modality='rgbnir', all_samples=False, preload=None, class_map=None, progress=False,
                 resolution=None):
        self.path = os.fspath(path)
        self.modality = modality
        self.channels = input_channels(modality)
        self.kind, self.samples = find_samples(self.path, all_samples=all_samples)
        self.class_names = read_class_names(self.path)
        self.class_map = class_map
        self._cache = None
        first = self._load(0)
        self.shape = tuple(first[0].shape[1:])
        if resolution is not None and self.shape != (resolution, resolution):
            raise DatasetError(self.samples[0].mask_file, f'is {self.shape[1]}x{self.shape[0]}, expected '
                                                          f'{resolution}x{resolution}')
        nbytes = len(self.samples) * (self.channels + 1) * self.shape[0] * self.shape[1]
        if preload is None:
            preload = nbytes <= PRELOAD_LIMIT
        items = range(len(self.samples))
        if progress:
            from tqdm import tqdm
            items = tqdm(items, desc=f'checking {os.path.basename(self.path.rstrip("/"))}', unit='pair',
                         dynamic_ncols=True, leave=False, disable=None)
        cache = []
        self.max_label = 0
        for i in items:
            x, m = first if i == 0 else self._load(i)
            if tuple(x.shape[1:]) != self.shape:
                raise DatasetError(self.samples[i].mask_file, f'is {x.shape[2]}x{x.shape[1]}, but '
                                                              f'{self.samples[0].mask_file} is '
                                                              f'{self.shape[1]}x{self.shape[0]}; all pairs must '
                                                              f'have one size')
            self.max_label = max(self.max_label, int(m.max()))
            if preload:
                cache.append((x, m))
        self._cache = cache if preload else None
        self.names = [s.name for s in self.samples]

    def _load(self, i):
        s = self.samples[i]
        rgb, nir, mask = s.load_rgb(), s.load_nir(), s.load_mask()
        if rgb.shape[:2] != nir.shape or mask.shape != nir.shape:
            raise DatasetError(s.mask_file, f'is {mask.shape[1]}x{mask.shape[0]} but its RGB image is '
                                            f'{rgb.shape[1]}x{rgb.shape[0]} and its NIR image '
                                            f'{nir.shape[1]}x{nir.shape[0]}')
        if mask.min() < 0:
            raise DatasetError(s.mask_file, f'holds the negative class {int(mask.min())}')
        if self.class_map is not None:
            mask = self.class_map.apply(mask, s.mask_file)
        return stack_input(rgb, nir, self.modality), mask

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        x, m = self._cache[i] if self._cache is not None else self._load(i)
        return torch.from_numpy(x), torch.from_numpy(m)

    def class_counts(self, num_classes, ignore_index=255):
        """Pixels per class over the whole set (int64 [num_classes])."""
        counts = np.zeros(num_classes, np.int64)
        for i in range(len(self)):
            m = self[i][1].numpy().ravel()
            m = m[m != ignore_index]
            counts += np.bincount(m, minlength=num_classes)[:num_classes]
        return counts

    def labels_present(self, ignore_index=255):
        """Every mask value that occurs, with the first mask file holding it: ``{value: file}``."""
        found = {}
        for i in range(len(self)):
            for v in np.unique(self[i][1].numpy()):
                v = int(v)
                if v != ignore_index and v not in found:
                    found[v] = self.samples[i].mask_file
        return found


def split_indices(n, val_fraction, seed):
    """Deterministic (train, val) index split: ``round(n * val_fraction)`` validation samples (at least 1 when the
    fraction is positive and n > 1), chosen by ``seed``."""
    order = np.random.RandomState(seed).permutation(n)
    n_val = 0 if val_fraction <= 0 else min(n - 1, max(1, int(round(n * val_fraction))))
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())
