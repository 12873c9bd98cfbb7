"""A small, self-contained reader for GIMP's native ``.xcf`` files (enough to import annotation projects).

``read_xcf(path)`` returns an :class:`XcfImage` whose ``layers`` run bottom to top, each with its name, offsets,
size, RGBA ``uint8`` pixels, opacity, visibility, blend mode and (if present) its layer mask. Compositing is not done
here; see ``interpreter.xcf_flatten.flatten_xcf``.

What is supported (from the public description of the XCF format):

* header ``gimp xcf `` + version (``file`` = 0, ``vNNN``), canvas width/height, base type (RGB, grey, indexed);
  the precision field (version >= 4); 32-bit file offsets before version 11 and 64-bit ones from version 11 on;
* image properties: compression (none, RLE, zlib) and the colour map of indexed images;
* layers of every base type with or without alpha (RGB, RGBA, grey, grey+alpha, indexed, indexed+alpha), converted to
  RGBA; properties opacity (integer and float), visibility, offsets, blend mode, group membership (item path),
  floating selection and apply-mask; layer masks (a channel whose grey level scales the alpha);
* the hierarchy -> first level -> 64x64 tiles (row-major, smaller tiles on the right and bottom edges), stored raw,
  RLE-compressed (each byte plane of a tile separately) or zlib-compressed.

Only 8-bit integer precision is read (gamma or linear; the bytes are returned as stored). Higher precisions,
fractal compression, and anything malformed raise :class:`XcfError` with a one-line message that names the file.
Channels, paths, parasites and the other properties are skipped.
"""

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

__all__ = ['XcfError', 'XcfLayer', 'XcfImage', 'read_xcf', 'BLEND_MODE_NAMES', 'NORMAL_MODES']

MAGIC = b'gimp xcf '
TILE = 64
MAX_SIZE = 524288  # GIMP's largest image side

# Property type codes used here.
PROP_END = 0
PROP_COLORMAP = 1
PROP_FLOATING_SELECTION = 5
PROP_OPACITY = 6
PROP_MODE = 7
PROP_VISIBLE = 8
PROP_APPLY_MASK = 11
PROP_OFFSETS = 15
PROP_COMPRESSION = 17
PROP_GROUP_ITEM = 29
PROP_ITEM_PATH = 30
PROP_FLOAT_OPACITY = 33

COMPRESSION_NAMES = {0: 'none', 1: 'RLE', 2: 'zlib', 3: 'fractal'}
BASE_TYPE_NAMES = {0: 'RGB', 1: 'grey', 2: 'indexed'}
# Layer type -> (name, bytes per pixel at 8 bits, has alpha)
LAYER_TYPES = {
    0: ('RGB', 3, False),
    1: ('RGBA', 4, True),
    2: ('grey', 1, False),
    3: ('grey+alpha', 2, True),
    4: ('indexed', 1, False),
    5: ('indexed+alpha', 2, True),
}
# Blend modes that mean plain "normal" alpha-over: the legacy and the GIMP 2.10 code.
NORMAL_MODES = (0, 28)
BLEND_MODE_NAMES = {0: 'normal (legacy)', 1: 'dissolve', 3: 'multiply (legacy)', 4: 'screen (legacy)',
                    5: 'overlay (legacy)', 6: 'difference (legacy)', 7: 'addition (legacy)',
                    8: 'subtract (legacy)', 9: 'darken only (legacy)', 10: 'lighten only (legacy)', 28: 'normal',
                    29: 'behind', 30: 'multiply', 31: 'screen', 32: 'difference', 33: 'addition', 34: 'subtract',
                    35: 'darken only', 36: 'lighten only', 61: 'pass through'}


