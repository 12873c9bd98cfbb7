"""Annotation palettes: which class ids exist, their names, and the colours and grey levels that mean each class.

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
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import PIL.Image

from interpreter.annotation_errors import PaletteError

__all__ = ['Palette', 'PaletteClass', 'BUILTIN_PALETTES', 'load_palette', 'parse_palette', 'luma', 'hex_color']

PALETTE_DIR = Path(__file__).resolve().parent / 'palettes'
BUILTIN_PALETTES = ('ocular_4class', 'ocular_10class')


@dataclass(frozen=True)
class PaletteClass:
    id: int
    name: str
    colors: Tuple[Tuple[int, int, int], ...] = ()
    grey_levels: Tuple[Tuple[int, int], ...] = ()  # explicit inclusive ranges; empty = the luma of the colours
    description: str = ''


@dataclass(frozen=True)
class Palette:
    name: str
    classes: Tuple[PaletteClass, ...]
    source: str = ''
    description: str = ''

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
        return tuple((g, g) for g in luma(np.array(cls.colors, np.uint8).reshape(-1, 3)).tolist())

    def to_json(self) -> dict:
        """The palette in its file format (colours as hex strings)."""
        classes = []
        for c in self.classes:
            item = {'id': c.id, 'name': c.name}
            if c.colors:
                item['colors'] = ['#%02x%02x%02x' % rgb for rgb in c.colors]
            if c.grey_levels:
                item['grey_levels'] = [lo if lo == hi else [lo, hi] for lo, hi in c.grey_levels]
            if c.description:
                item['description'] = c.description
            classes.append(item)
        out = {'name': self.name}
        if self.description:
            out['description'] = self.description
        out['classes'] = classes
        return out


_TOP_KEYS = ('name', 'description', 'classes')
_CLASS_KEYS = ('id', 'name', 'colors', 'grey_levels', 'description')
_HEX_RE = re.compile(r'^#[0-9a-fA-F]{6}$')


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_palette(obj, source: str = '<palette>') -> Palette:
    """Validate a palette already loaded from JSON (``source`` names it in error messages)."""
    def fail(problem):
        raise PaletteError(f'palette {source}', problem)

    name = Path(source).stem if source and not source.startswith('<') else 'palette'
    description = ''
    if isinstance(obj, dict):
        for key in obj:
            if key not in _TOP_KEYS:
                fail(f"unknown key '{key}' (allowed: {', '.join(_TOP_KEYS)})")
        if 'classes' not in obj:
            fail("missing key 'classes'")
        if 'name' in obj:
            if not isinstance(obj['name'], str) or not obj['name']:
                fail("'name' must be a non-empty string")
            name = obj['name']
        if 'description' in obj:
            if not isinstance(obj['description'], str):
                fail("'description' must be a string")
            description = obj['description']
        items = obj['classes']
    else:
        items = obj
    if not isinstance(items, list) or not items:
        fail("'classes' must be a non-empty list of class objects")

    classes = []
    seen_ids, seen_names, seen_colors, seen_grey = {}, {}, {}, {}
    for i, item in enumerate(items):
        where = f'classes[{i}]'
        if not isinstance(item, dict):
            fail(f"{where} must be an object with 'id' and 'name'")
        for key in item:
            if key not in _CLASS_KEYS:
                fail(f"{where}: unknown key '{key}' (allowed: {', '.join(_CLASS_KEYS)})")
        for key in ('id', 'name'):
            if key not in item:
                fail(f"{where}: missing key '{key}'")
        cid = item['id']
        if not _is_int(cid) or not 0 <= cid <= 255:
            fail(f"{where}: 'id' must be an integer 0..255, got {cid!r}")
        if cid in seen_ids:
            fail(f"{where}: duplicate 'id' {cid} (also classes[{seen_ids[cid]}])")
        seen_ids[cid] = i
        where = f'classes[{i}] (id {cid})'
        cname = item['name']
        if not isinstance(cname, str) or not cname.strip():
            fail(f"{where}: 'name' must be a non-empty string")
        if cname in seen_names:
            fail(f"{where}: duplicate 'name' '{cname}' (also classes[{seen_names[cname]}])")
        seen_names[cname] = i
        cdesc = item.get('description', '')
        if not isinstance(cdesc, str):
            fail(f"{where}: 'description' must be a string")

        colors = []
        raw_colors = item.get('colors', [])
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
                fail(f"{where}: duplicate colour in 'colors': {hex_color(rgb)} (also in classes[{seen_colors[rgb]}])")
            seen_colors[rgb] = i
            colors.append(rgb)

        grey = []
        raw_grey = item.get('grey_levels', [])
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


def load_palette(spec: Union[str, os.PathLike, Palette] = 'ocular_4class') -> Palette:
    """A :class:`Palette` from a built-in name (``ocular_4class``, ``ocular_10class``) or a JSON file path."""
    if isinstance(spec, Palette):
        return spec
    spec_str = os.fspath(spec)
    path = Path(spec_str)
    if spec_str in BUILTIN_PALETTES and not path.exists():
        path = PALETTE_DIR / f'{spec_str}.json'
    elif not path.is_file():
        raise PaletteError(f'palette {spec_str}',
                           f"no such file and not a built-in palette (built-in: {', '.join(BUILTIN_PALETTES)})")
    try:
        text = path.read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as e:
        raise PaletteError(f'palette {path}', f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise PaletteError(f'palette {path}', f'not valid JSON: {e.msg} at line {e.lineno} column {e.colno}') from None
    return parse_palette(obj, str(path))


def hex_color(rgb) -> str:
    """``#rrggbb`` of an RGB triple."""
    return '#%02x%02x%02x' % tuple(int(v) for v in rgb)


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of [N, 3] uint8 colours exactly as PIL ``convert('L')`` computes it."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(1, -1, 3)
    if rgb.shape[1] == 0:
        return np.zeros(0, np.uint8)
    return np.asarray(PIL.Image.fromarray(rgb, 'RGB').convert('L')).reshape(-1)
