"""Importing a person's annotations: GIMP projects or colour PNGs -> class-index masks for the interpreter.

Step 3 of the pipeline (``prepare_annotations.py``). The annotator gets ``image_{id}.jpg`` / ``image_{id}_NIR.jpg``
pairs from ``make_training_data.py``, paints each class in its own colour in GIMP, and saves ``image_{id}.xcf``
and/or a flattened ``image_{id}_mask.png``. :func:`import_annotations` turns a folder of those into what
``train_interpreter.py`` reads: ``image_mask{k}.npy`` (uint8 class ids), ``image_{k}.jpg``, ``image_{k}_NIR.jpg``
for k = 0..N-1, ``latent_stylegan.npy`` (row k = the z of pair k) and ``annotations.json`` (what came from where).

Palette files
-------------
A palette is a JSON object (a bare list of classes is accepted too)::

    {
      "name": "ocular_4class",                 # optional, defaults to the file name
      "description": "...",                    # optional
      "classes": [
        {"id": 0, "name": "background", "colors": ["#000000"], "grey_levels": [[0, 14]]},
        {"id": 1, "name": "iris", "colors": ["#0000ff", [0, 0, 250]], "grey_levels": [29]},
        {"id": 4, "name": "bottom lid whole", "grey_levels": [177, 174], "description": "..."}
      ]
    }

* ``id``: the class index written into the masks, an integer 0..255, unique. Class 0 (background) must exist: it is
  also the class of fully transparent pixels.
* ``name``: a non-empty string, unique.
* ``colors`` (optional): the RGB colours that mean the class, each ``"#rrggbb"`` or ``[r, g, b]``; several colours per
  class are allowed, a colour may belong to one class only.
* ``grey_levels`` (optional): grey values (integers 0..255 or inclusive ranges ``[lo, hi]``) after ITU-R 601 luma as
  PIL's ``convert('L')`` computes it, the rule of the authors' preprocessing notebook. When absent, a class's grey
  levels are the luma of its colours. Levels may not overlap between classes.
* ``description`` (optional): free text.

Every class needs ``colors`` or ``grey_levels``. No other keys are allowed; every problem is reported as one line
naming the palette file and the key. The built-in palettes are ``ocular_4class`` and ``ocular_10class``
(``interpreter/palettes/*.json``).

Colour -> class rules (:func:`mask_from_colors`)
------------------------------------------------
* Pixels with alpha 0 are background (class 0), whatever their RGB. Other pixels are judged by their RGB alone
  (straight, not premultiplied alpha).
* ``match='auto'`` on colour input: a pixel's colour must be one of the palette colours; classes that list no colours
  (grey-level-only classes) are matched by the pixel's luma against their grey levels. On grey input (a 2-D array or a
  single channel, plus optional alpha) the value is matched against the grey levels.
* ``match='grey'``: every pixel is first converted to luma (PIL ``convert('L')``) and matched against the grey levels,
  which reproduces the notebook's ``convert('L')`` + remapping, except that unlisted levels are an error here.
* ``snap=d`` (> 0): a colour that matches nothing exactly is given the class of the palette colours within Euclidean
  RGB distance ``d`` (grey mode: grey levels within ``d``) when they all belong to one class; when they belong to
  several classes, or nothing is that close, it is an error.
* Any pixel left unmatched raises :class:`AnnotationError`, one line naming the source, up to three colours (hex and
  RGB, pixel count, the nearest palette class) and how many more there are.

Flattening GIMP projects (:func:`flatten_xcf`)
----------------------------------------------
The bottom layer is the photo the annotator painted over and is left out; the other layers are composited bottom to
top onto a transparent canvas with Normal alpha-over (straight alpha, 8-bit gamma values), honouring visibility,
opacity, offsets, applied layer masks and layer groups. Blend modes other than Normal, and floating selections, are
refused. On the authors' CrossEyed projects this reproduces their ``image_{id}_mask.png`` on every pixel.
"""

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image

import dnnlib
from dnnlib.util import atomic_write
from interpreter.xcf import NORMAL_MODES, XcfError, XcfLayer, read_xcf

__all__ = ["AnnotationError", "PaletteError", "Palette", "PaletteClass", "BUILTIN_PALETTES", "load_palette",
           "parse_palette", "flatten_xcf", "mask_from_colors", "import_annotations", "find_annotations"]

PALETTE_DIR = Path(__file__).resolve().parent / "palettes"
BUILTIN_PALETTES = ("ocular_4class", "ocular_10class")
PASS_THROUGH_MODE = 61


class AnnotationError(dnnlib.util.FileError):
    """Bad annotation input. ``str(e)`` is one line: ``<file>: <problem>``."""