def _precision_name(version: int, code: int) -> Tuple[str, bool]:
    """Return (description, is 8-bit integer) for a precision code as the given file version defines it."""
    if version == 4:
        table = {0: '8-bit gamma integer', 1: '16-bit gamma integer', 2: '32-bit linear integer',
                 3: '16-bit linear float', 4: '32-bit linear float'}
    elif version in (5, 6):
        table = {100: '8-bit linear integer', 150: '8-bit gamma integer', 200: '16-bit linear integer',
                 250: '16-bit gamma integer', 300: '32-bit linear integer', 350: '32-bit gamma integer',
                 400: '16-bit linear float', 450: '16-bit gamma float', 500: '32-bit linear float',
                 550: '32-bit gamma float'}
    else:
        table = {100: '8-bit linear integer', 150: '8-bit gamma integer', 200: '16-bit linear integer',
                 250: '16-bit gamma integer', 300: '32-bit linear integer', 350: '32-bit gamma integer',
                 500: '16-bit linear float', 550: '16-bit gamma float', 600: '32-bit linear float',
                 650: '32-bit gamma float', 700: '64-bit linear float', 750: '64-bit gamma float'}
    name = table.get(code, f'unknown precision code {code}')
    return name, name.startswith('8-bit')


class XcfError(ValueError):
    """A file that cannot be read as a supported XCF. ``str(e)`` is one line: ``<file>: <problem>``."""

    def __init__(self, file, problem):
        self.file = str(file)
        self.problem = str(problem)
        super().__init__(self.file, self.problem)

    def __str__(self):
        return f'{self.file}: {self.problem}'


@dataclass
class XcfLayer:
    """One layer. ``pixels`` is RGBA uint8 [height, width, 4] at canvas position (``x``, ``y``)."""

    name: str
    x: int
    y: int
    width: int
    height: int
    pixels: np.ndarray
    opacity: float = 1.0  # 0..1
    visible: bool = True
    mode: int = 0  # blend mode code (see BLEND_MODE_NAMES)
    type: int = 1  # layer type code (see LAYER_TYPES)
    is_group: bool = False
    item_path: Optional[Tuple[int, ...]] = None  # position inside layer groups; None at the top level
    floating: bool = False  # a floating selection (not yet anchored)
    mask: Optional[np.ndarray] = None  # layer mask, uint8 [height, width], or None
    apply_mask: bool = False

    @property
    def mode_name(self) -> str:
        return BLEND_MODE_NAMES.get(self.mode, f'mode {self.mode}')


@dataclass
class XcfImage:
    """A parsed XCF file; ``layers`` are ordered bottom to top."""

    path: str
    version: int
    width: int
    height: int
    base_type: int
    precision: str
    compression: int
    layers: List[XcfLayer] = field(default_factory=list)


class _Reader:
    def __init__(self, path: str, data: bytes):
        self.path = path
        self.data = data
        self.view = memoryview(data)

    def fail(self, problem: str):
        raise XcfError(self.path, problem)

    def need(self, offset: int, size: int, what: str):
        if offset < 0 or offset + size > len(self.data):
            self.fail(f'truncated or corrupt file: {what} at byte {offset} runs past the end ({len(self.data)} bytes)')

    def u32(self, offset: int, what: str) -> int:
        self.need(offset, 4, what)
        return struct.unpack_from('>I', self.data, offset)[0]

    def i32(self, offset: int, what: str) -> int:
        self.need(offset, 4, what)
        return struct.unpack_from('>i', self.data, offset)[0]

    def string(self, offset: int, what: str) -> Tuple[str, int]:
        n = self.u32(offset, what)
        offset += 4
        if n == 0:
            return '', offset
        self.need(offset, n, what)
        raw = self.data[offset:offset + n]
        if raw[-1] != 0:
            self.fail(f'corrupt {what} at byte {offset}: string is not zero-terminated')
        return raw[:-1].decode('utf-8', errors='replace'), offset + n


def read_xcf(path) -> XcfImage:
    """Parse ``path`` and decode every layer (and layer mask) to RGBA uint8; layers are returned bottom to top."""
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise XcfError(path, f'cannot read: {e.strerror or e}') from None
    return parse_xcf(data, path)


