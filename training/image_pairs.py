"""Paired RGB + NIR datasets: finding, pairing, validating and loading them.

Layout (as in BiOcularGAN / BiFaceGAN)::

    <root>/images/**/name.png    RGB (``RGB/`` is accepted instead of ``images/``)
    <root>/NIR/**/name.png       NIR, one grey channel
    <root>/masks/**/name.png     optional class-index masks (mode L/P PNGs or integer .npy arrays)
    <root>/dataset.json          optional labels, upstream format (also accepted inside images/)

``path`` may name ``<root>``, the RGB folder itself (the originals' convention: the NIR and mask folders are its
siblings) or a ``.zip`` holding the same tree. Files are found recursively and a pair is matched by its relative
path without the extension (``a/x.png`` pairs with ``a/x.jpg``), never by sorted position. Every problem is found
in the constructor, before any training starts, and raised as a one-line ``DatasetError`` naming the file.

This module is torch-free, so ``dataset_tool.py`` (which uses ``PairedImages``) starts in a fraction of a second;
``training.dataset.PairedImageDataset`` is the ``torch.utils.data.Dataset`` built on it for training and metrics.
"""

import contextlib
import io
import json
import os
import typing
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import PIL.Image

import dnnlib

# ---------------------------------------------------------------------------------------------------------------------
# Errors


class DatasetError(dnnlib.util.FileError):
    """Bad dataset input. ``str(e)`` is one line: ``<file>: <problem>``; ``e.file`` and ``e.problem`` hold the parts."""


# ---------------------------------------------------------------------------------------------------------------------
# File names

NIR_GREY_TOLERANCE = 2  # A 3-channel NIR file counts as grey when its channels differ by at most this many levels.
RGB_FOLDER_NAMES = ('images', 'RGB')  # Names of the RGB folder inside a dataset root or zip, first match wins.
NIR_FOLDER_NAME = 'NIR'
MASK_FOLDER_NAME = 'masks'


def image_extensions() -> typing.FrozenSet[str]:
    """Lower-case file extensions (with the dot) that PIL can open, as upstream's dataset uses."""
    PIL.Image.init()
    return frozenset(ext.lower() for ext in PIL.Image.EXTENSION)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith('.') for part in rel.split('/'))


def _pair_key(rel: str) -> str:
    """Relative path without its extension: the name that pairs RGB, NIR and mask files."""
    return str(PurePosixPath(rel).with_suffix(''))


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _list_names(names, limit=3) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


# ---------------------------------------------------------------------------------------------------------------------
# Storage: a folder tree or a zip archive, addressed by '/'-separated paths relative to the dataset root.


