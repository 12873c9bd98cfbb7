"""Paired RGB + NIR datasets: finding, pairing, validating and loading them; converting them; demo eye data.

Layout (as in BiOcularGAN / BiFaceGAN)::

    <root>/images/**/name.png    RGB (``RGB/`` is accepted instead of ``images/``)
    <root>/NIR/**/name.png       NIR, one grey channel
    <root>/masks/**/name.png     optional class-index masks (mode L/P PNGs or integer .npy arrays)
    <root>/dataset.json          optional labels, upstream format (also accepted inside images/)

``path`` may name ``<root>``, the RGB folder itself (the originals' convention: the NIR and mask folders are its
siblings) or a ``.zip`` holding the same tree. Files are found recursively and a pair is matched by its relative
path without the extension (``a/x.png`` pairs with ``a/x.jpg``), never by sorted position. Every problem is found
in the constructor, before any training starts, and raised as a one-line ``DatasetError`` naming the file.

``PairedImageDataset`` is the ``torch.utils.data.Dataset`` the training loop and the metrics use. torch is imported
only when that class is first looked up, so that ``dataset_tool.py`` (which uses the torch-free base class
``PairedImages``) starts in a fraction of a second.
"""

import contextlib
import io
import json
import math
import os
import shutil
import typing
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import PIL.Image

import dnnlib

# ---------------------------------------------------------------------------------------------------------------------
# Errors


class DatasetError(ValueError):
    """Bad dataset input. ``str(e)`` is one line: ``<file>: <problem>``; ``e.file`` and ``e.problem`` hold the parts."""

    def __init__(self, file, problem=None):
        if problem is None:  # Single-argument form (also what unpickling uses when only a message survives).
            file, problem = None, str(file)
        self.file = None if file is None else str(file)
        self.problem = str(problem)
        super().__init__(self.file, self.problem)

    def __str__(self):
        return self.problem if self.file is None else f"{self.file}: {self.problem}"


# ---------------------------------------------------------------------------------------------------------------------
# File names

NIR_GREY_TOLERANCE = 2  # A 3-channel NIR file counts as grey when its channels differ by at most this many levels.
RGB_FOLDER_NAMES = ("images", "RGB")  # Names of the RGB folder inside a dataset root or zip, first match wins.
NIR_FOLDER_NAME = "NIR"
MASK_FOLDER_NAME = "masks"


def image_extensions() -> typing.FrozenSet[str]:
    """Lower-case file extensions (with the dot) that PIL can open, as upstream's dataset uses."""
    PIL.Image.init()
    return frozenset(ext.lower() for ext in PIL.Image.EXTENSION)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in rel.split("/"))


