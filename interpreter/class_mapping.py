"""Annotation pixels -> class ids: an annotation image's colours or grey values mapped through a palette.

:func:`map_to_classes` is the entry point; it hands the pixels to :func:`classes_from_colors` (colour input) or
:func:`classes_from_grey_levels` (grey input, or any input with ``match='grey'``). :func:`mask_from_colors` is
:func:`map_to_classes` without the count of snapped pixels.

Rules
-----
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
"""

import os
from typing import Tuple, Union

import numpy as np
import PIL.Image

from interpreter.annotation_errors import AnnotationError, PaletteError
from interpreter.palette import Palette, hex_color, load_palette, luma

__all__ = ['map_to_classes', 'mask_from_colors', 'classes_from_colors', 'classes_from_grey_levels']


def map_to_classes(image, palette: Union[str, os.PathLike, Palette], source_name: str, snap: float = 0,
                   match: str = 'auto') -> Tuple[np.ndarray, int]:
    """``(mask, snapped_pixels)``: the class-index mask (uint8 [H, W]) of an annotation image and how many of its
    pixels were snapped. Transparent pixels are background; the others go to :func:`classes_from_grey_levels` (grey
    input, or ``match='grey'``) or :func:`classes_from_colors`. Arguments as for :func:`mask_from_colors`."""
    palette = load_palette(palette)
    if match not in ('auto', 'grey'):
        raise ValueError(f"match must be 'auto' or 'grey', got {match!r}")
    if snap < 0:
        raise ValueError(f'snap must be >= 0, got {snap}')
    color, grey, alpha, shape = _split_input(image, source_name)
    valid = np.ones(shape[0] * shape[1], bool) if alpha is None else alpha > 0
    if color is not None and match == 'grey':
        grey = luma(color)
    if grey is not None:
        classes, snapped = classes_from_grey_levels(grey[valid], palette, source_name, snap)
    else:
        classes, snapped = classes_from_colors(color[valid], palette, source_name, snap)
    out = np.zeros(len(valid), np.uint8)
    out[valid] = classes
    return out.reshape(shape), snapped


def mask_from_colors(rgba_or_rgb, palette: Union[str, os.PathLike, Palette], source_name: str, snap: float = 0,
                     match: str = 'auto') -> np.ndarray:
    """Class-index mask (uint8 [H, W]) of an annotation image, by the palette's colours (rules in the module doc):
    :func:`map_to_classes` without the count of snapped pixels.

    ``rgba_or_rgb``: uint8 [H, W, 4|3] colours or [H, W(, 1|2)] grey levels (a PIL image is fine too);
    ``source_name`` names the input in error messages. Raises :class:`AnnotationError` for colours not in the palette.
    """
    return map_to_classes(rgba_or_rgb, palette, source_name, snap=snap, match=match)[0]


def classes_from_grey_levels(values: np.ndarray, palette: Palette, source_name: str,
                             snap: float = 0) -> Tuple[np.ndarray, int]:
    """Class ids (uint8 [N]) of grey values (uint8 [N]) by the palette's grey levels, and how many were snapped:
    a value outside every class's levels takes the one class with a level within ``snap``, else it is an error."""
    table = _grey_lookup(palette, explicit_only_colorless=False)
    classes = table[values]
    bad = classes < 0
    if not bad.any():
        return classes.astype(np.uint8), 0
    levels, counts = np.unique(values[bad], return_counts=True)
    fix_table = np.full(256, -1, np.int16)
    unresolved = []
    near = _grey_distance_classes(levels, palette, snap) if snap > 0 else [set()] * len(levels)
    for level, count, found in zip(levels.tolist(), counts.tolist(), near):
        if len(found) == 1:
            fix_table[level] = next(iter(found))
        else:
            hint = f' (within {snap:g} of {_names(palette, found)})' if len(found) > 1 else ''
            unresolved.append((f'grey level {level}', count, hint))
    if unresolved:
        raise _describe_unmatched(unresolved, source_name, palette, 'grey level', snap)
    classes = np.where(bad, fix_table[values], classes)
    return classes.astype(np.uint8), int(bad.sum())