class PaletteError(AnnotationError):
    """A palette file that is not valid JSON or breaks the palette format."""


# ---------------------------------------------------------------------------------------------------------------------
# Palettes


@dataclass(frozen=True)
class PaletteClass:
    id: int
    name: str
    colors: Tuple[Tuple[int, int, int], ...] = ()
    grey_levels: Tuple[Tuple[int, int], ...] = ()  # explicit inclusive ranges; empty = the luma of the colours
    description: str = ""


@dataclass(frozen=True)
class Palette:
    name: str
    classes: Tuple[PaletteClass, ...]
    source: str = ""
    description: str = ""

    @property
    def num_classes(self) -> int:
        """Largest id + 1 (the ``number_class`` an interpreter config needs)."""
        return max(c.id for c in self.classes) + 1

    def by_id(self, class_id: int) -> PaletteClass:
        for c in self.classes:
            if c.id == class_id:
                return c
        raise KeyError(class_id)

    def grey_ranges(self, cls: PaletteClass) -> Tuple[Tuple[int, int], ...]:
        if cls.grey_levels:
            return cls.grey_levels
        return tuple((g, g) for g in _luma(np.array(cls.colors, np.uint8).reshape(-1, 3)).tolist())

    def to_json(self) -> dict:
        """The palette in its file format (colours as hex strings)."""
        classes = []
        for c in self.classes:
            item = {"id": c.id, "name": c.name}
            if c.colors:
                item["colors"] = ["#%02x%02x%02x" % rgb for rgb in c.colors]
            if c.grey_levels:
                item["grey_levels"] = [lo if lo == hi else [lo, hi] for lo, hi in c.grey_levels]
            if c.description:
                item["description"] = c.description
            classes.append(item)
        out = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["classes"] = classes
        return out


_TOP_KEYS = ("name", "description", "classes")
_CLASS_KEYS = ("id", "name", "colors", "grey_levels", "description")
_HEX_RE = re.compile(r"^#[0-9a-fA-F]{6}$")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_palette(obj, source: str = "<palette>") -> Palette:
    """Validate a palette already loaded from JSON (``source`` names it in error messages)."""
    def fail(problem):
        raise PaletteError(f"palette {source}", problem)

    name = Path(source).stem if source and not source.startswith("<") else "palette"
    description = ""
    if isinstance(obj, dict):
        for key in obj:
            if key not in _TOP_KEYS:
                fail(f"unknown key '{key}' (allowed: {', '.join(_TOP_KEYS)})")
        if "classes" not in obj:
            fail("missing key 'classes'")
        if "name" in obj:
            if not isinstance(obj["name"], str) or not obj["name"]:
                fail("'name' must be a non-empty string")
            name = obj["name"]
        if "description" in obj:
            if not isinstance(obj["description"], str):
                fail("'description' must be a string")
            description = obj["description"]
        items = obj["classes"]
    else:
        items = obj
    if not isinstance(items, list) or not items:
        fail("'classes' must be a non-empty list of class objects")

    classes = []
    seen_ids, seen_names, seen_colors, seen_grey = {}, {}, {}, {}
    for i, item in enumerate(items):
        where = f"classes[{i}]"
        if not isinstance(item, dict):
            fail(f"{where} must be an object with 'id' and 'name'")
        for key in item:
            if key not in _CLASS_KEYS:
                fail(f"{where}: unknown key '{key}' (allowed: {', '.join(_CLASS_KEYS)})")
        for key in ("id", "name"):
            if key not in item:
                fail(f"{where}: missing key '{key}'")
        cid = item["id"]
        if not _is_int(cid) or not 0 <= cid <= 255:
            fail(f"{where}: 'id' must be an integer 0..255, got {cid!r}")
        if cid in seen_ids:
            fail(f"{where}: duplicate 'id' {cid} (also classes[{seen_ids[cid]}])")
        seen_ids[cid] = i
        where = f"classes[{i}] (id {cid})"
        cname = item["name"]
        if not isinstance(cname, str) or not cname.strip():
            fail(f"{where}: 'name' must be a non-empty string")
        if cname in seen_names:
            fail(f"{where}: duplicate 'name' '{cname}' (also classes[{seen_names[cname]}])")
        seen_names[cname] = i
        cdesc = item.get("description", "")
        if not isinstance(cdesc, str):
            fail(f"{where}: 'description' must be a string")

        colors = []
        raw_colors = item.get("colors", [])
        if not isinstance(raw_colors, list):
            fail(f"{where}: 'colors' must be a list of '#rrggbb' strings or [r, g, b] lists")
        for c in raw_colors:
            if isinstance(c, str) and _HEX_RE.match(c):
                rgb = (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16))
            elif isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c):
                rgb = tuple(c)
            else:
                fail(f"{where}: bad entry in 'colors': {c!r} (use '#rrggbb' or [r, g, b] with values 0..255)")
            if rgb in seen_colors:
                fail(f"{where}: duplicate colour in 'colors': {_hex(rgb)} (also in classes[{seen_colors[rgb]}])")
            seen_colors[rgb] = i
            colors.append(rgb)

        grey = []
        raw_grey = item.get("grey_levels", [])
        if not isinstance(raw_grey, list):
            fail(f"{where}: 'grey_levels' must be a list of integers 0..255 or [lo, hi] ranges")
        for g in raw_grey:
            if _is_int(g) and 0 <= g <= 255:
                lo = hi = g
            elif (isinstance(g, list) and len(g) == 2 and all(_is_int(v) and 0 <= v <= 255 for v in g)
                  and g[0] <= g[1]):
                lo, hi = g
            else:
                fail(f"{where}: bad entry in 'grey_levels': {g!r} (use an integer 0..255 or [lo, hi] with lo <= hi)")
            for level in range(lo, hi + 1):
                if level in seen_grey:
                    fail(f"{where}: grey level {level} in 'grey_levels' is also used by classes[{seen_grey[level]}]")
                seen_grey[level] = i
            grey.append((lo, hi))
        if not colors and not grey:
            fail(f"{where}: needs 'colors' or 'grey_levels'")
        classes.append(PaletteClass(id=cid, name=cname, colors=tuple(colors), grey_levels=tuple(grey),
                                    description=cdesc))
    if 0 not in seen_ids:
        fail("no class with 'id' 0 (background, also used for transparent pixels)")
    return Palette(name=name, classes=tuple(classes), source=source, description=description)


