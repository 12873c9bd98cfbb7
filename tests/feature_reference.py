"""A test-only reference: rows of ``feature_maps.dense_features`` for a few pixels of one sample, blended from the
native maps with the shared 4-tap rule (``feature_maps.pixel_taps``) in PyTorch's own order of operations, so that
float64 results match the dense matrix to rounding. Production code gathers through ``NativeFeatureStore``."""

import numpy as np
import torch

from interpreter.feature_maps import (
    as_maps,
    check_mode,
    check_out_res,
    check_pixels,
    pixel_taps,
    precision_for,
    source_taps,
    total_channels,
)


def _taps_tensors(in_res, out_res, mode, precision, device, dtype):
    i0, i1, w0, w1 = source_taps(in_res, out_res, mode, precision)
    as_long = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (i0, i1)]
    as_float = [torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype) for a in (w0, w1)]
    return as_long + as_float


def _blend_rows(rows_of, r, y, x, taps, dtype):
    """4-neighbour blend for flat pixels (y, x): ``rows_of(index)`` returns the [P, C] native rows at ``index``.
    Mirrors PyTorch's order of operations: ``wy0 * (wx0 * a + wx1 * b) + wy1 * (wx0 * c + wx1 * d)``.
    """
    index, wy, wx = pixel_taps(taps, r, y, x)
    a, b, c, d = (rows_of(i).to(dtype) for i in index)
    wy0, wy1 = wy[0][:, None], wy[2][:, None]
    wx0, wx1 = wx[0][:, None], wx[1][:, None]
    return wy0 * (wx0 * a + wx1 * b) + wy1 * (wx0 * c + wx1 * d)


def gather_features(features, pixel_index, out_res: int, mode: str = 'bilinear', dtype=torch.float32):
    """Rows ``pixel_index`` (flat indices ``y * out_res + x``) of ``dense_features(features, out_res, mode)``,
    computed from the native maps without building the dense matrix. Returns ``[P, D]``."""
    maps = as_maps(features)
    out_res = check_out_res(out_res)
    check_mode(mode)
    device = maps[0].device
    pixel_index = check_pixels(pixel_index, out_res).to(device)
    y, x = pixel_index // out_res, pixel_index % out_res
    out = torch.empty([pixel_index.numel(), total_channels(maps)], dtype=dtype, device=device)
    precision = precision_for(dtype)
    col = 0
    cache = {}
    for f in maps:
        c, r = f.shape[0], f.shape[1]
        if r not in cache:
            cache[r] = _taps_tensors(r, out_res, mode, precision, device, dtype)
        flat = f.reshape(c, r * r)
        out[:, col:col + c] = _blend_rows(lambda idx: flat[:, idx].t(), r, y, x, cache[r], dtype)
        col += c
    return out