def _pair_key(rel: str) -> str:
    """Relative path without its extension: the name that pairs RGB, NIR and mask files."""
    return str(PurePosixPath(rel).with_suffix(""))


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def _list_names(names, limit=3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------------------------------
# Storage: a folder tree or a zip archive, addressed by '/'-separated paths relative to the dataset root.


class _FolderStorage:
    def __init__(self, root: Path):
        self.root = root

    def display(self, rel: str = "") -> str:
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
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            sub = Path(dirpath).relative_to(top).as_posix()
            for fname in filenames:
                if not fname.startswith("."):
                    found.append(fname if sub == "." else f"{sub}/{fname}")
        return sorted(found)

    def open(self, rel: str):
        return open(self.root / rel, "rb")

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class _ZipStorage:
    """Members of a zip under an optional top folder; the handle is opened lazily, once per process."""

    def __init__(self, zip_path: Path):
        self.zip_path = zip_path
        self.prefix = ""
        self._zip = None
        self._zip_pid = None
        try:
            members = [n.replace("\\", "/") for n in self._handle().namelist()]
        except (zipfile.BadZipFile, OSError) as e:
            raise DatasetError(zip_path, f"cannot be read as a zip archive ({e})") from None
        self._members = sorted(n for n in members if not n.endswith("/"))
        # A zip made with `zip -r data.zip data/` wraps everything in one top folder: look inside it.
        tops = {n.split("/", 1)[0] for n in self._members if "/" in n and not _is_hidden(n)} - {"__MACOSX"}
        has_rgb = any(n.startswith(f"{f}/") for n in self._members for f in RGB_FOLDER_NAMES)
        if not has_rgb and len(tops) == 1:
            self.prefix = tops.pop() + "/"

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

    def display(self, rel: str = "") -> str:
        return f"{self.zip_path}/{self.prefix}{rel}" if rel or self.prefix else str(self.zip_path)

    def is_dir(self, rel: str) -> bool:
        start = f"{self.prefix}{rel}/"
        return any(n.startswith(start) for n in self._members)

    def is_file(self, rel: str) -> bool:
        return f"{self.prefix}{rel}" in self._members

    def files_under(self, rel: str) -> typing.List[str]:
        start = f"{self.prefix}{rel}/"
        return [n[len(start):] for n in self._members if n.startswith(start) and not _is_hidden(n[len(start):])]

    def open(self, rel: str):
        return self._handle().open(f"{self.prefix}{rel}")

    def read(self, rel: str) -> bytes:
        return self._handle().read(f"{self.prefix}{rel}")


# ---------------------------------------------------------------------------------------------------------------------
# Pixel conversion rules, shared by the validation and the loading so that they can never disagree.

_RGB_MODES = {"RGB", "L", "P"}  # L is repeated to 3 channels, P is converted to RGB
_NIR_MODES = {"L", "RGB", "P"}  # RGB and P must hold a grey image; they are reduced to 1 channel
_MASK_MODES = {"L", "P", "1", "I", "I;16", "I;16B", "I;16L"}


def _mode_problem(mode: str, what: str) -> str:
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return f"has an alpha channel (mode {mode}); save the {what} image without alpha"
    if mode.startswith("I") or mode == "F":
        return f"is a 16/32-bit image (mode {mode}); {what} images must be 8-bit"
    return f"has unsupported pixel mode {mode}; {what} images must be 8-bit RGB or greyscale"


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
        if masks not in (False, True, "auto") or labels not in (False, True, "auto"):
            raise ValueError("masks and labels must each be False, True or 'auto'")
        self.path = os.fspath(path)
        self._storage, self.rgb_dir, self.root_name = self._open_layout(Path(self.path))
        storage = self._storage
        exts = image_extensions()

        # RGB files.
        rgb_files = [n for n in storage.files_under(self.rgb_dir) if PurePosixPath(n).suffix.lower() in exts]
        if not rgb_files:
            raise DatasetError(storage.display(self.rgb_dir),
                               "no image files found (searched recursively for PNG, JPEG, ... files)")
        rgb_by_key = self._index(rgb_files, self.rgb_dir)

        # NIR files, matched by name.
        if not storage.is_dir(NIR_FOLDER_NAME):
            raise DatasetError(storage.display(NIR_FOLDER_NAME),
                               f"NIR folder not found; it must sit beside the RGB folder {self.rgb_dir}/")
        nir_files = [n for n in storage.files_under(NIR_FOLDER_NAME) if PurePosixPath(n).suffix.lower() in exts]
        nir_by_key = self._index(nir_files, NIR_FOLDER_NAME)
        self._check_partners(rgb_by_key, nir_by_key, self.rgb_dir, NIR_FOLDER_NAME, "NIR")

        keys = list(rgb_by_key)  # Sorted like the RGB file names (dicts keep insertion order).
        self.keys = keys
        self.rgb_names = [rgb_by_key[k] for k in keys]
        self.nir_names = [nir_by_key[k] for k in keys]
        self.raw_names = self.rgb_names

        # Masks, matched by name.
        self.mask_folder_found = storage.is_dir(MASK_FOLDER_NAME)
        self.mask_names = None
        if masks is True and not self.mask_folder_found:
            raise DatasetError(storage.display(MASK_FOLDER_NAME), "masks were requested but the folder does not exist")
        if masks and self.mask_folder_found:
            mask_exts = exts | {".npy"}
            mask_files = [n for n in storage.files_under(MASK_FOLDER_NAME)
                          if PurePosixPath(n).suffix.lower() in mask_exts]
            mask_by_key = self._index(mask_files, MASK_FOLDER_NAME)
            self._check_partners(rgb_by_key, mask_by_key, self.rgb_dir, MASK_FOLDER_NAME, "mask")
            self.mask_names = [mask_by_key[k] for k in keys]

        # Headers: every file must open, have a usable mode and match its partner's size.
        n = len(keys)
        self.sizes = np.zeros([n, 2], dtype=np.int64)  # (width, height) of each pair
        self.rgb_modes = []
        self.nir_modes = []
        for i in range(n):
            w_h, mode = self._probe(self.rgb_file(i))
            if mode not in _RGB_MODES:
                raise DatasetError(self.display_rgb(i), _mode_problem(mode, "RGB"))
            self.sizes[i] = w_h
            self.rgb_modes.append(mode)
            nir_size, nir_mode = self._probe(self.nir_file(i))
            if nir_mode not in _NIR_MODES:
                raise DatasetError(self.display_nir(i), _mode_problem(nir_mode, "NIR"))
            if nir_size != w_h:
                raise DatasetError(self.display_nir(i), f"is {nir_size[0]}x{nir_size[1]} but its RGB partner "
                                                        f"{self.display_rgb(i)} is {w_h[0]}x{w_h[1]}")
            if nir_mode != "L":  # Three channels: they must carry one grey value (checked on the pixels).
                self._load_nir_array(i)
            self.nir_modes.append(nir_mode)
            if self.mask_names is not None:
                self._probe_mask(i, w_h)

        self.num_grey_rgb = sum(mode == "L" for mode in self.rgb_modes)
        self.num_rgb_nir = sum(mode != "L" for mode in self.nir_modes)

        # Labels.
        self.label_file = None
        self.labels = None  # list (one entry per pair, None where missing) or None when there are no labels
        if labels:
            self._read_labels(required=(labels is True))

        # Class names (classes.json, as the demo writes it), passed on by the converter.
        self.classes = None
        if storage.is_file("classes.json"):
            try:
                self.classes = json.loads(storage.read("classes.json").decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise DatasetError(storage.display("classes.json"), f"is not valid JSON ({e})") from None

    # ----------------------------------------------------------------------------------------------------- layout

    @staticmethod
    def _open_layout(p: Path):
        """(storage, RGB folder relative to the storage root, dataset name) for a user-given path."""
        if p.name in ("", ".", ".."):
            p = Path(os.path.abspath(p))
        if not p.exists():
            raise DatasetError(p, "no such file or directory")
        if p.is_file():
            if p.suffix.lower() != ".zip":
                raise DatasetError(p, "is a file but not a .zip; give a dataset folder, its RGB folder or a .zip")
            storage = _ZipStorage(p)
            for name in RGB_FOLDER_NAMES:
                if storage.is_dir(name):
                    return storage, name, p.stem
            if storage.is_dir(NIR_FOLDER_NAME):
                raise DatasetError(p, "holds NIR/ but no images/ folder")
            raise DatasetError(p, "holds no images/ and NIR/ folders")
        for name in RGB_FOLDER_NAMES:
            if (p / name).is_dir():
                return _FolderStorage(p), name, p.name
        if (p / NIR_FOLDER_NAME).is_dir():
            raise DatasetError(p, "holds NIR/ but no images/ folder")
        if p.name in (NIR_FOLDER_NAME, MASK_FOLDER_NAME):
            raise DatasetError(p, f"is the {p.name} folder; give the RGB folder or the folder holding images/")
        # The RGB folder itself: NIR/ and masks/ are its siblings.
        return _FolderStorage(p.parent), p.name, (p.parent.name or p.name)

    def _index(self, files, folder) -> dict:
        by_key = {}
        for rel in files:
            key = _pair_key(rel)
            if key in by_key:
                raise DatasetError(self._storage.display(f"{folder}/{rel}"),
                                   f"has the same name as {by_key[key]} apart from the extension; pairs are "
                                   f"matched by name, so keep only one of them")
            by_key[key] = rel
        return by_key

    def _check_partners(self, rgb_by_key, other_by_key, rgb_dir, other_dir, what):
        lonely_rgb = [rgb_by_key[k] for k in rgb_by_key if k not in other_by_key]
        lonely_other = [other_by_key[k] for k in other_by_key if k not in rgb_by_key]
        if lonely_rgb:
            also = f"; and {len(lonely_other)} {what} file(s) have no RGB partner" if lonely_other else ""
            raise DatasetError(self._storage.display(f"{rgb_dir}/{lonely_rgb[0]}"),
                               f"has no {what} partner in {other_dir}/ ({len(lonely_rgb)} RGB file(s) lack one: "
                               f"{_list_names(lonely_rgb)}){also}")
        if lonely_other:
            raise DatasetError(self._storage.display(f"{other_dir}/{lonely_other[0]}"),
                               f"has no RGB partner in {rgb_dir}/ ({len(lonely_other)} {what} file(s) lack one: "
                               f"{_list_names(lonely_other)})")

    # ----------------------------------------------------------------------------------------------------- names

    def __len__(self):
        return len(self.keys)

    @property
    def has_masks(self) -> bool:
        return self.mask_names is not None

    def rgb_file(self, i):
        return f"{self.rgb_dir}/{self.rgb_names[i]}"

    def nir_file(self, i):
        return f"{NIR_FOLDER_NAME}/{self.nir_names[i]}"

    def mask_file(self, i):
        return f"{MASK_FOLDER_NAME}/{self.mask_names[i]}"

    def display_rgb(self, i):
        return self._storage.display(self.rgb_file(i))

    def display_nir(self, i):
        return self._storage.display(self.nir_file(i))

    def display_mask(self, i):
        return self._storage.display(self.mask_file(i))

    def display(self, rel=""):
        return self._storage.display(rel)

    # ----------------------------------------------------------------------------------------------------- reading

    def _probe(self, rel):
        """(size, mode) from the image header; the pixels are not decoded."""
        try:
            with self._storage.open(rel) as f, PIL.Image.open(f) as img:
                return tuple(img.size), img.mode
        except Exception as e:  # PIL raises many types (UnidentifiedImageError, SyntaxError, struct.error, ...).
            raise DatasetError(self._storage.display(rel), f"cannot be opened as an image ({_why(e)})") from None

    def _decode(self, rel, expected_size=None) -> PIL.Image.Image:
        try:
            with self._storage.open(rel) as f, PIL.Image.open(f) as img:
                img.load()
                out = img.copy() if img.mode != "P" else img.convert("RGB")
        except Exception as e:
            raise DatasetError(self._storage.display(rel), f"cannot be decoded ({_why(e)})") from None
        if expected_size is not None and tuple(out.size) != tuple(expected_size):
            raise DatasetError(self._storage.display(rel), f"changed size to {out.size[0]}x{out.size[1]} since the "
                                                           f"dataset was opened")
        return out

    def _probe_mask(self, i, w_h):
        rel = self.mask_file(i)
        if rel.lower().endswith(".npy"):
            shape, dtype = self._npy_header(rel)
            if len(shape) != 2 or dtype.kind not in "iub":
                raise DatasetError(self.display_mask(i), f"holds a {dtype} array of shape {list(shape)}; a mask must "
                                                         f"be a 2-D integer array")
            size = (shape[1], shape[0])
        else:
            size, mode = self._probe(rel)
            if mode not in _MASK_MODES:
                raise DatasetError(self.display_mask(i), f"has pixel mode {mode}; a mask must be a class-index image "
                                                         f"(mode L or P) or a .npy integer array")
        if tuple(size) != tuple(w_h):
            raise DatasetError(self.display_mask(i), f"is {size[0]}x{size[1]} but its RGB partner "
                                                     f"{self.display_rgb(i)} is {w_h[0]}x{w_h[1]}")

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
            raise DatasetError(self._storage.display(rel), f"cannot be read as a .npy array ({_why(e)})") from None

    def load_rgb(self, i) -> np.ndarray:
        """RGB pixels of pair ``i`` as HxWx3 uint8 (grey files are repeated to three channels)."""
        img = self._decode(self.rgb_file(i), self.sizes[i])
        if img.mode == "L":
            return np.repeat(np.asarray(img)[:, :, None], 3, axis=2)
        if img.mode != "RGB":
            raise DatasetError(self.display_rgb(i), _mode_problem(img.mode, "RGB"))
        return np.asarray(img)

    def _load_nir_array(self, i) -> np.ndarray:
        img = self._decode(self.nir_file(i), self.sizes[i])
        if img.mode == "L":
            return np.asarray(img)
        if img.mode != "RGB":
            raise DatasetError(self.display_nir(i), _mode_problem(img.mode, "NIR"))
        rgb = np.asarray(img)
        spread = _grey_spread(rgb)
        if spread > NIR_GREY_TOLERANCE:
            raise DatasetError(self.display_nir(i), f"is a colour image (its channels differ by up to {spread} "
                                                    f"levels); NIR images must be single-channel grey")
        return _nir_from_rgb(rgb)

    def load_nir(self, i) -> np.ndarray:
        """NIR pixels of pair ``i`` as HxW uint8 (grey 3-channel files are reduced to one channel)."""
        return self._load_nir_array(i)

    def load_mask(self, i) -> np.ndarray:
        """Class-index mask of pair ``i`` as HxW int64."""
        rel = self.mask_file(i)
        w, h = (int(v) for v in self.sizes[i])
        if rel.lower().endswith(".npy"):
            try:
                mask = np.load(io.BytesIO(self._storage.read(rel)), allow_pickle=False)
            except Exception as e:
                raise DatasetError(self.display_mask(i), f"cannot be read as a .npy array ({_why(e)})") from None
            if mask.shape != (h, w) or mask.dtype.kind not in "iub":
                raise DatasetError(self.display_mask(i), f"holds a {mask.dtype} array of shape {list(mask.shape)}; "
                                                         f"expected an integer array of shape [{h}, {w}]")
            return mask.astype(np.int64)
        try:
            with self._storage.open(rel) as f, PIL.Image.open(f) as img:
                mask = np.asarray(img)  # For mode P this is the palette index: the class.
        except Exception as e:
            raise DatasetError(self.display_mask(i), f"cannot be decoded ({_why(e)})") from None
        if mask.shape != (h, w):
            raise DatasetError(self.display_mask(i), f"has shape {list(mask.shape)}; expected a single-channel "
                                                     f"{w}x{h} class-index image")
        return mask.astype(np.int64)

    # ----------------------------------------------------------------------------------------------------- labels

    def _read_labels(self, required):
        storage = self._storage
        found = []
        for rel in ("dataset.json", f"{self.rgb_dir}/dataset.json"):
            if storage.is_file(rel):
                try:
                    found.append((rel, json.loads(storage.read(rel).decode("utf-8"))))
                except (ValueError, UnicodeDecodeError) as e:
                    raise DatasetError(storage.display(rel), f"is not valid JSON ({e})") from None
        if not found:
            return
        if len(found) == 2 and found[0][1] != found[1][1]:
            raise DatasetError(storage.display(found[1][0]), f"differs from {storage.display(found[0][0])}; keep one "
                                                             f"dataset.json")
        rel, data = found[0]
        self.label_file = storage.display(rel)
        if not isinstance(data, dict) or "labels" not in data:
            raise DatasetError(self.label_file, 'must be an object with a "labels" entry')
        entries = data["labels"]
        if entries is None:
            return
        if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
                                                    for e in entries):
            raise DatasetError(self.label_file, 'its "labels" must be a list of [file name, label] pairs')
        by_name, by_key = {}, {}
        for name, label in entries:
            name = name.replace("\\", "/")
            by_name[name] = label
            by_key.setdefault(_pair_key(name), label)

        def find(i):
            # The exact name relative to the RGB folder (upstream), then relative to the dataset root, then the
            # name without its extension (labels survive a conversion that changed the image format).
            name, key = self.rgb_names[i], self.keys[i]
            for table, k in ((by_name, name), (by_name, f"{self.rgb_dir}/{name}"), (by_key, key),
                             (by_key, f"{self.rgb_dir}/{key}")):
                if table.get(k) is not None:
                    return table[k]
            return None

        labels = [find(i) for i in range(len(self.keys))]
        missing = [i for i, label in enumerate(labels) if label is None]
        if missing and required:
            names = [self.rgb_names[i] for i in missing]
            raise DatasetError(self.display_rgb(missing[0]), f"has no label in {self.label_file} ({len(missing)} "
                                                             f"file(s) lack one: {_list_names(names)})")
        self.labels = labels

    def close(self):
        if isinstance(self._storage, _ZipStorage):
            self._storage.close()


def _why(e: BaseException) -> str:
    if isinstance(e, PIL.UnidentifiedImageError):
        return "unknown or damaged image format"
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _label_array(labels, label_file) -> np.ndarray:
    """Upstream's conversion of the label list: 1-D → int64 class indices, 2-D → float32 vectors."""
    try:
        arr = np.array(labels)
    except ValueError:
        arr = None
    if arr is None or arr.dtype == object or arr.ndim not in (1, 2) or arr.dtype.kind not in "biuf":
        raise DatasetError(label_file, "labels must all be class indices or all be number vectors of one length")
    if arr.ndim == 1:
        if np.any(arr != np.round(arr)) or np.any(arr < 0):
            raise DatasetError(label_file, "class labels must be non-negative integers")
        return arr.astype(np.int64)
    return arr.astype(np.float32)


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

        self._raw_idx = np.arange(num_raw, dtype=np.int64)
        if max_size is not None and num_raw > max_size:
            np.random.RandomState(random_seed).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

    def _check_geometry(self, resolution):
        files = self._files
        first_w, first_h = (int(v) for v in files.sizes[0])
        if resolution is not None and not _is_power_of_two(int(resolution)):
            raise DatasetError(files.display(), f"the requested resolution {resolution} is not a power of two")
        for i, (w, h) in enumerate(files.sizes):
            w, h = int(w), int(h)
            if w != h:
                raise DatasetError(files.display_rgb(i), f"is {w}x{h}, not square; convert the dataset with "
                                                         f"dataset_tool.py convert --transform=center-crop")
            if not _is_power_of_two(w):
                raise DatasetError(files.display_rgb(i), f"is {w}x{h}; the side must be a power of two "
                                                         f"(resize it with dataset_tool.py convert --resolution)")
            if resolution is not None and w != int(resolution):
                raise DatasetError(files.display_rgb(i), f"is {w}x{h} but the requested resolution is "
                                                         f"{resolution}x{resolution}")
            if (w, h) != (first_w, first_h):
                raise DatasetError(files.display_rgb(i), f"is {w}x{h} but {files.display_rgb(0)} is "
                                                         f"{first_w}x{first_h}; all images must have one size")

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
            raise DatasetError(self._files.display_rgb(raw_idx), f"has shape {list(rgb.shape)}, expected "
                                                                 f"{self.image_shape}")
        mask = self._files.load_mask(raw_idx) if self._load_masks else None
        if self._xflip[idx]:
            rgb = rgb[:, :, ::-1]
            nir = nir[:, :, ::-1]
            mask = mask[:, ::-1] if mask is not None else None
        item = (np.ascontiguousarray(rgb), np.ascontiguousarray(nir), self.get_label(idx))
        if mask is not None:
            item += (np.ascontiguousarray(mask),)
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


if typing.TYPE_CHECKING:
    import torch.utils.data

    class PairedImageDataset(PairedImages, torch.utils.data.Dataset):
        """See PairedImages; this is the class that exists at run time too (created on first use)."""

    ImageFolderDataset = PairedImageDataset


def _torch_dataset_class():
    import torch.utils.data

    cls = type("PairedImageDataset", (PairedImages, torch.utils.data.Dataset), {
        "__module__": __name__,
        "__qualname__": "PairedImageDataset",
        "__doc__": "A ``torch.utils.data.Dataset`` of aligned RGB + NIR pairs.\n\n" + PairedImages.__doc__,
    })
    globals()["PairedImageDataset"] = cls
    globals()["ImageFolderDataset"] = cls  # Upstream's class name, as old configs and pickles spell it.
    return cls


def __getattr__(name):
    # PEP 562: `PairedImageDataset` (and its upstream alias) import torch only when first asked for.
    if name in ("PairedImageDataset", "ImageFolderDataset"):
        return _torch_dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Summary for `dataset_tool.py check`


def summarize(dataset, deep=False, progress=False) -> dict:
    """A short description of an opened dataset: counts, resolution, channels, labels and masks.

    ``deep=True`` also decodes every pair (catching truncated files the header check cannot see) and lists the
    mask classes that occur.
    """
    files = dataset._files
    raw_indices = sorted(set(int(i) for i in dataset._raw_idx))
    if not dataset.has_labels:
        labels = dict(kind="none", dim=0)
    elif dataset.has_onehot_labels:
        labels = dict(kind="class", dim=dataset.label_dim)
    else:
        labels = dict(kind="vector", dim=dataset.label_dim)
    info = dict(
        path=dataset.path, name=dataset.name, count=len(raw_indices), length=len(dataset),
        resolution=dataset.resolution, channels=dict(rgb=dataset.num_channels, nir=dataset.nir_channels),
        labels=labels, label_file=files.label_file,
        masks=(len(raw_indices) if dataset.has_masks else 0), mask_classes=None,
        grayscale_converted=files.num_grey_rgb, nir_reduced=files.num_rgb_nir, decoded=False,
    )
    if deep:
        classes = set()
        for i in _progress(raw_indices, progress, "checking pixels"):
            files.load_rgb(i)
            files.load_nir(i)
            if dataset.has_masks:
                classes.update(int(v) for v in np.unique(files.load_mask(i)))
        info["decoded"] = True
        if dataset.has_masks:
            info["mask_classes"] = sorted(classes)
    return info


def _progress(iterable, enabled, desc, total=None):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="pair", dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------------------------------
# Output: a folder or zip written under a temporary name and moved into place at the end.


class DatasetWriter:
    """Collects output files; ``commit()`` moves them to ``dest`` (a folder, or a zip when it ends in .zip).

    Nothing appears under ``dest`` until commit; on error (or ``abort()``) the temporary output is removed. An
    existing ``dest`` is refused unless ``overwrite`` (an existing empty folder is always fine). Zips are stored
    uncompressed with fixed timestamps, so the same content gives the same bytes.
    """

    def __init__(self, dest, overwrite=False):
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.is_zip = self.dest.suffix.lower() == ".zip"
        self.overwrite = overwrite
        check_destination(dest, overwrite)
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dest.with_name(f"{self.dest.name}.tmp-{os.getpid()}")
        self._remove(self.tmp)
        self._zip = None
        if self.is_zip:
            self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        else:
            self.tmp.mkdir()

    @staticmethod
    def _remove(path: Path):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()

    def write_bytes(self, rel: str, data: bytes):
        if self._zip is not None:
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            self._zip.writestr(info, data)
        else:
            target = self.tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def write_png(self, rel: str, array: np.ndarray, compress_level=6):
        buf = io.BytesIO()
        PIL.Image.fromarray(array).save(buf, format="png", compress_level=compress_level)
        self.write_bytes(rel, buf.getvalue())

    def write_json(self, rel: str, obj):
        self.write_bytes(rel, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))

    def commit(self):
        if self._zip is not None:
            self._zip.close()
            self._zip = None
            os.replace(self.tmp, self.dest)
            return
        old = None
        if self.dest.exists():
            old = self.dest.with_name(f"{self.dest.name}.old-{os.getpid()}")
            self._remove(old)
            os.replace(self.dest, old)
        os.replace(self.tmp, self.dest)
        if old is not None:
            self._remove(old)

    def abort(self):
        if self._zip is not None:
            with contextlib.suppress(Exception):
                self._zip.close()
            self._zip = None
        with contextlib.suppress(OSError):
            self._remove(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def check_destination(dest, overwrite=False):
    """Raise DatasetError when ``dest`` may not be written (exists and not replaceable)."""
    d = Path(os.fspath(dest))
    is_zip = d.suffix.lower() == ".zip"
    if not d.exists():
        return
    if is_zip and d.is_dir():
        raise DatasetError(d, "is a folder, not a .zip file")
    if not is_zip and not d.is_dir():
        raise DatasetError(d, "exists and is not a folder")
    if d.is_dir() and not any(d.iterdir()):
        return
    if not overwrite:
        raise DatasetError(d, "already exists and is not empty; use --overwrite to replace it")


# ---------------------------------------------------------------------------------------------------------------------
# Conversion (dataset_tool.py convert)

TRANSFORMS = (None, "center-crop", "center-crop-wide")
RESIZE_FILTERS = {"box": PIL.Image.BOX, "lanczos": PIL.Image.LANCZOS}


def _output_size(size, transform, resolution):
    """Width and height after the transform, from the input size alone (so it can be checked up front)."""
    w, h = int(size[0]), int(size[1])
    if resolution is not None:
        return resolution, resolution
    if transform == "center-crop":
        return min(w, h), min(w, h)
    return w, h


def transform_image(img: PIL.Image.Image, transform, resolution, resample) -> PIL.Image.Image:
    """Apply a conversion transform to one image (RGB, grey or an integer mask in mode I with NEAREST)."""
    w, h = img.size
    if transform == "center-crop":
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        if resolution is not None and s != resolution:
            img = img.resize((resolution, resolution), resample)
        return img
    if transform == "center-crop-wide":
        # Scale to the full width, then keep the middle rows (tall images) or letterbox on black (wide images).
        new_h = max(1, int(round(resolution * h / w)))
        if (w, h) != (resolution, new_h):
            img = img.resize((resolution, new_h), resample)
        if new_h >= resolution:
            top = (new_h - resolution) // 2
            return img.crop((0, top, resolution, top + resolution))
        canvas = PIL.Image.new(img.mode, (resolution, resolution), 0)
        canvas.paste(img, (0, (resolution - new_h) // 2))
        return canvas
    if resolution is not None and (w, h) != (resolution, resolution):
        img = img.resize((resolution, resolution), resample)
    return img


def convert_dataset(source, dest, max_images=None, resolution=None, transform=None, resize_filter="lanczos",
                    overwrite=False, progress=False) -> dict:
    """Convert a paired dataset to the standard layout (``images/``, ``NIR/``, ``masks/``, ``dataset.json``).

    Everything is validated before the first file is written; the output appears at ``dest`` (a folder, or an
    uncompressed zip when it ends in .zip) only when complete. Returns a summary dict. Raises DatasetError.
    """
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    if resize_filter not in RESIZE_FILTERS:
        raise ValueError(f"resize_filter must be one of {sorted(RESIZE_FILTERS)}, got {resize_filter!r}")
    if resolution is not None and (int(resolution) < 4 or not _is_power_of_two(int(resolution))):
        raise DatasetError("--resolution", f"must be a power of two >= 4, got {resolution}")
    if transform == "center-crop-wide" and resolution is None:
        raise DatasetError("--transform", "center-crop-wide needs --resolution")
    if max_images is not None and int(max_images) < 1:
        raise DatasetError("--max-images", f"must be at least 1, got {max_images}")
    check_destination(dest, overwrite)

    files = PairedFiles(source, masks="auto", labels="auto")
    count = len(files) if max_images is None else min(len(files), int(max_images))
    out_size = None
    for i in range(count):  # Output geometry, from the headers alone: fail before writing anything.
        w, h = _output_size(files.sizes[i], transform, resolution)
        if w != h or not _is_power_of_two(w):
            fix = "pass --resolution (and --transform=center-crop for non-square images)"
            raise DatasetError(files.display_rgb(i), f"would be stored as {w}x{h}; images must be square with a "
                                                     f"power-of-two side: {fix}")
        if out_size is None:
            out_size = (w, h)
        elif (w, h) != out_size:
            raise DatasetError(files.display_rgb(i), f"would be stored as {w}x{h} but {files.display_rgb(0)} as "
                                                     f"{out_size[0]}x{out_size[1]}; pass --resolution")

    resample = RESIZE_FILTERS[resize_filter]
    labels = []
    with DatasetWriter(dest, overwrite=overwrite) as writer:
        for i in _progress(range(count), progress, "converting", total=count):
            name = f"{files.keys[i]}.png"
            rgb = transform_image(PIL.Image.fromarray(files.load_rgb(i)), transform, resolution, resample)
            nir = transform_image(PIL.Image.fromarray(files.load_nir(i)), transform, resolution, resample)
            writer.write_png(f"images/{name}", np.asarray(rgb), compress_level=0)
            writer.write_png(f"NIR/{name}", np.asarray(nir), compress_level=0)
            if files.has_masks:
                mask = files.load_mask(i)
                small = mask.min() >= 0 and mask.max() <= 255
                img = PIL.Image.fromarray(mask.astype(np.uint8 if small else np.int32))
                mask = np.asarray(transform_image(img, transform, resolution, PIL.Image.NEAREST))
                if small:
                    writer.write_png(f"masks/{name}", mask.astype(np.uint8), compress_level=0)
                else:
                    buf = io.BytesIO()
                    np.save(buf, mask.astype(np.int64))
                    writer.write_bytes(f"masks/{files.keys[i]}.npy", buf.getvalue())
            labels.append([name, None if files.labels is None else files.labels[i]])
        all_labelled = files.labels is not None and all(label is not None for _, label in labels)
        writer.write_json("dataset.json", {"labels": labels if all_labelled else None})
        if files.classes is not None:
            writer.write_json("classes.json", files.classes)
    return dict(source=files.path, dest=os.fspath(dest), count=count, resolution=out_size[0],
                masks=files.has_masks, labels=all_labelled, grayscale_converted=files.num_grey_rgb,
                nir_reduced=files.num_rgb_nir)


# ---------------------------------------------------------------------------------------------------------------------
# Demo data: procedurally rendered eyes with aligned NIR and class-index masks (dataset_tool.py demo)

DEMO_CLASSES = ("background", "sclera", "iris", "pupil")

# Skin tones from light to dark (sRGB, 0..1), interpolated by a melanin parameter.
_SKIN_TONES = np.array([[0.96, 0.80, 0.71], [0.88, 0.66, 0.55], [0.76, 0.56, 0.42], [0.58, 0.40, 0.28],
                        [0.40, 0.26, 0.18], [0.27, 0.17, 0.12]])

# Iris types: name, probability, colour near the pupil, colour near the limbus, texture contrast in RGB.
# Dark irides show little texture in visible light; in NIR melanin is nearly transparent and every iris is a
# brighter mid grey with its fibres visible.
_IRIS_TYPES = (
    ("brown", 0.35, (0.40, 0.23, 0.11), (0.27, 0.15, 0.07), 0.14),
    ("hazel", 0.15, (0.52, 0.36, 0.14), (0.36, 0.40, 0.22), 0.22),
    ("green", 0.15, (0.55, 0.50, 0.25), (0.30, 0.44, 0.28), 0.24),
    ("blue", 0.20, (0.56, 0.67, 0.80), (0.30, 0.44, 0.62), 0.30),
    ("grey", 0.15, (0.62, 0.64, 0.64), (0.40, 0.45, 0.48), 0.26),
)


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _periodic_table(rng, n=1024, kmin=6, kmax=160, slope=0.8):
    """A random smooth periodic function sampled at n angles (std 1): iris fibres along the circumference."""
    spec = np.zeros(n // 2 + 1, dtype=np.complex128)
    k = np.arange(kmin, kmax + 1)
    spec[kmin:kmax + 1] = (rng.standard_normal(k.size) + 1j * rng.standard_normal(k.size)) * k ** -slope
    table = np.fft.irfft(spec, n=n)
    return (table / (table.std() + 1e-12)).astype(np.float32)


def _lookup(table, angle):
    """Linear interpolation in a periodic table indexed by an angle in radians."""
    n = table.size
    pos = angle * np.float32(n / (2 * np.pi))
    floor = np.floor(pos)
    frac = pos - floor
    i0 = floor.astype(np.int64) % n
    return table[i0] * (1 - frac) + table[(i0 + 1) % n] * frac


def _value_noise(grid, size):
    """Smooth noise: a small random grid upsampled bicubically to size x size (same picture at every size)."""
    import cv2

    return cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)


class _Eye:
    """Geometry and appearance of one demo eye, in image coordinates x, y in [-1, 1] (y down).

    The mask and the images are evaluated from the same analytic shapes: the eye opening between two lid curves
    (``depth`` > 0), the iris and pupil discs. Colours are 4-vectors (R, G, B, NIR), so both modalities come from
    one geometry and stay aligned pixel for pixel.
    """

    def __init__(self, rng: np.random.Generator, resolution: int):
        px = 2.0 / resolution  # One output pixel in these units.
        margin = max(0.05, 1.6 * px)
        for _ in range(200):
            if self._sample_geometry(rng, px, margin):
                break
        else:  # pragma: no cover - the acceptance rate is far above 1/200 for every resolution.
            raise RuntimeError("could not place a demo eye")
        self._sample_appearance(rng)

    # ---- geometry

    def _sample_geometry(self, rng, px, margin) -> bool:
        self.side = float(rng.choice([-1.0, 1.0]))  # Which side the nose (inner corner) is on.
        self.ex, self.ey = rng.uniform(-0.06, 0.06), rng.uniform(-0.02, 0.12)
        self.a = rng.uniform(0.72, 0.92)
        self.tilt = rng.uniform(-0.10, 0.10) - self.side * rng.uniform(0.0, 0.06)
        openness = rng.uniform(0.65, 1.15)
        self.hu, self.hl = openness * rng.uniform(0.40, 0.56), openness * rng.uniform(0.26, 0.38)
        self.pu, self.pl = rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.25)
        self.su, self.sl = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2)
        self.ri = self.a * rng.uniform(0.44, 0.60)
        xl = rng.uniform(-0.15, 0.15) * self.a
        up, lo = self._lids(np.array(xl / self.a))
        yl = 0.5 * (up + lo) + rng.uniform(-0.10, 0.06)
        self.icx, self.icy = self._to_image(xl, yl)
        self.rp = max(self.ri * rng.uniform(0.22, 0.48), 1.05 * px)
        self.pcx = self.icx + self.ri * (rng.uniform(-0.05, 0.05) + 0.04 * self.side)
        self.pcy = self.icy + self.ri * rng.uniform(-0.05, 0.05)
        # The pupil is never covered by a lid, and a ring of iris at least `margin` wide surrounds it.
        off = math.hypot(self.pcx - self.icx, self.pcy - self.icy)
        if self.ri - self.rp - off < margin:
            return False
        ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        r = self.rp + margin
        if self.depth(self.pcx + r * np.cos(ang), self.pcy + r * np.sin(ang)).min() <= 0:
            return False
        # Some sclera must show beside the iris.
        sides = self.depth(np.array([self.icx - self.ri - margin, self.icx + self.ri + margin]),
                           np.array([self.icy, self.icy]))
        return bool(sides.max() > 0)

    def _to_image(self, xl, yl):
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        return self.ex + xl * c - yl * s, self.ey + xl * s + yl * c

    def local(self, x, y):
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        dx, dy = x - self.ex, y - self.ey
        return dx * c + dy * s, -dx * s + dy * c

    def _lids(self, t):
        """Upper and lower lid heights (local y; the upper one is negative) at t = local x / half-width."""
        base = np.clip(1.0 - t * t, 0.0, None)
        up = -self.hu * base ** self.pu * (1.0 + self.su * t)
        lo = self.hl * base ** self.pl * (1.0 + self.sl * t)
        return up, lo

    def depth(self, x, y):
        """Vertical distance inside the eye opening (negative outside)."""
        xr, yr = self.local(x, y)
        up, lo = self._lids(xr / self.a)
        return np.minimum(yr - up, lo - yr)

    def mask(self, resolution) -> np.ndarray:
        """Class indices at the pixel centres: 0 skin, 1 sclera, 2 iris, 3 pupil (lids occlude iris and pupil)."""
        c = (np.arange(resolution) + 0.5) * (2.0 / resolution) - 1.0
        x, y = c[None, :], c[:, None]
        inside = self.depth(x, y) > 0
        iris = np.hypot(x - self.icx, y - self.icy) < self.ri
        pupil = np.hypot(x - self.pcx, y - self.pcy) < self.rp
        out = np.zeros([resolution, resolution], dtype=np.uint8)
        out[inside] = 1
        out[inside & iris] = 2
        out[inside & pupil] = 3
        return out

    # ---- appearance

    def _sample_appearance(self, rng):
        melanin = rng.uniform(0.0, 1.0)
        pos = melanin * (len(_SKIN_TONES) - 1)
        i0 = min(int(pos), len(_SKIN_TONES) - 2)
        skin = _SKIN_TONES[i0] * (1 - (pos - i0)) + _SKIN_TONES[i0 + 1] * (pos - i0)
        redness = rng.uniform(0.0, 0.10)
        skin = skin * np.array([1 + redness, 1 - 0.5 * redness, 1 - 0.4 * redness])
        # NIR: skin is bright, smooth and depends little on melanin.
        self.skin = np.append(skin, rng.uniform(0.56, 0.70) - 0.10 * melanin)
        self.skin_broad = rng.standard_normal([5, 5])
        self.skin_fine = rng.standard_normal([64, 64])
        self.skin_texture = np.array([0.03, 0.032, 0.034, 0.01])

        sclera = np.array([0.93, 0.89, 0.85]) * rng.uniform(0.80, 1.0) + rng.uniform(-0.03, 0.03, 3)
        # NIR: the sclera is about as bright as the skin (little contrast between them).
        self.sclera = np.append(sclera, np.clip(self.skin[3] * rng.uniform(0.98, 1.12), 0.45, 0.8))
        self.sclera_grid = rng.standard_normal([8, 8])
        self.corner_tint = np.array([0.86, 0.55, 0.52, self.sclera[3] * 0.95])
        self.corner_amount = rng.uniform(0.25, 0.6)

        probs = np.array([t[1] for t in _IRIS_TYPES])
        kind = _IRIS_TYPES[int(rng.choice(len(_IRIS_TYPES), p=probs / probs.sum()))]
        self.iris_kind = kind[0]
        gain = rng.uniform(0.72, 1.12)
        jitter = rng.uniform(-0.03, 0.03, 3)
        self.iris_inner = np.clip(np.array(kind[2]) * gain + jitter, 0.02, 1.0)
        self.iris_outer = np.clip(np.array(kind[3]) * gain + jitter, 0.02, 1.0)
        self.iris_contrast = kind[4]
        self.iris_nir = rng.uniform(0.36, 0.50)
        self.fibres = [_periodic_table(rng, kmin=8, kmax=180), _periodic_table(rng, kmin=12, kmax=240)]
        self.collarette_wobble = _periodic_table(rng, kmin=3, kmax=14, slope=1.2)
        self.collarette = rng.uniform(0.28, 0.45)
        self.twist = rng.uniform(-0.6, 0.6)
        n_crypts = int(rng.integers(3, 12))
        self.crypts = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.85), rng.uniform(0.03, 0.08),
                        rng.uniform(0.2, 0.5)) for _ in range(n_crypts)]
        self.limbal = rng.uniform(0.35, 0.75)
        self.pupil = np.array([*([rng.uniform(0.02, 0.06)] * 3), rng.uniform(0.01, 0.035)])

        self.lid_shadow = rng.uniform(0.25, 0.5)
        self.crease_gap = rng.uniform(0.12, 0.26)
        self.crease_depth = rng.uniform(0.08, 0.22)
        self.socket = rng.uniform(0.08, 0.22)

        # Eyelashes as rows: lid (0 upper, 1 lower), root t, length, lean, curl. Most eyes have them.
        n_up, n_lo = (int(rng.integers(40, 90)), int(rng.integers(6, 20))) if rng.uniform() < 0.85 else (0, 0)
        t_up = rng.uniform(-0.9, 0.95, n_up) * -self.side  # Denser and longer towards the outer corner.
        t_lo = rng.uniform(-0.8, 0.9, n_lo) * -self.side
        self.lashes = np.concatenate([
            np.stack([np.zeros(n_up), t_up, rng.uniform(0.06, 0.16, n_up) * (1.0 - 0.35 * t_up ** 2),
                      rng.uniform(-0.3, 0.3, n_up), rng.uniform(0.3, 0.9, n_up)], 1),
            np.stack([np.ones(n_lo), t_lo, rng.uniform(0.025, 0.06, n_lo), rng.uniform(-0.3, 0.3, n_lo),
                      rng.uniform(0.0, 0.3, n_lo)], 1)]).reshape(-1, 5)
        self.lash_dark = rng.uniform(0.6, 0.9)

        # Specular highlights (corneal reflections of the illuminator): the same spots in both modalities. The
        # first is the brightest (pure white); an optional second one is smaller and dimmer.
        self.spots = []
        n_spots = 1 if rng.uniform() < 0.6 else 2
        for k in range(n_spots):
            scale = 1.0 if k == 0 else rng.uniform(0.35, 0.6)
            hw = rng.uniform(0.03, 0.07) * scale
            hh = hw * rng.uniform(0.8, 1.8)
            power = float(rng.choice([2.0, 4.0, 6.0]))
            for _ in range(30):
                ox, oy = rng.uniform(-0.55, 0.55) * self.ri, rng.uniform(-0.75, 0.35) * self.ri
                cx, cy = self.pcx + ox, self.pcy + oy
                if (math.hypot(cx - self.icx, cy - self.icy) < self.ri - max(hw, hh)
                        and self.depth(np.array(cx), np.array(cy)) > max(hw, hh) + 0.02):
                    break
            else:
                cx, cy = self.pcx, self.pcy
            self.spots.append((cx, cy, hw, hh, power, 1.0 if k == 0 else rng.uniform(0.55, 0.7)))

        self.light = (rng.uniform(-0.3, 0.3), rng.uniform(-0.4, 0.1), rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.45))
        self.white_balance = np.array([1 + rng.uniform(-0.04, 0.12), 1.0, 1 + rng.uniform(-0.10, 0.05), 1.0])
        self.noise = (rng.uniform(0.004, 0.014), rng.uniform(0.006, 0.016))

    def render(self, size, spot_min) -> np.ndarray:
        """Float32 image [size, size, 4] (R, G, B, NIR); anti-aliased afterwards by downsampling."""
        f32 = np.float32
        px = 2.0 / size
        c = ((np.arange(size) + 0.5) * px - 1.0).astype(f32)
        x, y = c[None, :], c[:, None]
        xr, yr = self.local(x, y)
        t = xr / f32(self.a)
        up, lo = self._lids(t)
        d_up, d_lo = yr - up, lo - yr
        depth = np.minimum(d_up, d_lo)
        a_open = np.clip(depth / f32(px) + f32(0.5), 0.0, 1.0)

        # Skin: tone, broad shading, fine texture, the eye socket, the lid crease and the lid margins.
        gain = 1.0 + 0.08 * _value_noise(self.skin_broad, size)
        skin = f32(self.skin) * gain[..., None] + f32(self.skin * self.skin_texture) * \
            _value_noise(self.skin_fine, size)[..., None]
        dark = self.socket * np.exp(-((xr / f32(self.a * 1.25)) ** 2 + ((yr + f32(0.05)) / f32(0.6)) ** 2))
        t_crease = xr / f32(self.a * 1.12)
        up_crease, _ = self._lids(t_crease)
        fade = np.clip(1 - t_crease ** 2, 0, None)
        y_crease = up_crease - self.crease_gap * fade ** 0.5
        dark = dark + self.crease_depth * fade * np.exp(-((yr - y_crease) / f32(0.035)) ** 2)
        below = _smoothstep(-0.02, 0.0, d_lo)  # Above the lower lid line (the upper lid margin lives there).
        lash_line = np.exp(-(np.clip(-d_up, 0, None) / f32(0.018)) ** 2)
        dark = dark + 0.55 * lash_line * below * _smoothstep(1.08, 0.98, np.abs(t))
        skin = skin * (1.0 - dark)[..., None]
        lid_light = _smoothstep(0.0, 0.05, -d_up) * _smoothstep(0.0, 0.04, yr - y_crease)
        skin = skin * (1.0 + 0.06 * lid_light)[..., None]
        rim = np.exp(-(np.clip(-d_lo, 0, None) / f32(0.03)) ** 2) * _smoothstep(-0.02, 0.0, d_up)
        rim = rim * _smoothstep(1.04, 0.96, np.abs(t))
        rim_colour = f32([0.82, 0.48, 0.45, self.skin[3] * 0.95])
        img = skin + (0.45 * rim)[..., None] * (rim_colour - skin)

        # Eyeball, computed only inside the bounding box of the opening.
        rows = np.nonzero(a_open.max(axis=1) > 0)[0]
        cols = np.nonzero(a_open.max(axis=0) > 0)[0]
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        grain = _value_noise(self.sclera_grid, size)[box]
        img[box] = self._render_eyeball(x[:, box[1]], y[box[0], :], t[box], d_up[box], d_lo[box], a_open[box],
                                        img[box], grain, px)

        # Eyelashes (dark in both modalities; not part of the mask).
        if len(self.lashes):
            lash = self._draw_lashes(size)
            img *= (1.0 - self.lash_dark * lash[..., None] * f32([1.0, 1.0, 1.0, 0.85]))

        # Illumination: a soft spot light (stronger fall-off for the NIR illuminator) and the camera white balance.
        lx, ly, fall_rgb, fall_nir = self.light
        dist2 = (x - f32(lx)) ** 2 + (y - f32(ly)) ** 2
        img[..., :3] *= np.clip(1 - f32(fall_rgb / 2) * dist2, 0.3, None)[..., None] * f32(self.white_balance[:3])
        img[..., 3] *= np.clip(1 - f32(fall_nir / 2) * dist2, 0.3, None)

        # Specular highlights: white in both modalities, at the same place.
        for cx, cy, hw, hh, power, strength in self.spots:
            hw, hh = max(hw, spot_min), max(hh, spot_min)
            reach = max(hw, hh) + 2 * px
            r0, r1 = [int(np.clip((v + 1) / px, 0, size)) for v in (cy - reach, cy + reach)]
            c0, c1 = [int(np.clip((v + 1) / px, 0, size)) for v in (cx - reach, cx + reach)]
            xs, ys = x[:, c0:c1], y[r0:r1, :]
            dist = np.abs((xs - f32(cx)) / f32(hw)) ** power + np.abs((ys - f32(cy)) / f32(hh)) ** power
            dist = dist ** (1 / power)
            a_spot = strength * np.clip((1.0 - dist) * f32(min(hw, hh) / px) + 0.5, 0.0, 1.0)
            img[r0:r1, c0:c1] += a_spot[..., None] * (1.0 - img[r0:r1, c0:c1])
        return img

    def _render_eyeball(self, x, y, t, d_up, d_lo, a_open, under, grain, px):
        f32 = np.float32
        sclera = f32(self.sclera) * (1.0 + 0.03 * grain)[..., None]
        nasal = np.clip(-self.side * t, 0, None)
        tint = self.corner_amount * _smoothstep(0.5, 0.98, np.abs(t)) * (0.5 + 0.8 * nasal)
        sclera = sclera + np.clip(tint, 0, 1)[..., None] * (f32(self.corner_tint) - sclera)

        dx, dy = x - f32(self.icx), y - f32(self.icy)
        r = np.sqrt(dx * dx + dy * dy)
        eye = sclera
        if r.min() < self.ri + px:
            eye = self._blend_iris(eye, x, y, dx, dy, r, px)
        a_pupil = np.clip((self.rp - np.hypot(x - f32(self.pcx), y - f32(self.pcy))) / f32(px) + 0.5, 0.0, 1.0)
        eye = eye + a_pupil[..., None] * (f32(self.pupil) - eye)
        shadow = self.lid_shadow * np.exp(-np.clip(d_up, 0, None) / f32(0.07)) + \
            0.15 * np.exp(-np.clip(d_lo, 0, None) / f32(0.03))
        eye = eye * (1.0 - shadow)[..., None]
        tear = 0.25 * np.exp(-((d_lo - f32(0.012)) / f32(0.007)) ** 2)
        eye = eye + tear[..., None] * (1.0 - eye)
        return under + a_open[..., None] * (eye - under)

    def _blend_iris(self, eye, x, y, dx, dy, r, px):
        f32 = np.float32
        phi = np.arctan2(dy, dx)
        inner_r = self.rp + math.hypot(self.pcx - self.icx, self.pcy - self.icy)
        rho = np.clip((r - f32(inner_r)) / f32(max(self.ri - inner_r, 1e-6)), 0.0, 1.0)
        fib = (1 - rho) * _lookup(self.fibres[0], phi + f32(self.twist) * rho) + rho * _lookup(self.fibres[1], phi)
        coll_r = self.collarette + 0.05 * _lookup(self.collarette_wobble, phi)
        coll = np.exp(-((rho - coll_r) / f32(0.06)) ** 2)
        inner = _smoothstep(coll_r + 0.05, coll_r - 0.05, rho)
        crypt = np.zeros_like(r)
        for ang, rad, extent, strength in self.crypts:
            radial = rad * (self.ri - inner_r) + inner_r
            cx, cy = self.icx + radial * math.cos(ang), self.icy + radial * math.sin(ang)
            crypt += f32(strength) * np.exp(-((x - f32(cx)) ** 2 + (y - f32(cy)) ** 2) / f32((extent * self.ri) ** 2))
        limbus = _smoothstep(0.72, 1.0, rho)
        ruff = np.exp(-(rho / f32(0.05)) ** 2)
        colour = f32(self.iris_inner) * inner[..., None] + f32(self.iris_outer) * (1 - inner)[..., None]
        iris_rgb = colour * (1.0 + self.iris_contrast * (0.8 * fib + 0.5 * coll - crypt))[..., None]
        iris_rgb *= (1.0 - self.limbal * limbus - 0.35 * ruff)[..., None]
        iris_nir = self.iris_nir * (1.0 + 0.09 * fib + 0.08 * coll - 0.06 * crypt) * \
            (1 - 0.45 * self.limbal * limbus - 0.3 * ruff)
        iris = np.concatenate([iris_rgb, iris_nir[..., None]], axis=-1)
        a_iris = np.clip((self.ri - r) / f32(px) + 0.5, 0.0, 1.0)
        return eye + a_iris[..., None] * (iris - eye)

    def _draw_lashes(self, size) -> np.ndarray:
        import cv2

        lid, t, length, lean, curl = (self.lashes[:, k:k + 1] for k in range(5))
        up, lo = self._lids(t)
        sign = np.where(lid == 0, -1.0, 1.0)
        root = np.where(lid == 0, up, lo) + sign * 0.006
        angle = 0.8 * (lean + 0.9 * t)  # Lashes fan outwards towards the corners.
        s = np.linspace(0.0, 1.0, 8)[None, :]
        xl = t * self.a + length * s * np.sin(angle)
        yl = root + sign * length * (s * np.cos(angle) - 0.3 * curl * s * s)
        xi, yi = self._to_image(xl, yl)
        pts = np.stack([(xi + 1) / 2 * size - 0.5, (yi + 1) / 2 * size - 0.5], -1)
        pts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits (shift=4).
        canvas = np.zeros([size, size], dtype=np.uint8)
        thickness = max(1, int(round(0.004 * size)))
        cv2.polylines(canvas, list(pts), False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
        return canvas.astype(np.float32) / 255.0


def render_demo_pair(resolution: int, seed: int, index: int = 0):
    """Render demo sample ``index`` of ``seed``: (rgb uint8 [R,R,3], nir uint8 [R,R], mask uint8 [R,R]).

    Each sample has its own random streams (derived from ``(seed, index)``), so a sample does not depend on how
    many others are rendered. The geometry does not depend on the resolution once it is 64 or more.
    """
    resolution = int(resolution)
    if resolution < 16 or not _is_power_of_two(resolution):
        raise ValueError(f"demo resolution must be a power of two >= 16, got {resolution}")
    eye = _Eye(np.random.default_rng([int(seed), int(index), 0]), resolution)
    noise_rng = np.random.default_rng([int(seed), int(index), 1])
    ss = 4 if resolution <= 32 else 2
    big = eye.render(resolution * ss, spot_min=2.0 / resolution)
    img = big.reshape(resolution, ss, resolution, ss, 4).mean(axis=(1, 3), dtype=np.float64)
    sigma_rgb, sigma_nir = eye.noise
    lum = noise_rng.standard_normal([resolution, resolution, 1]) * sigma_rgb
    chroma = noise_rng.standard_normal([resolution, resolution, 3]) * (sigma_rgb * 0.5)
    img[..., :3] += lum + chroma
    img[..., 3] += noise_rng.standard_normal([resolution, resolution]) * sigma_nir
    img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3]), np.ascontiguousarray(img[..., 3]), eye.mask(resolution)