class _FolderStorage:
    def __init__(self, root: Path):
        self.root = root

    def display(self, rel: str = '') -> str:
        return str(self.root / rel) if rel else str(self.root)

    def is_dir(self, rel: str) -> bool:
        return (self.root / rel).is_dir()

    def is_file(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def files_under(self, rel: str) -> typing.List[str]:
        """All non-hidden files below folder ``rel``, as paths relative to that folder, sorted."""
        top = self.root / rel
        found = []
        for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith('.')]
            sub = Path(dirpath).relative_to(top).as_posix()
            for fname in filenames:
                if not fname.startswith('.'):
                    found.append(fname if sub == '.' else f'{sub}/{fname}')
        return sorted(found)

    def open(self, rel: str):
        return open(self.root / rel, 'rb')

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class _ZipStorage:
    """Members of a zip under an optional top folder; the handle is opened lazily, once per process."""

    def __init__(self, zip_path: Path):
        self.zip_path = zip_path
        self.prefix = ''
        self._zip = None
        self._zip_pid = None
        try:
            members = [n.replace('\\', '/') for n in self._handle().namelist()]
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(zip_path, f'cannot be read as a zip archive ({e})') from None
        self._members = sorted(n for n in members if not n.endswith('/'))
        # A zip made with `zip -r data.zip data/` wraps everything in one top folder: look inside it.
        tops = {n.split('/', 1)[0] for n in self._members if '/' in n and not _is_hidden(n)} - {'__MACOSX'}
        has_rgb = any(n.startswith(f'{f}/') for n in self._members for f in RGB_FOLDER_NAMES)
        if not has_rgb and len(tops) == 1:
            self.prefix = tops.pop() + '/'

    def _handle(self) -> zipfile.ZipFile:
        if self._zip is None or self._zip_pid != os.getpid():  # Never share a handle with a forked worker.
            self._zip = zipfile.ZipFile(self.zip_path)
            self._zip_pid = os.getpid()
        return self._zip

    def close(self):
        if self._zip is not None and self._zip_pid == os.getpid():
            self._zip.close()
        self._zip = None

    def __getstate__(self):
        return dict(self.__dict__, _zip=None, _zip_pid=None)

    def display(self, rel: str = '') -> str:
        return f'{self.zip_path}/{self.prefix}{rel}' if rel or self.prefix else str(self.zip_path)

    def is_dir(self, rel: str) -> bool:
        start = f'{self.prefix}{rel}/'
        return any(n.startswith(start) for n in self._members)

    def is_file(self, rel: str) -> bool:
        return f'{self.prefix}{rel}' in self._members

    def files_under(self, rel: str) -> typing.List[str]:
        start = f'{self.prefix}{rel}/'
        return [n[len(start):] for n in self._members if n.startswith(start) and not _is_hidden(n[len(start):])]

    def open(self, rel: str):
        return self._handle().open(f'{self.prefix}{rel}')

    def read(self, rel: str) -> bytes:
        return self._handle().read(f'{self.prefix}{rel}')


# ---------------------------------------------------------------------------------------------------------------------
# Pixel conversion rules, shared by the validation and the loading so that they can never disagree.

_RGB_MODES = {'RGB', 'L', 'P'}  # L is repeated to 3 channels, P is converted to RGB
_NIR_MODES = {'L', 'RGB', 'P'}  # RGB and P must hold a grey image; they are reduced to 1 channel
_MASK_MODES = {'L', 'P', '1', 'I', 'I;16', 'I;16B', 'I;16L'}


def _mode_problem(mode: str, what: str) -> str:
    if mode in ('RGBA', 'LA', 'PA', 'La', 'RGBa'):
        return f'has an alpha channel (mode {mode}); save the {what} image without alpha'
    if mode.startswith('I') or mode == 'F':
        return f'is a 16/32-bit image (mode {mode}); {what} images must be 8-bit'
    return f'has unsupported pixel mode {mode}; {what} images must be 8-bit RGB or greyscale'


def _grey_spread(rgb: np.ndarray) -> int:
    """Largest difference between the channels of an HxWx3 uint8 array (0 for a perfectly grey image)."""
    a = rgb.astype(np.int16)
    return int(max(np.abs(a[..., 0] - a[..., 1]).max(), np.abs(a[..., 1] - a[..., 2]).max(), 0))