def load_palette(spec: Union[str, os.PathLike, Palette] = "ocular_4class") -> Palette:
    """A :class:`Palette` from a built-in name (``ocular_4class``, ``ocular_10class``) or a JSON file path."""
    if isinstance(spec, Palette):
        return spec
    spec_str = os.fspath(spec)
    path = Path(spec_str)
    if spec_str in BUILTIN_PALETTES and not path.exists():
        path = PALETTE_DIR / f"{spec_str}.json"
    elif not path.is_file():
        raise PaletteError(f"palette {spec_str}",
                           f"no such file and not a built-in palette (built-in: {', '.join(BUILTIN_PALETTES)})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PaletteError(f"palette {path}", f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PaletteError(f"palette {path}", f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    return parse_palette(obj, str(path))


# ---------------------------------------------------------------------------------------------------------------------
# Colours -> class ids


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of [N, 3] uint8 colours exactly as PIL ``convert('L')`` computes it."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(1, -1, 3)
    if rgb.shape[1] == 0:
        return np.zeros(0, np.uint8)
    return np.asarray(PIL.Image.fromarray(rgb, "RGB").convert("L")).reshape(-1)


def _split_input(arr: np.ndarray, source_name: str):
    """Return (colour [N, 3] or None, grey [N] or None, alpha [N] or None, shape)."""
    if isinstance(arr, PIL.Image.Image):
        arr = np.asarray(arr)
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise AnnotationError(source_name, f"annotation pixels must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise AnnotationError(source_name, f"annotation must be [H, W] grey or [H, W, 1-4] channels, got "
                                           f"shape {list(arr.shape)}")
    shape = arr.shape[:2]
    flat = arr.reshape(-1, arr.shape[-1])
    nch = flat.shape[1]
    alpha = flat[:, -1] if nch in (2, 4) else None
    if nch in (1, 2):
        return None, flat[:, 0], alpha, shape
    return flat[:, :3], None, alpha, shape


def _grey_lookup(palette: Palette, explicit_only_colorless: bool) -> np.ndarray:
    """A 256-entry table grey level -> class id (-1 = none). With ``explicit_only_colorless`` only classes without
    colours take part (the grey-only classes of colour matching)."""
    table = np.full(256, -1, np.int16)
    for cls in palette.classes:
        if explicit_only_colorless and cls.colors:
            continue
        for lo, hi in palette.grey_ranges(cls):
            clash = table[lo:hi + 1]
            if (clash >= 0).any():
                other = palette.by_id(int(clash[clash >= 0][0]))
                raise PaletteError(f"palette {palette.source or palette.name}",
                                   f"classes '{other.name}' and '{cls.name}' share a grey level, so grey matching "
                                   "is ambiguous; give them 'grey_levels'")
            table[lo:hi + 1] = cls.id
    return table


def _grey_distance_classes(values: np.ndarray, palette: Palette, snap: float):
    """For grey values, the set of class ids with a grey level within ``snap``."""
    out = []
    for v in values.tolist():
        found = set()
        for cls in palette.classes:
            for lo, hi in palette.grey_ranges(cls):
                d = 0 if lo <= v <= hi else min(abs(v - lo), abs(v - hi))
                if d <= snap:
                    found.add(cls.id)
        out.append(found)
    return out


def _describe_unmatched(items, source_name, palette, what, total_pixels, snap):
    """items: list of (label, count, hint) sorted by count descending."""
    shown = "; ".join(f"{label} on {count} pixel{'s' if count != 1 else ''}{hint}" for label, count, hint in items[:3])
    more = len(items) - 3
    extra = f"; and {more} more {what}{'s' if more != 1 else ''}" if more > 0 else ""
    n = len(items)
    snap_note = f" (snap {snap:g})" if snap else ""
    return AnnotationError(source_name, f"{n} {what}{'s' if n != 1 else ''} not in palette '{palette.name}'"
                                        f"{snap_note}, {total_pixels} pixels in all: {shown}{extra}")


def map_to_classes(image, palette: Palette, source_name: str, snap: float = 0, match: str = "auto"):
    """Like :func:`mask_from_colors`, also returning how many pixels were snapped: ``(mask, snapped_pixels)``."""
    palette = load_palette(palette)
    if match not in ("auto", "grey"):
        raise ValueError(f"match must be 'auto' or 'grey', got {match!r}")
    if snap < 0:
        raise ValueError(f"snap must be >= 0, got {snap}")
    color, grey, alpha, shape = _split_input(image, source_name)
    npix = shape[0] * shape[1]
    out = np.zeros(npix, np.uint8)
    valid = np.ones(npix, bool) if alpha is None else alpha > 0
    snapped = 0
    if color is not None and match == "grey":
        grey, color = _luma(color), None

    if grey is not None:  # grey levels
        table = _grey_lookup(palette, explicit_only_colorless=False)
        values = grey[valid]
        classes = table[values]
        bad = classes < 0
        if bad.any():
            levels, counts = np.unique(values[bad], return_counts=True)
            fixes = {}
            unresolved = []
            near = _grey_distance_classes(levels, palette, snap) if snap > 0 else [set()] * len(levels)
            for level, count, found in zip(levels.tolist(), counts.tolist(), near):
                if len(found) == 1:
                    fixes[level] = next(iter(found))
                else:
                    hint = f" (within {snap:g} of {_names(palette, found)})" if len(found) > 1 else ""
                    unresolved.append((f"grey level {level}", count, hint))
            if unresolved:
                unresolved.sort(key=lambda t: -t[1])
                raise _describe_unmatched(unresolved, source_name, palette, "grey level",
                                          sum(c for _, c, _ in unresolved), snap)
            fix_table = np.full(256, -1, np.int16)
            for level, cid in fixes.items():
                fix_table[level] = cid
            classes = np.where(bad, fix_table[values], classes)
            snapped = int(bad.sum())
        out[valid] = classes.astype(np.uint8)
        return out.reshape(shape), snapped

    # colours
    pal_rgb, pal_cls = [], []
    for cls in palette.classes:
        for rgb in cls.colors:
            pal_rgb.append(rgb)
            pal_cls.append(cls.id)
    pal_rgb = np.array(pal_rgb, np.int64).reshape(-1, 3)
    pal_cls = np.array(pal_cls, np.int64)
    pal_keys = (pal_rgb[:, 0] << 16) | (pal_rgb[:, 1] << 8) | pal_rgb[:, 2]
    order = np.argsort(pal_keys)
    pal_keys_sorted, pal_cls_sorted = pal_keys[order], pal_cls[order]

    c = color[valid].astype(np.int64)
    keys = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    ucls = np.full(len(uniq), -1, np.int64)
    if len(pal_keys_sorted):
        idx = np.clip(np.searchsorted(pal_keys_sorted, uniq), 0, len(pal_keys_sorted) - 1)
        hit = pal_keys_sorted[idx] == uniq
        ucls[hit] = pal_cls_sorted[idx[hit]]
    miss = ucls < 0
    if miss.any():  # grey-level-only classes, by luma
        urgb = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], 1).astype(np.uint8)
        colorless = _grey_lookup(palette, explicit_only_colorless=True)
        by_luma = colorless[_luma(urgb[miss])]
        ucls[np.flatnonzero(miss)[by_luma >= 0]] = by_luma[by_luma >= 0]
        miss = ucls < 0
    usnapped = np.zeros(len(uniq), bool)
    if miss.any():
        unresolved = []
        mi = np.flatnonzero(miss)
        urgb = np.stack([(uniq[mi] >> 16) & 255, (uniq[mi] >> 8) & 255, uniq[mi] & 255], 1)
        if len(pal_rgb):
            dist = np.sqrt(((urgb[:, None, :] - pal_rgb[None, :, :]) ** 2).sum(-1))  # [M, P]
        else:
            dist = np.full((len(mi), 0), np.inf)
        for j, u in enumerate(mi.tolist()):
            rgb = tuple(urgb[j].tolist())
            found = set(pal_cls[dist[j] <= snap].tolist()) if snap > 0 else set()
            if len(found) == 1:
                ucls[u] = next(iter(found))
                usnapped[u] = True
                continue
            if len(found) > 1:
                hint = f" (ambiguous: within {snap:g} of {_names(palette, found)})"
            elif dist.shape[1]:
                k = int(np.argmin(dist[j]))
                hint = (f" (nearest: {palette.by_id(int(pal_cls[k])).name} {_hex(pal_rgb[k])} at distance "
                        f"{dist[j, k]:.1f})")
            else:
                hint = ""
            unresolved.append((f"colour {_hex(rgb)} = RGB({rgb[0]}, {rgb[1]}, {rgb[2]})", int(counts[u]), hint))
        if unresolved:
            unresolved.sort(key=lambda t: -t[1])
            raise _describe_unmatched(unresolved, source_name, palette, "colour",
                                      sum(c for _, c, _ in unresolved), snap)
        snapped = int(counts[usnapped].sum())
    out[valid] = ucls[inverse].astype(np.uint8)
    return out.reshape(shape), snapped