def classes_from_colors(rgb: np.ndarray, palette: Palette, source_name: str, snap: float = 0) -> Tuple[np.ndarray, int]:
    """Class ids (uint8 [N]) of RGB colours (uint8 [N, 3]), and how many pixels were snapped. A colour takes the class
    that lists it; failing that, a grey-level-only class by its luma; failing that, the one class with a palette colour
    within Euclidean distance ``snap``; else it is an error."""
    pal_rgb, pal_cls = [], []
    for cls in palette.classes:
        for c in cls.colors:
            pal_rgb.append(c)
            pal_cls.append(cls.id)
    pal_rgb = np.array(pal_rgb, np.int64).reshape(-1, 3)
    pal_cls = np.array(pal_cls, np.int64)
    pal_keys = (pal_rgb[:, 0] << 16) | (pal_rgb[:, 1] << 8) | pal_rgb[:, 2]
    order = np.argsort(pal_keys)
    pal_keys_sorted, pal_cls_sorted = pal_keys[order], pal_cls[order]

    # Each distinct colour is judged once, as one 24-bit key.
    c = rgb.astype(np.int64)
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
        by_luma = colorless[luma(urgb[miss])]
        ucls[np.flatnonzero(miss)[by_luma >= 0]] = by_luma[by_luma >= 0]
        miss = ucls < 0
    snapped = 0
    if miss.any():
        usnapped = np.zeros(len(uniq), bool)
        unresolved = []
        mi = np.flatnonzero(miss)
        urgb = np.stack([(uniq[mi] >> 16) & 255, (uniq[mi] >> 8) & 255, uniq[mi] & 255], 1)
        if len(pal_rgb):
            dist = np.sqrt(((urgb[:, None, :] - pal_rgb[None, :, :]) ** 2).sum(-1))  # [M, P]
        else:
            dist = np.full((len(mi), 0), np.inf)
        for j, u in enumerate(mi.tolist()):
            color = tuple(urgb[j].tolist())
            found = set(pal_cls[dist[j] <= snap].tolist()) if snap > 0 else set()
            if len(found) == 1:
                ucls[u] = next(iter(found))
                usnapped[u] = True
                continue
            if len(found) > 1:
                hint = f' (ambiguous: within {snap:g} of {_names(palette, found)})'
            elif dist.shape[1]:
                k = int(np.argmin(dist[j]))
                hint = (f' (nearest: {palette.by_id(int(pal_cls[k])).name} {hex_color(pal_rgb[k])} at distance '
                        f'{dist[j, k]:.1f})')
            else:
                hint = ''
            unresolved.append((f'colour {hex_color(color)} = RGB({color[0]}, {color[1]}, {color[2]})',
                               int(counts[u]), hint))
        if unresolved:
            raise _describe_unmatched(unresolved, source_name, palette, 'colour', snap)
        snapped = int(counts[usnapped].sum())
    return ucls[inverse].astype(np.uint8), snapped


def _split_input(arr: np.ndarray, source_name: str):
    """Return (colour [N, 3] or None, grey [N] or None, alpha [N] or None, shape)."""
    if isinstance(arr, PIL.Image.Image):
        arr = np.asarray(arr)
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise AnnotationError(source_name, f'annotation pixels must be uint8, got {arr.dtype}')
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise AnnotationError(source_name, f'annotation must be [H, W] grey or [H, W, 1-4] channels, got '
                                           f'shape {list(arr.shape)}')
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
                raise PaletteError(f'palette {palette.source or palette.name}',
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


def _describe_unmatched(items, source_name, palette, what, snap):
    """The error for unmatched colours or grey levels; items: list of (label, pixel count, hint)."""
    items = sorted(items, key=lambda t: -t[1])
    total_pixels = sum(count for _, count, _ in items)
    shown = '; '.join(f"{label} on {count} pixel{'s' if count != 1 else ''}{hint}" for label, count, hint in items[:3])
    more = len(items) - 3
    extra = f"; and {more} more {what}{'s' if more != 1 else ''}" if more > 0 else ''
    n = len(items)
    snap_note = f' (snap {snap:g})' if snap else ''
    return AnnotationError(source_name, f"{n} {what}{'s' if n != 1 else ''} not in palette '{palette.name}'"
                                        f"{snap_note}, {total_pixels} pixels in all: {shown}{extra}")


def _names(palette: Palette, ids) -> str:
    return ' and '.join(f"'{palette.by_id(i).name}'" for i in sorted(ids))
