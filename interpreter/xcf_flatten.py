"""Flattening a GIMP annotation project (as read by :mod:`interpreter.xcf`) into one RGBA image.

The bottom layer is the photo the annotator painted over and is left out; the other layers are composited bottom to
top onto a transparent canvas with Normal alpha-over (straight alpha, 8-bit gamma values), honouring visibility,
opacity, offsets, applied layer masks and layer groups. Blend modes other than Normal, and floating selections, are
refused. On the authors' CrossEyed projects this reproduces their ``image_{id}_mask.png`` on every pixel.
"""

import os
from typing import Dict, List

import numpy as np

from interpreter.annotation_errors import AnnotationError
from interpreter.xcf import NORMAL_MODES, XcfLayer, read_xcf

__all__ = ['flatten_xcf']

PASS_THROUGH_MODE = 61  # a layer group's own mode; with Normal children it composites like Normal


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
    with np.errstate(invalid='ignore', divide='ignore'):
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
            raise AnnotationError(path, 'has no layer above the bottom (image) layer; paint the classes on layers '
                                        'above the image')
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