def _nir_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Reduce a grey 3-channel NIR array to one channel (rounded channel mean; exact for identical channels)."""
    return ((rgb.astype(np.uint16).sum(axis=2) + 1) // 3).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# PairedFiles: layout, pairing, per-file validation and loading, without geometric requirements on the set.


class PairedFiles:
    """The pairs of a dataset, validated file by file (no requirement that all pairs share one size).

    ``masks``: False (ignore any masks folder), True (required: a mask for every pair) or 'auto' (load when the
    masks folder exists). ``labels``: False (ignore dataset.json), True (when a dataset.json with labels exists,
    every pair must have one) or 'auto' (read what is there; a pair without a label gets None).
    ``PairedImages`` and ``convert_dataset`` build on it. Raises DatasetError on any problem.
    """

    def __init__(self, path, masks=False, labels=False):
        if masks not in (False, True, 'auto') or labels not in (False, True, 'auto'):
            raise ValueError("masks and labels must each be False, True or 'auto'")
        self.path = os.fspath(path)
        self._storage, self.rgb_dir, self.root_name = self._open_layout(Path(self.path))
        self.keys, self.rgb_names, self.nir_names = self._find_pairs()
        self.raw_names = self.rgb_names
        self.mask_folder_found = self._storage.is_dir(MASK_FOLDER_NAME)
        self.mask_names = self._find_masks(masks) if masks else None
        self._probe_images()
        # labels: one entry per pair (None where missing), or None when there are no labels.
        self.label_file, self.labels = self._load_labels(required=(labels is True)) if labels else (None, None)
        self.classes = self._load_classes()

    # ----------------------------------------------------------------------------------------------------- layout

    @staticmethod
    def _open_layout(p: Path):
        """(storage, RGB folder relative to the storage root, dataset name) for a user-given path."""
        if p.name in ('', '.', '..'):
            p = Path(os.path.abspath(p))
        if not p.exists():
            raise DatasetError(p, 'no such file or directory')
        if p.is_file():
            if p.suffix.lower() != '.zip':
                raise DatasetError(p, 'is a file but not a .zip; give a dataset folder, its RGB folder or a .zip')
            storage = _ZipStorage(p)
            for name in RGB_FOLDER_NAMES:
                if storage.is_dir(name):
                    return storage, name, p.stem
            if storage.is_dir(NIR_FOLDER_NAME):
                raise DatasetError(p, 'holds NIR/ but no images/ folder')
            raise DatasetError(p, 'holds no images/ and NIR/ folders')
        for name in RGB_FOLDER_NAMES:
            if (p / name).is_dir():
                return _FolderStorage(p), name, p.name
        if (p / NIR_FOLDER_NAME).is_dir():
            raise DatasetError(p, 'holds NIR/ but no images/ folder')
        if p.name in (NIR_FOLDER_NAME, MASK_FOLDER_NAME):
            raise DatasetError(p, f'is the {p.name} folder; give the RGB folder or the folder holding images/')
        # The RGB folder itself: NIR/ and masks/ are its siblings.
        return _FolderStorage(p.parent), p.name, (p.parent.name or p.name)

    def _files_in(self, folder, exts) -> typing.List[str]:
        """Files under ``folder`` (recursively, relative to it) whose extension is one of ``exts``."""
        return [n for n in self._storage.files_under(folder) if PurePosixPath(n).suffix.lower() in exts]

    def _find_pairs(self):
        """(keys, RGB names, NIR names), one entry per pair, in the order of the sorted RGB file names."""
        storage = self._storage
        exts = image_extensions()
        rgb_files = self._files_in(self.rgb_dir, exts)
        if not rgb_files:
            raise DatasetError(storage.display(self.rgb_dir),
                               'no image files found (searched recursively for PNG, JPEG, ... files)')
        rgb_by_key = self._index(rgb_files, self.rgb_dir)
        if not storage.is_dir(NIR_FOLDER_NAME):
            raise DatasetError(storage.display(NIR_FOLDER_NAME),
                               f'NIR folder not found; it must sit beside the RGB folder {self.rgb_dir}/')
        nir_by_key = self._index(self._files_in(NIR_FOLDER_NAME, exts), NIR_FOLDER_NAME)
        self._check_partners(rgb_by_key, nir_by_key, self.rgb_dir, NIR_FOLDER_NAME, 'NIR')
        keys = list(rgb_by_key)  # Dicts keep insertion order, so this is the RGB files' order.
        return keys, [rgb_by_key[k] for k in keys], [nir_by_key[k] for k in keys]

    def _find_masks(self, masks):
        """Mask names matched to the pairs; None when ``masks`` is 'auto' and there is no masks folder."""
        if not self.mask_folder_found:
            if masks is True:
                raise DatasetError(self._storage.display(MASK_FOLDER_NAME),
                                   'masks were requested but the folder does not exist')
            return None
        mask_by_key = self._index(self._files_in(MASK_FOLDER_NAME, image_extensions() | {'.npy'}), MASK_FOLDER_NAME)
        self._check_partners(dict(zip(self.keys, self.rgb_names)), mask_by_key, self.rgb_dir, MASK_FOLDER_NAME,
                             'mask')
        return [mask_by_key[k] for k in self.keys]

    def _index(self, files, folder) -> dict:
        by_key = {}
        for rel in files:
            key = _pair_key(rel)
            if key in by_key:
                raise DatasetError(self._storage.display(f'{folder}/{rel}'),
                                   f'has the same name as {by_key[key]} apart from the extension; pairs are '
                                   f'matched by name, so keep only one of them')
            by_key[key] = rel
        return by_key

    def _check_partners(self, rgb_by_key, other_by_key, rgb_dir, other_dir, what):
        lonely_rgb = [rgb_by_key[k] for k in rgb_by_key if k not in other_by_key]
        lonely_other = [other_by_key[k] for k in other_by_key if k not in rgb_by_key]
        if lonely_rgb:
            also = f'; and {len(lonely_other)} {what} file(s) have no RGB partner' if lonely_other else ''
            raise DatasetError(self._storage.display(f'{rgb_dir}/{lonely_rgb[0]}'),
                               f'has no {what} partner in {other_dir}/ ({len(lonely_rgb)} RGB file(s) lack one: '
                               f'{_list_names(lonely_rgb)}){also}')
        if lonely_other:
            raise DatasetError(self._storage.display(f'{other_dir}/{lonely_other[0]}'),
                               f'has no RGB partner in {rgb_dir}/ ({len(lonely_other)} {what} file(s) lack one: '
                               f'{_list_names(lonely_other)})')

    # ----------------------------------------------------------------------------------------------------- names

    def __len__(self):
        return len(self.keys)

    @property
    def has_masks(self) -> bool:
        return self.mask_names is not None

    def rgb_file(self, i):
        return f'{self.rgb_dir}/{self.rgb_names[i]}'

    def nir_file(self, i):
        return f'{NIR_FOLDER_NAME}/{self.nir_names[i]}'

    def mask_file(self, i):
        return f'{MASK_FOLDER_NAME}/{self.mask_names[i]}'

    def display_rgb(self, i):
        return self._storage.display(self.rgb_file(i))

    def display_nir(self, i):
        return self._storage.display(self.nir_file(i))

    def display_mask(self, i):
        return self._storage.display(self.mask_file(i))

    def display(self, rel=''):
        return self._storage.display(rel)

    # ----------------------------------------------------------------------------------------------------- reading

    def _probe(self, rel):
        """(size, mode) from the image header; the pixels are not decoded."""
        try:
            with self._storage.open(rel) as f, PIL.Image.open(f) as img:
                return tuple(img.size), img.mode
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, struct.error, ...).
            raise DatasetError(self._storage.display(rel), f'cannot be opened as an image ({_why(e)})') from None

    def _probe_images(self):
        """Check that every file opens, has a usable mode and matches its partner's size; sets sizes and modes."""
        n = len(self.keys)
        self.sizes = np.zeros([n, 2], dtype=np.int64)  # (width, height) of each pair
        self.rgb_modes = []
        self.nir_modes = []
        for i in range(n):
            w_h, mode = self._probe_rgb(i)
            self.sizes[i] = w_h  # Before the NIR check, which may decode the NIR pixels at this size.
            self.rgb_modes.append(mode)
            self.nir_modes.append(self._probe_nir(i, w_h))
            if self.mask_names is not None:
                self._probe_mask(i, w_h)
        self.num_grey_rgb = sum(mode == 'L' for mode in self.rgb_modes)
        self.num_rgb_nir = sum(mode != 'L' for mode in self.nir_modes)

    def _probe_rgb(self, i):
        """(size, mode) of pair ``i``'s RGB file."""
        w_h, mode = self._probe(self.rgb_file(i))
        if mode not in _RGB_MODES:
            raise DatasetError(self.display_rgb(i), _mode_problem(mode, 'RGB'))
        return w_h, mode

    def _probe_nir(self, i, w_h):
        """Mode of pair ``i``'s NIR file, which must be ``w_h`` in size and grey."""
        nir_size, nir_mode = self._probe(self.nir_file(i))
        if nir_mode not in _NIR_MODES:
            raise DatasetError(self.display_nir(i), _mode_problem(nir_mode, 'NIR'))
        if nir_size != w_h:
            raise DatasetError(self.display_nir(i), f'is {nir_size[0]}x{nir_size[1]} but its RGB partner '
                                                    f'{self.display_rgb(i)} is {w_h[0]}x{w_h[1]}')
        if nir_mode != 'L':  # Three channels: they must carry one grey value (checked on the pixels).
            self._load_nir_array(i)
        return nir_mode

    def _decode(self, rel, expected_size=None) -> PIL.Image.Image:
        try:
            with self._storage.open(rel) as f, PIL.Image.open(f) as img:
                img.load()
                out = img.copy() if img.mode != 'P' else img.convert('RGB')
        except Exception as e:
            raise DatasetError(self._storage.display(rel), f'cannot be decoded ({_why(e)})') from None
        if expected_size is not None and tuple(out.size) != tuple(expected_size):
            raise DatasetError(self._storage.display(rel), f'changed size to {out.size[0]}x{out.size[1]} since the '
                                                           f'dataset was opened')
        return out

    def _probe_mask(self, i, w_h):
        rel = self.mask_file(i)
        if rel.lower().endswith('.npy'):
            shape, dtype = self._npy_header(rel)
            if len(shape) != 2 or dtype.kind not in 'iub':
                raise DatasetError(self.display_mask(i), f'holds a {dtype} array of shape {list(shape)}; a mask must '
                                                         f'be a 2-D integer array')
            size = (shape[1], shape[0])
        else:
            size, mode = self._probe(rel)
            if mode not in _MASK_MODES:
                raise DatasetError(self.display_mask(i), f'has pixel mode {mode}; a mask must be a class-index image '
                                                         f'(mode L or P) or a .npy integer array')
        if tuple(size) != tuple(w_h):
            raise DatasetError(self.display_mask(i), f'is {size[0]}x{size[1]} but its RGB partner '
                                                     f'{self.display_rgb(i)} is {w_h[0]}x{w_h[1]}')

    def _npy_header(self, rel):
        try:
            with self._storage.open(rel) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            return shape, dtype
        except Exception as e:
            raise DatasetError(self._storage.display(rel), f'cannot be read as a .npy array ({_why(e)})') from None

    def load_rgb(self, i) -> np.ndarray:
        """RGB pixels of pair ``i`` as HxWx3 uint8 (grey files are repeated to three channels)."""
        img = self._decode(self.rgb_file(i), self.sizes[i])
        if img.mode == 'L':
            return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)
        if img.mode != 'RGB':
            raise DatasetError(self.display_rgb(i), _mode_problem(img.mode, 'RGB'))
        return np.asarray(img)

    def _load_nir_array(self, i) -> np.ndarray:
        img = self._decode(self.nir_file(i), self.sizes[i])
        if img.mode == 'L':
            return np.asarray(img)
        if img.mode != 'RGB':
            raise DatasetError(self.display_nir(i), _mode_problem(img.mode, 'NIR'))
        rgb = np.asarray(img)
        spread = _grey_spread(rgb)
        if spread > NIR_GREY_TOLERANCE:
            raise DatasetError(self.display_nir(i), f'is a colour image (its channels differ by up to {spread} '
                                                    f'levels); NIR images must be single-channel grey')
        return _nir_from_rgb(rgb)

    def load_nir(self, i) -> np.ndarray:
        """NIR pixels of pair ``i`` as HxW uint8 (grey 3-channel files are reduced to one channel)."""
        return self._load_nir_array(i)

    def load_mask(self, i) -> np.ndarray:
        """Class-index mask of pair ``i`` as HxW int64."""
        rel = self.mask_file(i)
        w, h = (int(v) for v in self.sizes[i])
        if rel.lower().endswith('.npy'):
            try:
                mask = np.load(io.BytesIO(self._storage.read(rel)), allow_pickle=False)
            except Exception as e:
                raise DatasetError(self.display_mask(i), f'cannot be read as a .npy array ({_why(e)})') from None
            if mask.shape != (h, w) or mask.dtype.kind not in 'iub':
                raise DatasetError(self.display_mask(i), f'holds a {mask.dtype} array of shape {list(mask.shape)}; '
                                                         f'expected an integer array of shape [{h}, {w}]')
            return mask.astype(np.int64)
        try:
            with self._storage.open(rel) as f, PIL.Image.open(f) as img:
                mask = np.asarray(img)  # For mode P this is the palette index: the class.
        except Exception as e:
            raise DatasetError(self.display_mask(i), f'cannot be decoded ({_why(e)})') from None
        if mask.shape != (h, w):
            raise DatasetError(self.display_mask(i), f'has shape {list(mask.shape)}; expected a single-channel '
                                                     f'{w}x{h} class-index image')
        return mask.astype(np.int64)

    # ----------------------------------------------------------------------------------------------------- labels

    def _read_json(self, rel):
        try:
            return json.loads(self._storage.read(rel).decode('utf-8'))
        except (ValueError, UnicodeDecodeError) as e:
            raise DatasetError(self._storage.display(rel), f'is not valid JSON ({e})') from None

    def _load_labels(self, required):
        """(label file, one label per pair with None where missing) from dataset.json; (None, None) without one.

        ``required``: every pair must have a label when the file has any.
        """
        storage = self._storage
        found = [(rel, self._read_json(rel)) for rel in ('dataset.json', f'{self.rgb_dir}/dataset.json')
                 if storage.is_file(rel)]
        if not found:
            return None, None
        if len(found) == 2 and found[0][1] != found[1][1]:
            raise DatasetError(storage.display(found[1][0]), f'differs from {storage.display(found[0][0])}; keep one '
                                                             f'dataset.json')
        rel, data = found[0]
        label_file = storage.display(rel)
        if not isinstance(data, dict) or 'labels' not in data:
            raise DatasetError(label_file, 'must be an object with a "labels" entry')
        entries = data['labels']
        if entries is None:
            return label_file, None
        if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                                                    for e in entries):
            raise DatasetError(label_file, 'its "labels" must be a list of [file name, label] pairs')
        labels = self._match_labels(entries)
        missing = [i for i, label in enumerate(labels) if label is None]
        if missing and required:
            names = [self.rgb_names[i] for i in missing]
            raise DatasetError(self.display_rgb(missing[0]), f'has no label in {label_file} ({len(missing)} '
                                                             f'file(s) lack one: {_list_names(names)})')
        return label_file, labels

    def _match_labels(self, entries):
        """The label of each pair from dataset.json's [name, label] entries, None where there is none."""
        by_name, by_key = {}, {}
        for name, label in entries:
            name = name.replace('\\', '/')
            by_name[name] = label
            by_key.setdefault(_pair_key(name), label)

        def find(i):
            # The exact name relative to the RGB folder (upstream), then relative to the dataset root, then the
            # name without its extension (labels survive a conversion that changed the image format).
            name, key = self.rgb_names[i], self.keys[i]
            for table, k in ((by_name, name), (by_name, f'{self.rgb_dir}/{name}'), (by_key, key),
                             (by_key, f'{self.rgb_dir}/{key}')):
                if table.get(k) is not None:
                    return table[k]
            return None

        return [find(i) for i in range(len(self.keys))]

    def _load_classes(self):
        """Class names from classes.json (as the demo writes it), passed on by the converter; None without one."""
        return self._read_json('classes.json') if self._storage.is_file('classes.json') else None

    def close(self):
        if isinstance(self._storage, _ZipStorage):
            self._storage.close()