def _names(palette: Palette, ids) -> str:
    return " and ".join(f"'{palette.by_id(i).name}'" for i in sorted(ids))


def mask_from_colors(rgba_or_rgb, palette: Union[str, os.PathLike, Palette], source_name: str, snap: float = 0,
                     match: str = "auto") -> np.ndarray:
    """Class-index mask (uint8 [H, W]) of an annotation image, by the palette's colours (rules in the module doc).

    ``rgba_or_rgb``: uint8 [H, W, 4|3] colours or [H, W(, 1|2)] grey levels (a PIL image is fine too);
    ``source_name`` names the input in error messages. Raises :class:`AnnotationError` for colours not in the palette.
    """
    return map_to_classes(rgba_or_rgb, palette, source_name, snap=snap, match=match)[0]


# ---------------------------------------------------------------------------------------------------------------------
# GIMP projects


def _composite(dst: np.ndarray, layer_rgba: np.ndarray, x: int, y: int, opacity: float):
    """Normal alpha-over of ``layer_rgba`` (float [h, w, 4], alpha 0..1) at (x, y) onto ``dst`` (float [H, W, 4])."""
    H, W = dst.shape[:2]
    h, w = layer_rgba.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 >= x1 or y0 >= y1:
        return
    src = layer_rgba[y0 - y:y1 - y, x0 - x:x1 - x]
    d = dst[y0:y1, x0:x1]
    sa = src[..., 3:] * opacity
    da = d[..., 3:]
    oa = sa + da * (1.0 - sa)
    with np.errstate(invalid="ignore", divide="ignore"):
        rgb = np.where(oa > 0, (src[..., :3] * sa + d[..., :3] * da * (1.0 - sa)) / oa, 0.0)
    d[..., :3] = rgb
    d[..., 3:] = oa