def write_demo_dataset(dest, count=100, resolution=64, seed=0, overwrite=False, progress=False) -> dict:
    """Write ``count`` demo pairs to ``dest``: images/, NIR/, masks/ (eye_{i:05d}.png) and classes.json.

    The folder appears only when complete; the same arguments give byte-identical files.
    """
    count = int(count)
    if count < 1:
        raise DatasetError("--count", f"must be at least 1, got {count}")
    if int(resolution) < 16 or not _is_power_of_two(int(resolution)):
        raise DatasetError("--resolution", f"must be a power of two >= 16, got {resolution}")
    if int(seed) < 0:
        raise DatasetError("--seed", f"must be non-negative, got {seed}")
    with DatasetWriter(dest, overwrite=overwrite) as writer:
        for i in _progress(range(count), progress, "rendering", total=count):
            rgb, nir, mask = render_demo_pair(resolution, seed, i)
            name = f"eye_{i:05d}.png"
            writer.write_png(f"images/{name}", rgb)
            writer.write_png(f"NIR/{name}", nir)
            writer.write_png(f"masks/{name}", mask)
        writer.write_json("classes.json", {"classes": list(DEMO_CLASSES),
                                           "description": "mask value = index into classes"})
    return dict(dest=os.fspath(dest), count=count, resolution=int(resolution), seed=int(seed))