def _why(e: BaseException) -> str:
    if isinstance(e, PIL.UnidentifiedImageError):
        return 'unknown or damaged image format'
    text = str(e).splitlines()[0] if str(e) else ''
    return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _label_array(labels, label_file) -> np.ndarray:
    """Upstream's conversion of the label list: 1-D → int64 class indices, 2-D → float32 vectors."""
    try:
        arr = np.array(labels)
    except ValueError:
        arr = None
    if arr is None or arr.dtype == object or arr.ndim not in (1, 2) or arr.dtype.kind not in 'biuf':
        raise DatasetError(label_file, 'labels must all be class indices or all be number vectors of one length')
    if arr.ndim == 1:
        if np.any(arr != np.round(arr)) or np.any(arr < 0):
            raise DatasetError(label_file, 'class labels must be non-negative integers')
        return arr.astype(np.int64)
    return arr.astype(np.float32)


def _item_indices(num_raw, max_size, random_seed, xflip):
    """(raw index, x-flip flag) of each item: upstream's random subset of ``max_size`` pairs, then the mirrors."""
    raw_idx = np.arange(num_raw, dtype=np.int64)
    if max_size is not None and num_raw > max_size:
        np.random.RandomState(random_seed).shuffle(raw_idx)
        raw_idx = np.sort(raw_idx[:max_size])
    flips = np.zeros(raw_idx.size, dtype=np.uint8)
    if xflip:
        raw_idx = np.tile(raw_idx, 2)
        flips = np.concatenate([flips, np.ones_like(flips)])
    return raw_idx, flips


