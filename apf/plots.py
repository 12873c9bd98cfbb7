"""Histogram images drawn with PIL (no plotting library needed): similarity distributions with thresholds marked."""

from typing import Dict, Sequence, Tuple

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

import dnnlib

_COLORS = [(52, 101, 164), (78, 154, 6), (204, 0, 0), (117, 80, 123), (193, 125, 17)]


def _dashed_vline(draw, x, y0, y1, color, dash=6):
    for y in range(y0, y1, 2 * dash):
        draw.line([(x, y), (x, min(y + dash, y1))], fill=color, width=2)


def histogram_png(path, series: Dict[str, Sequence[float]], thresholds: Dict[str, Tuple[float, tuple]],
                  title: str, xlabel: str = 'cosine similarity', bins: int = 50, value_range=(-0.2, 1.0),
                  size=(900, 520)):
    """Write a PNG with one outlined histogram per series (normalised to its own maximum when there are several)
    and a vertical line per threshold (``name: (value, rgb)``). Values outside ``value_range`` widen it."""
    values = [np.asarray(v, np.float64) for v in series.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    lo, hi = value_range
    if finite.size:
        lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    for t, _ in thresholds.values():
        lo, hi = min(lo, t), max(hi, t)
    if hi <= lo:
        hi = lo + 1
    edges = np.linspace(lo, hi, bins + 1)
    W, H = size
    left, right, top, bottom = 70, 20, 50, 60
    im = PIL.Image.new('RGB', size, 'white')
    d = PIL.ImageDraw.Draw(im)
    font = PIL.ImageFont.load_default()
    pw, ph = W - left - right, H - top - bottom
    d.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    counts = [np.histogram(v[np.isfinite(v)], bins=edges)[0] for v in values]
    several = len(counts) > 1
    peak = max([c.max() for c in counts if c.size] + [1])

    def xpix(v):
        return left + int(round((v - lo) / (hi - lo) * pw))

    legend = []
    for k, ((name, _), c) in enumerate(zip(series.items(), counts)):
        color = _COLORS[k % len(_COLORS)]
        scale = (c.max() if several and c.max() > 0 else peak) or 1
        for i, n in enumerate(c):
            if n == 0:
                continue
            x0, x1 = xpix(edges[i]), xpix(edges[i + 1])
            y = top + ph - int(round(n / scale * (ph - 10)))
            if several:
                d.rectangle([x0, y, max(x0, x1 - 1), top + ph], outline=color)
            else:
                d.rectangle([x0, y, max(x0, x1 - 1), top + ph], fill=color)
        legend.append((f'{name} (n={int(c.sum())})', color))
    for name, (t, color) in thresholds.items():
        _dashed_vline(d, xpix(t), top, top + ph, color)
        legend.append((f'{name} = {t:.3f}', color))
    for i in range(6):  # x ticks
        v = lo + (hi - lo) * i / 5
        x = xpix(v)
        d.line([(x, top + ph), (x, top + ph + 5)], fill=(0, 0, 0))
        d.text((x - 14, top + ph + 8), f'{v:.2f}', fill=(0, 0, 0), font=font)
    d.text((left + pw // 2 - 40, H - 25), xlabel, fill=(0, 0, 0), font=font)
    d.text((left, top - 16), 'relative count' if several else f'count (max {int(peak)})', fill=(0, 0, 0), font=font)
    d.text((left, 10), title, fill=(0, 0, 0), font=font)
    for k, (text, color) in enumerate(legend):
        y = top + 8 + 16 * k
        d.rectangle([left + 10, y + 2, left + 20, y + 10], fill=color)
        d.text((left + 26, y), text, fill=(0, 0, 0), font=font)
    with dnnlib.util.atomic_write(path, 'wb') as f:
        im.save(f, 'PNG')