def parse_xcf(data: bytes, path: str = '<bytes>') -> XcfImage:
    """Like :func:`read_xcf` for the bytes of a file (``path`` is only used in error messages)."""
    r = _Reader(path, data)
    if not data.startswith(MAGIC):
        r.fail("not a GIMP XCF file (missing the 'gimp xcf' header)")
    r.need(0, 14, 'header')
    tag = data[9:13]
    if tag == b'file':
        version = 0
    elif tag[:1] == b'v' and tag[1:].isdigit():
        version = int(tag[1:])
    else:
        r.fail(f'not a GIMP XCF file (unknown version tag {tag!r})')
    if data[13] != 0:
        r.fail('not a GIMP XCF file (header is not zero-terminated)')
    pos = 14
    width = r.u32(pos, 'image width')
    height = r.u32(pos + 4, 'image height')
    base_type = r.u32(pos + 8, 'image base type')
    pos += 12
    if not (0 < width <= MAX_SIZE and 0 < height <= MAX_SIZE):
        r.fail(f'corrupt header: image size {width}x{height} is outside 1..{MAX_SIZE}')
    if base_type not in BASE_TYPE_NAMES:
        r.fail(f'unsupported image base type {base_type}')
    if version >= 4:
        code = r.u32(pos, 'precision')
        pos += 4
        precision, is_8bit = _precision_name(version, code)
    else:
        precision, is_8bit = '8-bit gamma integer', True
    if not is_8bit:
        r.fail(f'unsupported precision: {precision} (only 8-bit integer images are read; in GIMP use '
               'Image > Precision > 8 bit integer and save again)')
    ptr_size = 8 if version >= 11 else 4

    compression = 0
    colormap = None
    for ptype, payload_pos, length in _properties(r, pos, 'image property'):
        if ptype == PROP_COMPRESSION:
            r.need(payload_pos, 1, 'compression property')
            compression = data[payload_pos]
        elif ptype == PROP_COLORMAP:
            n = r.u32(payload_pos, 'colour map')
            r.need(payload_pos + 4, 3 * n, 'colour map')
            colormap = np.frombuffer(data, np.uint8, 3 * n, payload_pos + 4).reshape(n, 3)
    pos = _skip_properties(r, pos, 'image property')
    if compression not in (0, 1, 2):
        r.fail(f'unsupported tile compression: {COMPRESSION_NAMES.get(compression, compression)}')

    layer_ptrs, pos = _pointer_list(r, pos, ptr_size, 'layer pointer')
    layers = [_read_layer(r, p, ptr_size, compression, colormap, i) for i, p in enumerate(layer_ptrs)]
    layers.reverse()  # the file lists layers top to bottom
    return XcfImage(path=path, version=version, width=width, height=height, base_type=base_type,
                    precision=precision, compression=compression, layers=layers)


def _properties(r: _Reader, pos: int, what: str):
    """Yield (type, payload offset, payload length) until PROP_END; the caller's ``pos`` bookkeeping is its own."""
    while True:
        ptype = r.u32(pos, what)
        length = r.u32(pos + 4, what)
        if ptype == PROP_END:
            return
        r.need(pos + 8, length, f'{what} {ptype}')
        yield ptype, pos + 8, length
        pos += 8 + length


def _skip_properties(r: _Reader, pos: int, what: str) -> int:
    while True:
        ptype = r.u32(pos, what)
        length = r.u32(pos + 4, what)
        pos += 8
        if ptype == PROP_END:
            return pos
        r.need(pos, length, f'{what} {ptype}')
        pos += length


def _pointer(r: _Reader, pos: int, ptr_size: int, what: str) -> int:
    r.need(pos, ptr_size, what)
    return struct.unpack_from('>Q' if ptr_size == 8 else '>I', r.data, pos)[0]


def _pointer_list(r: _Reader, pos: int, ptr_size: int, what: str) -> Tuple[List[int], int]:
    out = []
    while True:
        p = _pointer(r, pos, ptr_size, what)
        pos += ptr_size
        if p == 0:
            return out, pos
        if p >= len(r.data):
            r.fail(f'truncated or corrupt file: {what} points to byte {p}, past the end ({len(r.data)} bytes)')
        out.append(p)


