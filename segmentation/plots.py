"""Pictures of segmentation runs, drawn with PIL alone (no matplotlib dependency): training curves, colour-coded
masks and the image / truth / prediction / errors grid of an evaluation."""

from typing import Dict, List, Optional, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw

# Distinct colours for class ids 0..; background black, then saturated hues; an ignored pixel is grey.
PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (255, 255, 255),
], np.uint8)
IGNORED_COLOUR = (128, 128, 128)
SERIES_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def colour_mask(mask: np.ndarray, ignore_index=255) -> np.ndarray:
    """int [H, W] class ids -> uint8 [H, W, 3]."""
    mask = np.asarray(mask)
    out = PALETTE[np.clip(mask, 0, None) % len(PALETTE)]
    out[mask == ignore_index] = IGNORED_COLOUR
    return out


def line_chart(series: Dict[str, Sequence[Optional[float]]], title='', xlabel='epoch', size=(640, 400)):
    """Each series on its own [min, max] scale would mislead; two panels instead: losses (left axis shared) and
    scores in [0, 1]. ``series`` names ending in 'loss' go to the top panel, the rest to the bottom."""
    w, h = size
    img = PIL.Image.new('RGB', size, 'white')
    draw = PIL.ImageDraw.Draw(img)
    draw.text((8, 4), title, fill='black')
    panels = [{k: v for k, v in series.items() if k.endswith('loss')},
              {k: v for k, v in series.items() if not k.endswith('loss')}]
    panels = [p for p in panels if p]
    top, bottom, left, right = 22, 20, 52, 12
    ph = (h - top - bottom) // max(1, len(panels))
    n = max((len(v) for v in series.values()), default=0)
    colours = {name: SERIES_COLOURS[i % len(SERIES_COLOURS)] for i, name in enumerate(series)}
    for row, panel in enumerate(panels):
        y0, y1 = top + row * ph + 6, top + (row + 1) * ph - 12
        values = [v for s in panel.values() for v in s if v is not None]
        losses = next(iter(panel)).endswith('loss')
        lo, hi = (min(values, default=0.0), max(values, default=1.0)) if losses else (0.0, 1.0)
        if hi - lo < 1e-12:
            hi = lo + 1
        draw.rectangle([left, y0, w - right, y1], outline=(180, 180, 180))
        draw.text((4, y0), f'{hi:.3g}', fill='black')
        draw.text((4, y1 - 10), f'{lo:.3g}', fill='black')

        def xy(i, v):
            x = left + (w - right - left) * (i / max(1, n - 1))
            return x, y1 - (y1 - y0) * (v - lo) / (hi - lo)
        for k, (name, s) in enumerate(panel.items()):
            points = [xy(i, v) for i, v in enumerate(s) if v is not None]
            if len(points) > 1:
                draw.line(points, fill=colours[name], width=2)
            for x, y in points if len(points) == 1 else []:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colours[name])
            draw.text((left + 8 + 110 * k, y0 + 4), name, fill=colours[name])
    draw.text((left, h - bottom + 4), f'{xlabel} 1..{n}', fill='black')
    return img


def _tile(array: np.ndarray, scale: int) -> PIL.Image.Image:
    img = PIL.Image.fromarray(array if array.ndim == 3 else np.repeat(array[..., None], 3, axis=2))
    return img.resize((img.width * scale, img.height * scale), PIL.Image.NEAREST) if scale > 1 else img


def evaluation_grid(rows: List[Dict[str, np.ndarray]], ignore_index=255, tile=128) -> PIL.Image.Image:
    """One row per sample: its input images (RGB and/or NIR), the truth, the prediction and the errors (white where
    the prediction is wrong, grey where the truth is ignored). ``rows`` items: ``images`` (list of uint8 arrays),
    ``truth`` and ``pred`` (int [H, W]), ``name``."""
    h, w = rows[0]['truth'].shape
    scale = max(1, tile // max(h, w))
    cells = []
    for r in rows:
        truth, pred = r['truth'], r['pred']
        errors = np.where(truth != pred, 255, 0).astype(np.uint8)
        errors = np.repeat(errors[..., None], 3, axis=2)
        errors[truth == ignore_index] = IGNORED_COLOUR
        cells.append(list(r['images']) + [colour_mask(truth, ignore_index), colour_mask(pred, ignore_index), errors])
    cols = max(len(c) for c in cells)
    label_h = 14
    cw, ch = w * scale, h * scale
    grid = PIL.Image.new('RGB', (cols * (cw + 2), len(rows) * (ch + 2) + label_h), 'white')
    draw = PIL.ImageDraw.Draw(grid)
    heads = ['input'] * (len(cells[0]) - 3) + ['truth', 'prediction', 'errors']
    for j, head in enumerate(heads):
        draw.text((j * (cw + 2) + 2, 1), head, fill='black')
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            grid.paste(_tile(cell, scale), (j * (cw + 2), label_h + i * (ch + 2)))
    return grid