def _layer_float(layer: XcfLayer) -> np.ndarray:
    rgba = layer.pixels.astype(np.float64)
    rgba[..., 3] /= 255.0
    if layer.mask is not None and layer.apply_mask:
        rgba[..., 3] *= layer.mask / 255.0
    return rgba


def flatten_xcf(path, exclude_bottom: bool = True) -> np.ndarray:
    """Composite a GIMP project's layers (bottom to top, Normal mode) into RGBA uint8 [H, W, 4].

    With ``exclude_bottom`` (the default) the bottom layer, the photo the annotator painted over, is left out.
    Raises :class:`AnnotationError` for projects that cannot be flattened this way (other blend modes, floating
    selections, nothing above the image layer) and :class:`interpreter.xcf.XcfError` for unreadable files.
    """
    path = os.fspath(path)
    image = read_xcf(path)
    # Build the layer tree from the item paths (children listed top to bottom, as in the file).
    # Layers without an item path are top-level items, numbered by their position; children of groups carry the
    # path [top-level index, index inside the group, ...].
    root: Dict[tuple, list] = {(): []}
    paths: Dict[int, tuple] = {}
    for layer in reversed(image.layers):  # top to bottom, file order
        item_path = tuple(layer.item_path) if layer.item_path else (len(root[()]),)
        parent = item_path[:-1]
        if parent not in root:
            raise AnnotationError(path, f"layer '{layer.name}' belongs to a layer group that is missing")
        root[parent].append(layer)
        paths[id(layer)] = item_path
        if layer.is_group:
            root[item_path] = []
    top_level = root[()]
    if exclude_bottom:
        if len(top_level) < 2:
            raise AnnotationError(path, "has no layer above the bottom (image) layer; paint the classes on layers "
                                        "above the image")
        if top_level[-1].is_group:
            raise AnnotationError(path, f"the bottom layer '{top_level[-1].name}' is a layer group; the bottom layer "
                                        "must be the image the annotation was painted on")
        top_level = top_level[:-1]

    def render(items: List[XcfLayer]) -> np.ndarray:
        canvas = np.zeros((image.height, image.width, 4), np.float64)
        for layer in reversed(items):  # bottom to top
            if not layer.visible or layer.opacity <= 0:
                continue
            if layer.floating:
                raise AnnotationError(path, f"layer '{layer.name}' is a floating selection; anchor it in GIMP and "
                                            "save again")
            allowed = NORMAL_MODES + ((PASS_THROUGH_MODE,) if layer.is_group else ())
            if layer.mode not in allowed:
                raise AnnotationError(path, f"layer '{layer.name}' uses blend mode {layer.mode_name}; only Normal "
                                            "is supported (set the mode to Normal or merge the layer in GIMP)")
            if layer.is_group:
                sub = render(root[paths[id(layer)]])
                if layer.mask is not None and layer.apply_mask:
                    sub_mask = np.zeros(canvas.shape[:2])
                    _composite_mask(sub_mask, layer)
                    sub[..., 3] *= sub_mask
                _composite(canvas, sub, 0, 0, layer.opacity)
            else:
                _composite(canvas, _layer_float(layer), layer.x, layer.y, layer.opacity)
        return canvas

    canvas = render(top_level)
    out = np.empty(canvas.shape, np.uint8)
    out[..., :3] = np.clip(np.rint(canvas[..., :3]), 0, 255)
    out[..., 3] = np.clip(np.rint(canvas[..., 3] * 255.0), 0, 255)
    return out