def _read_layer(r: _Reader, pos: int, ptr_size: int, compression: int, colormap, index: int) -> XcfLayer:
    what = f'layer {index} (from the top)'
    width = r.u32(pos, what)
    height = r.u32(pos + 4, what)
    ltype = r.u32(pos + 8, what)
    name, pos = r.string(pos + 12, f'{what} name')
    what = f"layer '{name}'"
    if ltype not in LAYER_TYPES:
        r.fail(f'{what} has an unsupported layer type {ltype}')
    props = dict(opacity=1.0, visible=True, mode=0, x=0, y=0, is_group=False, item_path=None, floating=False,
                 apply_mask=False)
    float_opacity = None
    for ptype, p, length in _properties(r, pos, f'{what} property'):
        if ptype == PROP_OPACITY:
            props['opacity'] = min(r.u32(p, f'{what} opacity'), 255) / 255.0
        elif ptype == PROP_FLOAT_OPACITY:
            r.need(p, 4, f'{what} opacity')
            float_opacity = struct.unpack_from('>f', r.data, p)[0]
        elif ptype == PROP_VISIBLE:
            props['visible'] = r.u32(p, f'{what} visibility') != 0
        elif ptype == PROP_MODE:
            props['mode'] = r.u32(p, f'{what} mode')
        elif ptype == PROP_OFFSETS:
            props['x'] = r.i32(p, f'{what} offsets')
            props['y'] = r.i32(p + 4, f'{what} offsets')
        elif ptype == PROP_GROUP_ITEM:
            props['is_group'] = True
        elif ptype == PROP_ITEM_PATH:
            props['item_path'] = tuple(struct.unpack_from(f'>{length // 4}I', r.data, p))
        elif ptype == PROP_FLOATING_SELECTION:
            props['floating'] = True
        elif ptype == PROP_APPLY_MASK:
            props['apply_mask'] = r.u32(p, f'{what} apply-mask') != 0
    if float_opacity is not None:
        props['opacity'] = float(min(max(float_opacity, 0.0), 1.0))
    pos = _skip_properties(r, pos, f'{what} property')
    hierarchy = _pointer(r, pos, ptr_size, f'{what} hierarchy pointer')
    mask_ptr = _pointer(r, pos + ptr_size, ptr_size, f'{what} mask pointer')

    _, bpp, has_alpha = LAYER_TYPES[ltype]
    raw = _read_hierarchy(r, hierarchy, width, height, bpp, ptr_size, compression, what)
    pixels = _to_rgba(r, raw, ltype, colormap, what)
    mask = None
    if mask_ptr:
        mask = _read_channel(r, mask_ptr, width, height, ptr_size, compression, f'{what} mask')
    return XcfLayer(name=name, width=width, height=height, pixels=pixels, type=ltype, mask=mask, **props)


def _read_channel(r: _Reader, pos: int, width: int, height: int, ptr_size: int, compression: int, what: str):
    cw = r.u32(pos, what)
    ch = r.u32(pos + 4, what)
    if (cw, ch) != (width, height):
        r.fail(f'{what} is {cw}x{ch}, not the layer size {width}x{height}')
    _, pos = r.string(pos + 8, f'{what} name')
    pos = _skip_properties(r, pos, f'{what} property')
    hierarchy = _pointer(r, pos, ptr_size, f'{what} hierarchy pointer')
    return _read_hierarchy(r, hierarchy, width, height, 1, ptr_size, compression, what)[..., 0]


