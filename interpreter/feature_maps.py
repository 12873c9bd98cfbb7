"""The generator's feature maps as the pixel classifiers see them: their layout, PyTorch-exact upsampling taps and
the dense feature matrix of the originals.

``G.synthesis(ws, return_features=True)`` gives a list of maps ``[x0_4, x_4, x0_8, x_8, ..., x0_R, x_R]`` at their
native resolutions (paper256: 14 maps, 4992 channels). The originals upsample every map to the mask resolution,
concatenate them in list order and feed every pixel's 4992-vector to an ensemble of MLPs. At 256x256 that matrix is
65536 x 4992 (1.22 GiB in float32 per sample; 2.6e9 values for the 8 annotated training images). ``dense_features``
builds it (the reference, and the ensemble's ``fast=False`` path); the training gather (``feature_store``) and the
fast ensemble (``projection``, ``ensemble``) avoid it by reading the native maps through ``source_taps``.

Upsampling conventions (``upsample_to``): the originals use ``nn.Upsample(scale_factor=out/res, mode,
align_corners=False)``; here ``F.interpolate(size=out)``. PyTorch then uses the ratio ``1/scale_factor`` or
``res/out``; for power-of-two ratios both are the same exact binary fraction, so the results are bit-identical (a
test checks this). For other ratios they can differ in the last bit of the interpolation weights.
"""

from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

MODES = ('bilinear', 'nearest')

# --------------------------------------------------------------------------------------------- layout and checks


def as_maps(features) -> List[torch.Tensor]:
    """The feature maps of one sample as 3-D tensors [C, r, r] (a leading batch axis of 1 is dropped)."""
    if isinstance(features, torch.Tensor):
        raise TypeError('features must be a list of feature maps, not a single tensor')
    maps = []
    for i, f in enumerate(features):
        if not isinstance(f, torch.Tensor):
            raise TypeError(f'feature map {i} is a {type(f).__name__}, expected a torch.Tensor')
        if f.ndim == 4:
            if f.shape[0] != 1:
                raise ValueError(f'feature map {i} has batch size {f.shape[0]}; pass one sample at a time')
            f = f[0]
        if f.ndim != 3 or f.shape[1] != f.shape[2]:
            raise ValueError(f'feature map {i} has shape {tuple(f.shape)}; expected [C, r, r] or [1, C, r, r]')
        maps.append(f)
    if not maps:
        raise ValueError('features is empty')
    return maps


def feature_layout(features) -> List[Tuple[int, int]]:
    """``[(channels, resolution), ...]`` of one sample's feature maps, in list order."""
    return [(int(f.shape[0]), int(f.shape[1])) for f in as_maps(features)]


def total_channels(features_or_layout) -> int:
    """Feature-vector length D: the channel count summed over all maps (accepts maps or a layout)."""
    items = list(features_or_layout)
    if items and isinstance(items[0], torch.Tensor):
        items = feature_layout(items)
    return int(sum(c for c, _ in items))


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f'upsample mode must be one of {MODES}, got {mode!r}')


def check_out_res(out_res) -> int:
    if isinstance(out_res, bool) or not isinstance(out_res, (int, np.integer)) or out_res < 1:
        raise ValueError(f'out_res must be a positive integer, got {out_res!r}')
    return int(out_res)


def check_pixels(pixel_index, out_res) -> torch.Tensor:
    """Flat pixel indices ``y * out_res + x`` as a 1-D int64 tensor, range-checked."""
    pixel_index = torch.as_tensor(pixel_index, dtype=torch.int64).reshape(-1)
    if pixel_index.numel() and (int(pixel_index.min()) < 0 or int(pixel_index.max()) >= out_res * out_res):
        raise IndexError(f'pixel indices must lie in [0, {out_res * out_res}) for out_res {out_res}')
    return pixel_index


def precision_for(dtype):
    """The float type PyTorch computes interpolation coordinates in for tensors of ``dtype``."""
    return np.float64 if dtype == torch.float64 else np.float32


# --------------------------------------------------------------------------------------------------- sampling


def upsample_to(x: torch.Tensor, out_res: int, mode: str = 'bilinear') -> torch.Tensor:
    """Resize NCHW (or CHW) ``x`` to ``out_res`` x ``out_res`` as the originals' ``nn.Upsample`` does.

    ``bilinear`` uses ``align_corners=False``; ``nearest`` is PyTorch's legacy nearest (``floor(dst * in / out)``).
    """
    check_mode(mode)
    out_res = check_out_res(out_res)
    squeeze = x.ndim == 3
    if squeeze:
        x = x.unsqueeze(0)
    if x.shape[-1] == out_res and x.shape[-2] == out_res:
        y = x
    elif mode == 'bilinear':
        y = F.interpolate(x, size=(out_res, out_res), mode='bilinear', align_corners=False)
    else:
        y = F.interpolate(x, size=(out_res, out_res), mode='nearest')
    return y[0] if squeeze else y