def _composite_mask(dst: np.ndarray, layer: XcfLayer):
    """Write a group's layer mask (placed at the group's offsets) into a canvas-sized array of 0..1 factors."""
    H, W = dst.shape
    h, w = layer.mask.shape
    x, y = layer.x, layer.y
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x0 < x1 and y0 < y1:
        dst[y0:y1, x0:x1] = layer.mask[y0 - y:y1 - y, x0 - x:x1 - x] / 255.0


# ---------------------------------------------------------------------------------------------------------------------
# Importing a folder


_XCF_RE = re.compile(r"^image_(\d+)\.xcf$", re.IGNORECASE)
_PNG_RE = re.compile(r"^image_(\d+)_mask\.png$", re.IGNORECASE)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def find_annotations(input_dir) -> Dict[int, Dict[str, Path]]:
    """Annotated ids in ``input_dir``: ``{id: {'xcf': path, 'png': path}}`` (either or both), ascending ids.

    Names are matched case-insensitively; ids are compared as numbers (``image_7`` and ``image_007`` clash).
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise AnnotationError(input_dir, "input folder not found")
    found: Dict[int, Dict[str, Path]] = {}
    for p in sorted(input_dir.iterdir()):
        for kind, regex in (("xcf", _XCF_RE), ("png", _PNG_RE)):
            m = regex.match(p.name)
            if m and p.is_file():
                sample_id = int(m.group(1))
                entry = found.setdefault(sample_id, {})
                if kind in entry:
                    raise AnnotationError(p, f"id {sample_id} is annotated twice (also {entry[kind].name})")
                entry[kind] = p
    for sample_id, entry in found.items():
        stems = {_stem(p) for p in entry.values()}
        if len(stems) > 1:
            names = " and ".join(p.name for p in entry.values())
            raise AnnotationError(input_dir, f"{names} give id {sample_id} different names; rename one")
    return dict(sorted(found.items()))


def _stem(annotation: Path) -> str:
    """``image_{id}`` as spelled in the annotation's file name."""
    m = _XCF_RE.match(annotation.name) or _PNG_RE.match(annotation.name)
    return annotation.name[:m.end(1)]