def _read_hierarchy(r, pos, width, height, bpp, ptr_size, compression, what) -> np.ndarray:
    hw = r.u32(pos, f'{what} hierarchy')
    hh = r.u32(pos + 4, f'{what} hierarchy')
    hbpp = r.u32(pos + 8, f'{what} hierarchy')
    if (hw, hh) != (width, height):
        r.fail(f'{what}: pixel data is {hw}x{hh}, not the layer size {width}x{height}')
    if hbpp != bpp:
        r.fail(f'{what}: {hbpp} bytes per pixel where {bpp} were expected (only 8-bit data is supported)')
    level = _pointer(r, pos + 12, ptr_size, f'{what} level pointer')
    lw = r.u32(level, f'{what} level')
    lh = r.u32(level + 4, f'{what} level')
    if (lw, lh) != (width, height):
        r.fail(f'{what}: first level is {lw}x{lh}, not {width}x{height}')
    tiles, _ = _pointer_list(r, level + 8, ptr_size, f'{what} tile pointer')
    cols = -(-width // TILE)
    rows = -(-height // TILE)
    if len(tiles) != cols * rows:
        r.fail(f'{what}: {len(tiles)} tiles where {cols * rows} were expected for {width}x{height}')
    out = np.zeros((height, width, bpp), np.uint8)
    for i, tptr in enumerate(tiles):
        ty, tx = divmod(i, cols)
        th = min(TILE, height - ty * TILE)
        tw = min(TILE, width - tx * TILE)
        tile = _decode_tile(r, tptr, tw * th, bpp, compression, f'{what} tile {i}')
        out[ty * TILE:ty * TILE + th, tx * TILE:tx * TILE + tw] = tile.reshape(th, tw, bpp)
    return out


def _decode_tile(r: _Reader, pos: int, npix: int, bpp: int, compression: int, what: str) -> np.ndarray:
    size = npix * bpp
    if compression == 0:
        r.need(pos, size, what)
        return np.frombuffer(r.data, np.uint8, size, pos)
    if compression == 2:
        dec = zlib.decompressobj()
        try:
            out = dec.decompress(r.view[pos:], size)
        except zlib.error as e:
            r.fail(f'{what}: corrupt zlib data ({e})')
        if len(out) != size:
            r.fail(f'truncated or corrupt file: {what} holds {len(out)} of {size} bytes')
        return np.frombuffer(out, np.uint8)
    # RLE: each byte plane of the tile is encoded on its own, one after the other.
    planes = np.empty((bpp, npix), np.uint8)
    data = r.data
    end = len(data)
    for c in range(bpp):
        buf = bytearray()
        while len(buf) < npix:
            if pos >= end:
                r.fail(f'truncated or corrupt file: {what} RLE data runs past the end')
            op = data[pos]
            pos += 1
            if op <= 126:  # short run of one repeated byte: op + 1 copies
                if pos >= end:
                    r.fail(f'truncated or corrupt file: {what} RLE data runs past the end')
                buf += bytes((data[pos],)) * (op + 1)
                pos += 1
            elif op == 127:  # long run of one repeated byte: 16-bit count, then the byte
                if pos + 3 > end:
                    r.fail(f'truncated or corrupt file: {what} RLE data runs past the end')
                n = (data[pos] << 8) | data[pos + 1]
                buf += bytes((data[pos + 2],)) * n
                pos += 3
            elif op == 128:  # long run of literal bytes: 16-bit count, then the bytes
                if pos + 2 > end:
                    r.fail(f'truncated or corrupt file: {what} RLE data runs past the end')
                n = (data[pos] << 8) | data[pos + 1]
                pos += 2
                if pos + n > end:
                    r.fail(f'truncated or corrupt file: {what} RLE data runs past the end')
                buf += data[pos:pos + n]
                pos += n
            else:  # short run of literal bytes: 256 - op of them
                n = 256 - op
                if pos + n > end:
                    r.fail(f'truncated or corrupt file: {what} RLE data runs past the end')
                buf += data[pos:pos + n]
                pos += n
        if len(buf) != npix:
            r.fail(f'corrupt file: {what} RLE plane {c} decodes to {len(buf)} bytes, not {npix}')
        planes[c] = np.frombuffer(bytes(buf), np.uint8)
    return planes.T.reshape(-1)


def _to_rgba(r: _Reader, raw: np.ndarray, ltype: int, colormap, what: str) -> np.ndarray:
    h, w = raw.shape[:2]
    out = np.empty((h, w, 4), np.uint8)
    if ltype in (0, 1):
        out[..., :3] = raw[..., :3]
    elif ltype in (2, 3):
        out[..., :3] = raw[..., :1]
    else:
        if colormap is None:
            r.fail(f'{what} is indexed but the image has no colour map')
        index = raw[..., 0]
        if index.size and int(index.max()) >= len(colormap):
            r.fail(f'{what} uses colour index {int(index.max())} but the colour map has {len(colormap)} entries')
        out[..., :3] = colormap[index]
    out[..., 3] = raw[..., -1] if LAYER_TYPES[ltype][2] else 255
    return out