# ---------------------------------------------------------------------------------------------------------------------
# The dataset (torch-free base; `PairedImageDataset` adds torch.utils.data.Dataset).


class PairedImages:
    """Aligned RGB + NIR pairs (and optional masks) with StyleGAN2-ADA's dataset semantics.

    ``PairedImages(path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0,
    load_masks=False, name=None)``. ``item = ds[idx]`` is ``(rgb uint8 [3,R,R], nir uint8 [1,R,R],
    label float32 [label_dim])``, plus ``mask int64 [R,R]`` when ``load_masks``. With ``xflip`` the length doubles
    and the second half is mirrored (all modalities together). ``max_size`` keeps a random subset chosen by
    ``random_seed`` exactly as upstream does. ``load_masks='auto'`` loads masks when the masks folder exists.
    """

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0,
                 load_masks=False, name=None):
        self._files = PairedFiles(path, masks=load_masks, labels=bool(use_labels))
        self._path = self._files.path
        self._name = name if name is not None else self._files.root_name
        self._check_geometry(resolution)
        num_raw = len(self._files)
        res = int(self._files.sizes[0][0])
        self._raw_shape = [num_raw, 3, res, res]
        self._use_labels = bool(use_labels)
        self._raw_labels = self._make_raw_labels()
        self._load_masks = self._files.has_masks
        self._raw_idx, self._xflip = _item_indices(num_raw, max_size, random_seed, xflip)

    def _check_geometry(self, resolution):
        files = self._files
        first_w, first_h = (int(v) for v in files.sizes[0])
        if resolution is not None and not _is_power_of_two(int(resolution)):
            raise DatasetError(files.display(), f'the requested resolution {resolution} is not a power of two')
        for i, (w, h) in enumerate(files.sizes):
            w, h = int(w), int(h)
            if w != h:
                raise DatasetError(files.display_rgb(i), f'is {w}x{h}, not square; convert the dataset with '
                                                         f'dataset_tool.py convert --transform=center-crop')
            if not _is_power_of_two(w):
                raise DatasetError(files.display_rgb(i), f'is {w}x{h}; the side must be a power of two '
                                                         f'(resize it with dataset_tool.py convert --resolution)')
            if resolution is not None and w != int(resolution):
                raise DatasetError(files.display_rgb(i), f'is {w}x{h} but the requested resolution is '
                                                         f'{resolution}x{resolution}')
            if (w, h) != (first_w, first_h):
                raise DatasetError(files.display_rgb(i), f'is {w}x{h} but {files.display_rgb(0)} is '
                                                         f'{first_w}x{first_h}; all images must have one size')

    def _make_raw_labels(self) -> np.ndarray:
        num_raw = len(self._files)
        labels = self._files.labels if self._use_labels else None
        if labels is None:
            return np.zeros([num_raw, 0], dtype=np.float32)
        return _label_array(labels, self._files.label_file)

    # ----------------------------------------------------------------------------------------------------- items

    def __len__(self):
        return int(self._raw_idx.size)

    def __getitem__(self, idx):
        raw_idx = int(self._raw_idx[idx])
        rgb = self._files.load_rgb(raw_idx).transpose(2, 0, 1)
        nir = self._files.load_nir(raw_idx)[None]
        if list(rgb.shape) != self.image_shape:
            raise DatasetError(self._files.display_rgb(raw_idx), f'has shape {list(rgb.shape)}, expected '
                                                                 f'{self.image_shape}')
        mask = self._files.load_mask(raw_idx) if self._load_masks else None
        if self._xflip[idx]:
            rgb = rgb[:, :, ::-1]
            nir = nir[:, :, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        # Contiguous and writable (decoded images are read-only views; torch warns about those when batching).
        item = (np.require(rgb, requirements='CW'), np.require(nir, requirements='CW'), self.get_label(idx))
        if mask is not None:
            item += (np.require(mask, requirements='CW'),)
        return item

    def get_label(self, idx):
        label = self._raw_labels[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            label = onehot
        return label.copy()

    def get_details(self, idx):
        d = dnnlib.EasyDict()
        d.raw_idx = int(self._raw_idx[idx])
        d.xflip = int(self._xflip[idx]) != 0
        d.raw_label = self._raw_labels[d.raw_idx].copy()
        return d

    # ----------------------------------------------------------------------------------------------------- properties

    @property
    def name(self):
        return self._name

    @property
    def path(self):
        return self._path

    @property
    def raw_names(self):
        """Relative names of all RGB files (index = raw index), before max_size and xflip."""
        return list(self._files.rgb_names)

    @property
    def nir_names(self):
        return list(self._files.nir_names)

    @property
    def mask_names(self):
        return None if self._files.mask_names is None else list(self._files.mask_names)

    @property
    def image_shape(self):
        return list(self._raw_shape[1:])

    @property
    def nir_shape(self):
        return [1] + list(self._raw_shape[2:])

    @property
    def num_channels(self):
        return self.image_shape[0]

    @property
    def nir_channels(self):
        return self.nir_shape[0]

    @property
    def resolution(self):
        return self._raw_shape[2]

    @property
    def label_shape(self):
        raw = self._raw_labels
        if raw.dtype == np.int64:
            return [int(raw.max()) + 1]
        return list(raw.shape[1:])

    @property
    def label_dim(self):
        assert len(self.label_shape) == 1
        return self.label_shape[0]

    @property
    def has_labels(self):
        return any(x != 0 for x in self.label_shape)

    @property
    def has_onehot_labels(self):
        return self._raw_labels.dtype == np.int64

    @property
    def has_masks(self):
        return self._load_masks

    # ----------------------------------------------------------------------------------------------------- lifetime

    def close(self):
        self._files.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __getstate__(self):
        return dict(self.__dict__)  # The zip storage drops its open handle itself (see _ZipStorage.__getstate__).

    def __setstate__(self, state):
        self.__dict__.update(state)  # The zip handle is reopened lazily in the new process.


# ---------------------------------------------------------------------------------------------------------------------
# Progress bars for the dataset tools


def _progress(iterable, enabled, desc, total=None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit='pair', dynamic_ncols=True)