def _find_partner(input_dir: Path, stem: str, what: str, for_file: str) -> Path:
    wanted = {f"{stem}{ext}".lower() for ext in _IMAGE_EXTS}
    hits = sorted(p for p in input_dir.iterdir() if p.name.lower() in wanted and p.is_file())
    if not hits:
        raise AnnotationError(input_dir / f"{stem}.jpg", f"missing ({what} for {for_file}; .jpeg or .png also "
                                                         "accepted)")
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
        raise AnnotationError(path, f"cannot read image: {e}") from None


def _read_png_annotation(path: Path) -> np.ndarray:
    try:
        with PIL.Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "RGB", "L", "LA"):
                return np.asarray(im).copy()
            if im.mode == "P" and "transparency" in im.info:
                return np.asarray(im.convert("RGBA"))
            if im.mode in ("P", "1", "I;16", "I", "CMYK", "YCbCr"):
                return np.asarray(im.convert("RGB"))
            return np.asarray(im.convert("RGBA"))
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise AnnotationError(path, f"cannot read annotation image: {e}") from None


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
    use = [k for k in ("png", "xcf") if k in files and (source == "auto" or source == k)]
    if not use:
        want = {"xcf": f"image_{sample_id}.xcf", "png": f"image_{sample_id}_mask.png"}[source]
        raise AnnotationError(input_dir / want, f"missing (--source {source} was asked for id {sample_id})")
    masks = {}
    snapped = 0
    for kind in use:
        path = files[kind]
        try:
            rgba = flatten_xcf(path) if kind == "xcf" else _read_png_annotation(path)
        except XcfError as e:
            raise AnnotationError(e.file, e.problem) from None
        masks[kind], n = map_to_classes(rgba, palette, str(path), snap=snap, match=match)
        snapped = max(snapped, n)
    if len(masks) == 2:
        a, b = masks["png"], masks["xcf"]
        if a.shape != b.shape:
            raise AnnotationError(files["xcf"], f"is {b.shape[1]}x{b.shape[0]} but {files['png'].name} is "
                                                f"{a.shape[1]}x{a.shape[0]}; delete the stale one")
        diff = int((a != b).sum())
        if diff:
            raise AnnotationError(files["xcf"], f"and {files['png'].name} disagree on {diff} pixels; delete the stale "
                                                "one (or choose with --source xcf|png)")
    annotation = files[use[0]]
    checked = files[use[1]] if len(use) == 2 else None
    mask = masks[use[0]]

    stem = _stem(annotation)
    image = _find_partner(input_dir, stem, "RGB image", annotation.name)
    nir = _find_partner(input_dir, f"{stem}_NIR", "NIR image", annotation.name)
    size, image_mode, image_format = _open_image(image)
    nir_size, nir_mode, nir_format = _open_image(nir)
    if nir_size != size:
        raise AnnotationError(nir, f"is {nir_size[0]}x{nir_size[1]} but {image.name} is {size[0]}x{size[1]}")
    if (mask.shape[1], mask.shape[0]) != size:
        raise AnnotationError(annotation, f"mask is {mask.shape[1]}x{mask.shape[0]} but {image.name} is "
                                          f"{size[0]}x{size[1]}")
    return _Item(id=sample_id, mask=mask, annotation=annotation, checked=checked, image=image,
                 image_format=image_format, nir=nir, nir_format=nir_format, nir_mode=nir_mode,
                 image_mode=image_mode, snapped=snapped)


def _check_destination(output_dir: Path, input_dir: Path, overwrite: bool):
    out_abs, in_abs = output_dir.resolve(), input_dir.resolve()
    if out_abs == in_abs or out_abs in in_abs.parents:
        raise AnnotationError(output_dir, "the output folder may not be the input folder or contain it")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise AnnotationError(output_dir, "exists and is not a folder")
        if any(output_dir.iterdir()) and not overwrite:
            raise AnnotationError(output_dir, "already exists and is not empty; use --overwrite to replace it")