def source_taps(in_res: int, out_res: int, mode: str = 'bilinear', precision=np.float32):
    """For every output coordinate 0..out_res-1: ``(i0, i1, w0, w1)``, value = ``w0 * x[i0] + w1 * x[i1]``.

    Bilinear follows PyTorch's ``align_corners=False`` rule: ``src = (dst + 0.5) * in / out - 0.5``, clamped below at
    0; ``i0 = floor(src)`` (at most in-1), ``i1 = i0 + 1`` clamped at in-1, ``w1 = src - i0``, ``w0 = 1 - w1``; equal
    sizes copy. Nearest: ``i0 = i1 = min(floor(dst * in / out), in - 1)``, ``w0 = 1``, ``w1 = 0``. ``precision`` is
    the float type PyTorch computes the coordinates in (float32 for float32 tensors, float64 for float64 tensors).
    """
    check_mode(mode)
    dst = np.arange(out_res)
    if in_res == out_res:
        one = np.ones(out_res, precision)
        return dst.copy(), dst.copy(), one, np.zeros(out_res, precision)
    if mode == 'nearest':
        if out_res == 2 * in_res:
            idx = dst >> 1
        else:
            scale = np.float32(in_res) / np.float32(out_res)
            idx = np.minimum(np.floor(dst.astype(np.float32) * scale).astype(np.int64), in_res - 1)
        one = np.ones(out_res, precision)
        return idx, idx.copy(), one, np.zeros(out_res, precision)
    p = np.dtype(precision).type
    scale = p(in_res) / p(out_res)
    src = np.maximum(scale * (dst.astype(precision) + p(0.5)) - p(0.5), p(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_res - 1)
    w1 = np.clip(src - i0.astype(precision), p(0), p(1)).astype(precision)
    i1 = np.where(i0 < in_res - 1, i0 + 1, i0)
    w0 = (p(1) - w1).astype(precision)
    return i0, i1, w0, w1


def pixel_taps(taps, r, y, x):
    """The 4 source pixels that output pixels ``(y, x)`` of a square map of resolution ``r`` blend.

    ``taps``: ``source_taps`` of ``r`` (numpy arrays or tensors; the maps are square, so rows and columns share
    them); ``y`` / ``x``: output coordinates (index arrays, broadcast against each other). Returns
    ``(index, wy, wx)``, each 4 arrays in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1): the flat source index
    ``y_src * r + x_src`` and the y and x weight of each tap. The value is ``sum wy * wx * x[index]``; callers choose
    the order of the arithmetic (which their numerics depend on).
    """
    y0, y1, wy0, wy1 = (t[y] for t in taps)
    x0, x1, wx0, wx1 = (t[x] for t in taps)
    y0, y1 = y0 * r, y1 * r
    return (y0 + x0, y0 + x1, y1 + x0, y1 + x1), (wy0, wy0, wy1, wy1), (wx0, wx1, wx0, wx1)


def interp_matrix(in_res, out_res, mode, precision):
    """Dense [out_res, in_res] 1-D interpolation matrix built from ``source_taps`` (float64)."""
    i0, i1, w0, w1 = source_taps(in_res, out_res, mode, precision)
    m = np.zeros((out_res, in_res), np.float64)
    np.add.at(m, (np.arange(out_res), i0), w0.astype(np.float64))
    np.add.at(m, (np.arange(out_res), i1), w1.astype(np.float64))
    return m


# ------------------------------------------------------------------------------------------------ dense matrix


def dense_features(features, out_res: int, mode: str = 'bilinear', dtype=torch.float32) -> torch.Tensor:
    """The reference feature matrix of one sample: ``[out_res * out_res, D]``.

    Every map is upsampled to ``out_res`` (``upsample_to``), the maps are concatenated in list order and the rows
    are pixels in row-major (y, x) order, as the originals' ``permute(0, 2, 3, 1).reshape(-1, D)``. Memory: one
    ``out_res^2 x D`` matrix plus one upsampled map at a time.
    """
    maps = as_maps(features)
    out_res = check_out_res(out_res)
    check_mode(mode)
    dim = total_channels(maps)
    out = torch.empty([out_res * out_res, dim], dtype=dtype, device=maps[0].device)
    col = 0
    for f in maps:
        c = f.shape[0]
        up = upsample_to(f.to(dtype), out_res, mode)
        out[:, col:col + c] = up.reshape(c, out_res * out_res).t()
        del up
        col += c
    return out