def _remove(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _write_image(src: Path, src_format: str, dst: Path, fmt: str, mode: str):
    """Copy ``src`` byte for byte when it is already in ``fmt``, else convert it (``mode`` 'RGB' or 'L')."""
    want = "JPEG" if fmt == "jpg" else "PNG"
    if src_format == want:
        with atomic_write(dst, "wb") as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
        return True
    with PIL.Image.open(src) as im:
        im = im.convert(mode)
        with atomic_write(dst, "wb") as f:
            im.save(f, format=want)
    return False


def import_annotations(input_dir, output_dir, palette: Union[str, os.PathLike, Palette] = "ocular_4class",
                       latents=None, ids: Optional[Sequence[int]] = None, snap: float = 0,
                       image_format: str = "jpg", source: str = "auto", match: str = "auto",
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
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if source not in ("auto", "xcf", "png"):
        raise ValueError(f"source must be 'auto', 'xcf' or 'png', got {source!r}")
    palette = load_palette(palette)
    found = find_annotations(input_dir)
    if not found:
        raise AnnotationError(input_dir, "no annotations found (expected image_{id}.xcf or image_{id}_mask.png)")
    if ids is None:
        order = list(found)
    else:
        order = [int(i) for i in ids]
        if not order:
            raise AnnotationError(input_dir, "the list of ids is empty")
        dup = sorted({i for i in order if order.count(i) > 1})
        if dup:
            raise AnnotationError(input_dir, f"id {dup[0]} is listed more than once in ids")
        for i in order:
            if i not in found:
                raise AnnotationError(input_dir / f"image_{i}_mask.png",
                                      f"no annotation for id {i} (expected image_{i}.xcf or image_{i}_mask.png)")
    _check_destination(output_dir, input_dir, overwrite)

    latent_rows = None
    if latents is not None:
        latents = Path(latents)
        try:
            lat = np.load(latents, allow_pickle=False)
        except FileNotFoundError:
            raise AnnotationError(latents, "latent file not found") from None
        except (OSError, ValueError) as e:
            raise AnnotationError(latents, f"cannot read as .npy: {e}") from None
        if lat.ndim != 2:
            raise AnnotationError(latents, f"latents must have shape [num_samples, z_dim], got {list(lat.shape)}")
        too_big = [i for i in order if i >= lat.shape[0]]
        if too_big:
            raise AnnotationError(latents, f"has {lat.shape[0]} rows, so there is no latent for id {too_big[0]}")
        latent_rows = lat[order]

    items = [_load_item(i, found[i], input_dir, palette, snap, match, source) for i in order]
    shape = items[0].mask.shape
    for it in items[1:]:
        if it.mask.shape != shape:
            raise AnnotationError(it.annotation, f"is {it.mask.shape[1]}x{it.mask.shape[0]} but "
                                                 f"{items[0].annotation.name} is {shape[1]}x{shape[0]}; all "
                                                 "annotated images must have one size")

    # Write everything into a temporary folder beside the output, then move it into place.
    output_dir = Path(os.path.abspath(output_dir))
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_dir.with_name(f"{output_dir.name}.tmp-{os.getpid()}")
    _remove(tmp)
    tmp.mkdir()
    try:
        records = []
        for k, it in enumerate(items):
            with atomic_write(tmp / f"image_mask{k}.npy", "wb") as f:
                np.save(f, it.mask)
            img_name, nir_name = f"image_{k}.{image_format}", f"image_{k}_NIR.{image_format}"
            img_copied = _write_image(it.image, it.image_format, tmp / img_name, image_format, "RGB")
            nir_copied = _write_image(it.nir, it.nir_format, tmp / nir_name, image_format, "L")
            counts = np.bincount(it.mask.reshape(-1), minlength=256)
            records.append({
                "index": k,
                "id": it.id,
                "mask": f"image_mask{k}.npy",
                "image": img_name,
                "nir": nir_name,
                "sources": {
                    "annotation": it.annotation.name,
                    "checked_against": it.checked.name if it.checked else None,
                    "image": it.image.name,
                    "nir": it.nir.name,
                },
                "image_copied": img_copied,
                "nir_copied": nir_copied,
                "snapped_pixels": it.snapped,
                "class_counts": {str(c.id): int(counts[c.id]) for c in palette.classes},
            })
        summary = {
            "input_dir": str(input_dir.resolve()),
            "palette": palette.to_json(),
            "num_classes": palette.num_classes,
            "snap": snap,
            "match": match,
            "source": source,
            "ids": order,
            "items": records,
            "latents": None,
        }
        if latent_rows is not None:
            with atomic_write(tmp / "latent_stylegan.npy", "wb") as f:
                np.save(f, latent_rows)
            summary["latents"] = {"file": "latent_stylegan.npy", "source": str(latents.resolve()), "rows": order,
                                  "shape": list(latent_rows.shape), "dtype": str(latent_rows.dtype)}
        with atomic_write(tmp / "annotations.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
        old = None
        if output_dir.exists():
            old = output_dir.with_name(f"{output_dir.name}.old-{os.getpid()}")
            _remove(old)
            os.replace(output_dir, old)
        os.replace(tmp, output_dir)
        if old is not None:
            _remove(old)
    except BaseException:
        _remove(tmp)
        raise
    summary["output_dir"] = str(output_dir)
    return summary
