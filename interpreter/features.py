"""Generator feature maps for the pixel classifiers: dense reference, training gather and fast ensemble inference.

``G.synthesis(ws, return_features=True)`` gives a list of maps ``[x0_4, x_4, x0_8, x_8, ..., x0_R, x_R]`` at their
native resolutions (paper256: 14 maps, 4992 channels). The originals upsample every map to the mask resolution,
concatenate them in list order and feed every pixel's 4992-vector to an ensemble of MLPs. At 256x256 that matrix is
65536 x 4992 (1.22 GiB in float32 per sample; 2.6e9 values for the 8 annotated training images).

Nothing here needs that matrix except the reference it is checked against:

* ``dense_features`` builds it (upsample, concatenate, pixel-major rows); the reference for tests and ``fast=False``.
* ``gather_features`` / ``NativeFeatureStore`` compute exactly the rows of a few sampled pixels from the native maps
  (bilinear or nearest taps computed the way PyTorch does), which is all that classifier training needs.
* ``first_layer_projection`` / ``EnsemblePredictor`` use that the first layer of every classifier is linear and the
  upsampling is linear: ``W . up(F) + b = sum_k up(W_k . F_k) + b``. Each column block ``W_k`` of the first layer is
  applied at the map's native resolution (maps of equal resolution are summed first), and only the small
  ``hidden``-channel result is upsampled, band by band, straight into the pre-activation of the second layer.

Upsampling conventions (``upsample_to``): the originals use ``nn.Upsample(scale_factor=out/res, mode,
align_corners=False)``; here ``F.interpolate(size=out)``. PyTorch then uses the ratio ``1/scale_factor`` or
``res/out``; for power-of-two ratios both are the same exact binary fraction, so the results are bit-identical (a
test checks this). For other ratios they can differ in the last bit of the interpolation weights.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from interpreter import upsample_kernel
from torch_utils import custom_ops

MODES = ('bilinear', 'nearest')

# --------------------------------------------------------------------------------------------- layout and maps


def _as_maps(features) -> List[torch.Tensor]:
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
    return [(int(f.shape[0]), int(f.shape[1])) for f in _as_maps(features)]


def total_channels(features_or_layout) -> int:
    """Feature-vector length D: the channel count summed over all maps (accepts maps or a layout)."""
    items = list(features_or_layout)
    if items and isinstance(items[0], torch.Tensor):
        items = feature_layout(items)
    return int(sum(c for c, _ in items))


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f'upsample mode must be one of {MODES}, got {mode!r}')


def _check_res(out_res):
    if isinstance(out_res, bool) or not isinstance(out_res, (int, np.integer)) or out_res < 1:
        raise ValueError(f'out_res must be a positive integer, got {out_res!r}')
    return int(out_res)


# --------------------------------------------------------------------------------------------------- sampling


def upsample_to(x: torch.Tensor, out_res: int, mode: str = 'bilinear') -> torch.Tensor:
    """Resize NCHW (or CHW) ``x`` to ``out_res`` x ``out_res`` as the originals' ``nn.Upsample`` does.

    ``bilinear`` uses ``align_corners=False``; ``nearest`` is PyTorch's legacy nearest (``floor(dst * in / out)``).
    """
    _check_mode(mode)
    out_res = _check_res(out_res)
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
    _check_mode(mode)
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


def _interp_matrix(in_res, out_res, mode, precision):
    """Dense [out_res, in_res] 1-D interpolation matrix built from ``source_taps`` (float64)."""
    i0, i1, w0, w1 = source_taps(in_res, out_res, mode, precision)
    m = np.zeros((out_res, in_res), np.float64)
    np.add.at(m, (np.arange(out_res), i0), w0.astype(np.float64))
    np.add.at(m, (np.arange(out_res), i1), w1.astype(np.float64))
    return m


def _precision_for(dtype):
    return np.float64 if dtype == torch.float64 else np.float32


# ---------------------------------------------------------------------------------------------- dense reference


def dense_features(features, out_res: int, mode: str = 'bilinear', dtype=torch.float32) -> torch.Tensor:
    """The reference feature matrix of one sample: ``[out_res * out_res, D]``.

    Every map is upsampled to ``out_res`` (``upsample_to``), the maps are concatenated in list order and the rows
    are pixels in row-major (y, x) order, as the originals' ``permute(0, 2, 3, 1).reshape(-1, D)``. Memory: one
    ``out_res^2 x D`` matrix plus one upsampled map at a time.
    """
    maps = _as_maps(features)
    out_res = _check_res(out_res)
    _check_mode(mode)
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


# ------------------------------------------------------------------------------------------------ pixel gather


def _check_pixels(pixel_index, out_res):
    pixel_index = torch.as_tensor(pixel_index, dtype=torch.int64).reshape(-1)
    if pixel_index.numel() and (int(pixel_index.min()) < 0 or int(pixel_index.max()) >= out_res * out_res):
        raise IndexError(f'pixel indices must lie in [0, {out_res * out_res}) for out_res {out_res}')
    return pixel_index


def _taps_tensors(in_res, out_res, mode, precision, device, dtype):
    i0, i1, w0, w1 = source_taps(in_res, out_res, mode, precision)
    as_long = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (i0, i1)]
    as_float = [torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype) for a in (w0, w1)]
    return as_long + as_float


def _blend_rows(rows_of, r, y, x, taps_y, taps_x, dtype):
    """4-neighbour blend for flat pixels (y, x): ``rows_of(index)`` returns the [P, C] native rows at ``index``
    (``y_src * r + x_src``). Mirrors PyTorch's order of operations:
    ``wy0 * (wx0 * a + wx1 * b) + wy1 * (wx0 * c + wx1 * d)``.
    """
    y0, y1, wy0, wy1 = (t[y] for t in taps_y)
    x0, x1, wx0, wx1 = (t[x] for t in taps_x)
    y0, y1 = y0 * r, y1 * r
    a = rows_of(y0 + x0).to(dtype)
    b = rows_of(y0 + x1).to(dtype)
    c = rows_of(y1 + x0).to(dtype)
    d = rows_of(y1 + x1).to(dtype)
    wx0, wx1 = wx0[:, None], wx1[:, None]
    return wy0[:, None] * (wx0 * a + wx1 * b) + wy1[:, None] * (wx0 * c + wx1 * d)


def gather_features(features, pixel_index, out_res: int, mode: str = 'bilinear', dtype=torch.float32):
    """Rows ``pixel_index`` (flat indices ``y * out_res + x``) of ``dense_features(features, out_res, mode)``,
    computed from the native maps without building the dense matrix. Returns ``[P, D]``."""
    maps = _as_maps(features)
    out_res = _check_res(out_res)
    _check_mode(mode)
    device = maps[0].device
    pixel_index = _check_pixels(pixel_index, out_res).to(device)
    y, x = pixel_index // out_res, pixel_index % out_res
    out = torch.empty([pixel_index.numel(), total_channels(maps)], dtype=dtype, device=device)
    precision = _precision_for(dtype)
    col = 0
    cache = {}
    for f in maps:
        c, r = f.shape[0], f.shape[1]
        if r not in cache:
            cache[r] = _taps_tensors(r, out_res, mode, precision, device, dtype)
        flat = f.reshape(c, r * r)
        out[:, col:col + c] = _blend_rows(lambda idx: flat[:, idx].t(), r, y, x, cache[r], cache[r], dtype)
        col += c
    return out


def _runs(layout):
    """Consecutive maps of equal resolution: ``[(resolution, first_map, end_map, first_col, end_col), ...]``."""
    runs, col = [], 0
    for k, (c, r) in enumerate(layout):
        if runs and runs[-1][0] == r:
            runs[-1][2] = k + 1
            runs[-1][4] = col + c
        else:
            runs.append([r, k, k + 1, col, col + c])
        col += c
    return [tuple(run) for run in runs]


class NativeFeatureStore:
    """The native-resolution feature maps of the annotated samples, for classifier training.

    Per run of equal-resolution maps one pixel-major tensor ``[N * r * r, C_run]`` holds all samples, so a gather
    of a batch of pixels (from any mix of samples) is one 4-tap weighted row lookup per run. paper256 (14 maps, 4992
    channels at 256x256): 16.07 M values per sample, i.e. 514 MB in float32 for 8 samples, against 2.6e9 values
    (4.9 GiB fp16 plus a 9.8 GiB fp32 copy) in the originals.

    ``dtype=torch.float16`` halves that. The stored values are then rounded to 11 significant bits (relative error
    <= 2^-11 ~ 4.9e-4; generator features are clamped to +-256, far inside float16's range); interpolation runs in
    float32 after the rounding, so a gathered value differs from the float32 result by at most 2^-11 times the
    largest of its (up to 4) source values. The originals trained on float16-rounded features too (rounded after
    upsampling), so float16 storage is as accurate as they were; float32 storage is exact up to float rounding.

    ``capacity``: number of samples to preallocate for. Without it, ``add`` keeps each sample separately and the
    first gather joins them, run by run (transiently one run's worth of extra memory, 268 MB at paper256 x 8).
    ``gather(sample_idx, pixel_index)`` returns the rows of ``dense_features`` for those pixels as float32
    ``[P, D]``; ``sample_idx`` is an int or a tensor with one sample index per pixel. ``gather_flat`` indexes the
    originals' training matrix ``[N * out_res^2, D]`` directly.
    """

    def __init__(self, out_res: Optional[int] = None, mode: str = 'bilinear', dtype=torch.float32,
                 device='cpu', capacity: Optional[int] = None):
        _check_mode(mode)
        if not dtype.is_floating_point:
            raise ValueError(f'dtype must be a floating point type, got {dtype}')
        self.out_res = None if out_res is None else _check_res(out_res)
        self.mode = mode
        self.dtype = dtype
        self.device = torch.device(device)
        self.capacity = int(capacity or 0)
        self.layout = None
        self._runs = None
        self._joined = None  # per run: [rows, C_run] tensor holding samples 0 .. _num_joined-1 (and spare rows)
        self._pending = None  # per run: list of per-sample [r*r, C_run] tensors added after those
        self._num_joined = 0
        self._count = 0
        self._tables = {}

    @classmethod
    def from_samples(cls, samples, out_res: Optional[int] = None, mode: str = 'bilinear', dtype=torch.float32,
                     device='cpu'):
        samples = list(samples)
        store = cls(out_res=out_res, mode=mode, dtype=dtype, device=device, capacity=len(samples))
        for features in samples:
            store.add(features)
        return store

    @staticmethod
    def bytes_for(layout, num_samples: int, dtype=torch.float32) -> int:
        """What ``nbytes`` will be for ``num_samples`` samples of ``layout``, without allocating anything."""
        size = torch.empty([], dtype=dtype).element_size()
        return int(num_samples * sum(c * r * r for c, r in layout) * size)

    def add(self, features) -> int:
        """Append one sample; returns its index."""
        maps = _as_maps(features)
        layout = feature_layout(maps)
        if self.layout is None:
            self.layout = layout
            self._runs = _runs(layout)
            self._joined = [None] * len(self._runs)
            self._pending = [[] for _ in self._runs]
            if self.capacity:
                self._joined = [torch.empty([self.capacity * r * r, c1 - c0], dtype=self.dtype, device=self.device)
                                for r, _, _, c0, c1 in self._runs]
        elif layout != self.layout:
            raise ValueError(f'sample {self._count} has feature layout {layout}, expected {self.layout}')
        into_joined = not self._pending[0] and self._joined[0] is not None and \
            (self._count + 1) * self._runs[0][0] ** 2 <= self._joined[0].shape[0]
        with torch.no_grad():  # never keep the generator's autograd graph alive through the copies
            self._copy_in(maps, into_joined)
        if into_joined:
            self._num_joined += 1
        self._count += 1
        return self._count - 1

    def _copy_in(self, maps, into_joined):
        for i, (r, k0, k1, c0, c1) in enumerate(self._runs):
            if into_joined:
                dst = self._joined[i][self._count * r * r:(self._count + 1) * r * r]
            else:
                dst = torch.empty([r * r, c1 - c0], dtype=self.dtype, device=self.device)
                self._pending[i].append(dst)
            col = 0
            for m in maps[k0:k1]:
                dst[:, col:col + m.shape[0]] = m.reshape(m.shape[0], r * r).t()
                col += m.shape[0]

    def _join(self):
        """Move pending samples into the joined tensors (run by run, freeing each pending tensor when copied)."""
        if not self._pending or not self._pending[0]:
            return
        for i, (r, _, _, c0, c1) in enumerate(self._runs):
            old, keep = self._joined[i], self._num_joined * r * r
            joined = torch.empty([self._count * r * r, c1 - c0], dtype=self.dtype, device=self.device)
            if keep:
                joined[:keep] = old[:keep]
            self._joined[i] = old = None
            row = keep
            pending = self._pending[i]
            while pending:
                t = pending.pop(0)
                joined[row:row + t.shape[0]] = t
                row += t.shape[0]
                del t
            self._joined[i] = joined
        self._num_joined = self._count

    def __len__(self):
        return self._count

    @property
    def num_samples(self) -> int:
        return self._count

    @property
    def total_channels(self) -> int:
        return total_channels(self.layout or [])

    dim = total_channels

    @property
    def nbytes(self) -> int:
        """Bytes held (including preallocated capacity)."""
        total = 0
        for t in [t for t in self._joined or [] if t is not None] + [t for p in self._pending or [] for t in p]:
            total += t.numel() * t.element_size()
        return int(total)

    def _table(self, r, out_res, mode):
        """Per output pixel: the 4 source rows ``y_src * r + x_src`` [R*R, 4] and their weights ``wy * wx``."""
        key = (r, out_res, mode)
        if key not in self._tables:
            y0, y1, wy0, wy1 = source_taps(r, out_res, mode, np.float32)
            ys, xs = (y0, y0, y1, y1), (y0, y1, y0, y1)
            wys, wxs = (wy0, wy0, wy1, wy1), (wy0, wy1, wy0, wy1)
            idx = np.stack([(yy[:, None] * r + xx[None, :]).reshape(-1) for yy, xx in zip(ys, xs)], axis=1)
            w = np.stack([(a[:, None] * b[None, :]).reshape(-1) for a, b in zip(wys, wxs)], axis=1)
            self._tables[key] = (torch.from_numpy(idx).to(self.device),
                                 torch.from_numpy(w.astype(np.float32)).to(self.device))
        return self._tables[key]

    def _resolve(self, out_res, mode):
        out_res = self.out_res if out_res is None else _check_res(out_res)
        if out_res is None:
            raise ValueError('out_res is needed: pass it here or to the NativeFeatureStore constructor')
        mode = self.mode if mode is None else mode
        _check_mode(mode)
        return out_res, mode

    def gather(self, sample_idx, pixel_index, out_res: Optional[int] = None, mode: Optional[str] = None):
        """float32 ``[P, D]``: for each pixel, its row of its sample's ``dense_features``."""
        out_res, mode = self._resolve(out_res, mode)
        pixel_index = _check_pixels(pixel_index, out_res).to(self.device)
        sample_idx = torch.as_tensor(sample_idx, dtype=torch.int64).reshape(-1).to(self.device)
        if sample_idx.numel() not in (1, pixel_index.numel()):
            raise ValueError('sample_idx must be an int or give one sample per pixel')
        if sample_idx.numel() and (int(sample_idx.min()) < 0 or int(sample_idx.max()) >= self._count):
            raise IndexError(f'sample index out of range (the store holds {self._count} samples)')
        self._join()
        n = pixel_index.numel()
        out = torch.empty([n, self.total_channels], dtype=torch.float32, device=self.device)
        for (r, _, _, c0, c1), data in zip(self._runs, self._joined):
            table_idx, table_w = self._table(r, out_res, mode)
            idx = table_idx[pixel_index] + (sample_idx * (r * r))[:, None]
            w = table_w[pixel_index]
            if data.dtype in (torch.float32, torch.float64):
                out[:, c0:c1] = F.embedding_bag(idx, data, per_sample_weights=w.to(data.dtype), mode='sum')
            else:  # reduced-precision storage: blend in float32
                rows = data.index_select(0, idx.reshape(-1)).view(n, 4, c1 - c0).float()
                out[:, c0:c1] = torch.bmm(w.unsqueeze(1), rows).squeeze(1)
        return out

    def gather_flat(self, flat_index, out_res: Optional[int] = None, mode: Optional[str] = None):
        """Rows of the originals' training matrix ``[num_samples * out_res^2, D]`` (sample-major, row-major)."""
        out_res, mode = self._resolve(out_res, mode)
        flat_index = torch.as_tensor(flat_index, dtype=torch.int64).reshape(-1)
        hw = out_res * out_res
        return self.gather(flat_index // hw, flat_index % hw, out_res, mode)


# ------------------------------------------------------------------------------------------- fast projection


class _ProjectionPlan:
    """How ``sum_k up(W_k F_k) + b`` is evaluated for one feature layout, output size and mode.

    Per sample, the maps at the output resolution ("top") are copied once into one pixel-major matrix
    ``[R*R, C_top]`` (the maps side by side) and projected band by band straight into the band's pre-activation.
    Every other resolution r gets ``P_r = F_r^T W_r^T`` (pixel-major [r, r, hidden]) once per call (from a
    pixel-major copy too when the C kernel runs: a contiguous GEMM operand is 10-20 % faster), which is then
    upsampled into each band:

    * with the C kernel (``upsample_kernel``; CPU, float32): per output row, every P_r is blended along y into a
      small cache-resident row, then along x into the band, all resolutions summed per pixel in registers, with the
      bias and the ReLU fused in;
    * otherwise (PyTorch): an interpolation along x, ``Y_r = P_r x_2 Ux^T`` ([r, R, hidden]; exact phase-wise
      blends for integer upsampling factors, a small matmul otherwise), and per output band of B rows an
      interpolation along y, ``Uy[band, lo:hi] @ Y_r[lo:hi]`` (a GEMM over the few source rows the band needs),
      accumulated into the band.

    Only ``[B*R, hidden]`` is ever at the output resolution. The buffers are kept between calls (allocating fresh
    multi-megabyte buffers per call costs more in page faults than the arithmetic).
    """

    def __init__(self, layout, out_res, mode, band_rows, device, dtype, use_kernel=None):
        self.layout = list(layout)
        self.out_res = out_res
        self.mode = mode
        self.device = device
        self.dtype = dtype
        precision = _precision_for(dtype)
        R = out_res
        self.top_maps = [k for k, (_, r) in enumerate(layout) if r == R]
        self.low = {}  # resolution -> dict(maps, and taps (C kernel) or blocks and xstep (PyTorch))
        for k, (_, r) in enumerate(layout):
            if r != R:
                self.low.setdefault(r, dict(maps=[]))['maps'].append(k)
        band_rows = max(1, min(int(band_rows), R))
        self.bands = [(y0, min(R, y0 + band_rows)) for y0 in range(0, R, band_rows)]
        self.band_rows = band_rows
        self.kernel = None
        usable = torch.device(device).type == 'cpu' and dtype == torch.float32
        if use_kernel and not usable:
            raise ValueError(f'the C upsampling kernel runs on CPU in float32, not {device} / {dtype}')
        if use_kernel is not False and usable and self.low:
            self.kernel = upsample_kernel.get()
            if self.kernel is None and use_kernel:
                raise RuntimeError('the C upsampling kernel is not available (no C compiler, a failed build, or '
                                   f'{custom_ops.FORCE_REF_ENV}=1); see the warning above')
        for r, entry in self.low.items():  # what each path needs to upsample resolution r
            if self.kernel is not None:
                entry['taps'] = source_taps(r, R, mode, np.float32)
                continue
            uy = _interp_matrix(r, R, mode, precision)
            blocks = []
            for y0, y1 in self.bands:
                nz = np.nonzero(uy[y0:y1].any(axis=0))[0]
                lo, hi = int(nz.min()), int(nz.max()) + 1
                blocks.append((lo, hi, torch.from_numpy(uy[y0:y1, lo:hi]).to(device=device, dtype=dtype)))
            entry['blocks'] = blocks
            entry['xstep'] = self._xstep_plan(r, R, mode, precision)
        self._work = {}
        self._work_hidden = 0
        self._accumulator = None
        self._pixel_major = {}  # resolution -> [r*r, C_r] copy of the loaded sample's maps
        self._maps = None

    def _xstep_plan(self, r, R, mode, precision):
        """Integer upsampling factor s (r > 16): phases p = 0..s-1 of output column s*j+p blend source columns
        (j-1, j) for the first ``n_left`` phases and (j, j+1) for the rest, with fixed weights; else a dense matrix."""
        if R % r == 0 and R > r and r > 16:
            s = R // r
            i0, i1, w0, w1 = source_taps(r, R, mode, precision)
            if mode == 'nearest':
                return ('repeat', s)
            j = r // 2  # an interior source column: no clamping there
            left, weights = [], []
            for p in range(s):
                xo = s * j + p
                left.append(int(i0[xo]) - j == -1)
                weights.append((float(w0[xo]), float(w1[xo])))
            n_left = sum(left)
            if left != [True] * n_left + [False] * (s - n_left):
                raise AssertionError('unexpected interpolation phases')
            w1 = torch.tensor([b for _, b in weights], dtype=self.dtype, device=self.device)
            return ('phase', s, n_left, w1.view(1, 1, s, 1))
        ux = torch.from_numpy(_interp_matrix(r, R, mode, precision)).to(device=self.device, dtype=self.dtype)
        return ('dense', ux)

    @staticmethod
    def _xstep(P, Y, plan):
        """``P`` [r, r, h] -> ``Y`` [r, R, h] interpolated along x (dim 1), written in place."""
        r, _, h = P.shape
        if plan[0] == 'dense':
            torch.matmul(plan[1], P, out=Y)
            return
        s = plan[1]
        Yv = Y.view(r, r, s, h)
        if plan[0] == 'repeat':
            Yv.copy_(P.unsqueeze(2).expand(r, r, s, h))
            return
        _, s, n, w1 = plan
        prev, nxt = P[:, :-1].unsqueeze(2), P[:, 1:].unsqueeze(2)
        # w0 * a + w1 * b with w0 + w1 = 1, as one lerp (a + w1 * (b - a)): equal up to float rounding.
        if n:  # phases left of the source column: (j-1, j); at j = 0 PyTorch clamps the source to column 0
            torch.lerp(prev.expand(-1, -1, n, -1), nxt.expand(-1, -1, n, -1), w1[:, :, :n], out=Yv[:, 1:, :n])
            Yv[:, 0, :n] = P[:, 0].unsqueeze(1)
        if n < s:  # phases right of it: (j, j+1); at j = r-1 both taps read column r-1
            torch.lerp(prev.expand(-1, -1, s - n, -1), nxt.expand(-1, -1, s - n, -1), w1[:, :, n:],
                       out=Yv[:, :-1, n:])
            Yv[:, -1, n:] = P[:, -1].unsqueeze(1)

    def _workspace(self, hidden):
        """Flat buffers sized for the largest ``hidden`` seen, viewed at the current one."""
        if hidden > self._work_hidden:
            self._work = {}  # release the old buffers first
            self._accumulator = None
            R = self.out_res
            kw = dict(dtype=self.dtype, device=self.device)
            self._work = dict(P={r: torch.empty(r * r * hidden, **kw) for r in self.low},
                              band=torch.empty(self.band_rows * R * hidden, **kw))
            if self.kernel is None:  # the kernel reads P directly; the PyTorch path interpolates along x first
                self._work['Y'] = {r: torch.empty(r * R * hidden, **kw) for r in self.low}
            self._work_hidden = hidden
        return self._work

    def _kernel_for(self, hidden):
        """The C kernel bound to the P buffers at this ``hidden`` width (rebuilt when it changes)."""
        acc = self._accumulator
        if acc is None or acc.hidden != hidden:
            work = self._work
            sources = [(work['P'][r][:r * r * hidden], entry['taps']) for r, entry in self.low.items()]
            self._accumulator = acc = upsample_kernel.BandAccumulator(self.kernel, sources, self.out_res, hidden)
        return acc

    def release(self):
        """Drop the kept buffers (they are rebuilt on the next call)."""
        self._work, self._work_hidden, self._pixel_major, self._accumulator, self._maps = {}, 0, {}, None, None

    def _copied_groups(self):
        """(resolution, map indices) of the resolutions ``load`` copies pixel-major: the output resolution, and
        with the C kernel every other one too. (Without the kernel the PyTorch path's Y buffers already cost as
        much memory as those copies; its low-resolution projections read the channel-major maps directly.)"""
        groups = [(self.out_res, self.top_maps)] if self.top_maps else []
        if self.kernel is not None:
            groups += [(r, entry['maps']) for r, entry in self.low.items()]
        return groups

    def load(self, maps):
        """Take one sample's maps: per copied resolution, copy them pixel-major and side by side into
        ``[r*r, C_r]`` (one contiguous GEMM operand)."""
        self._maps = maps
        for r, ks in self._copied_groups():
            channels = sum(maps[k].shape[0] for k in ks)
            buf = self._pixel_major.get(r)
            if buf is None or buf.shape[1] != channels:
                self._pixel_major[r] = buf = None  # free the old one first
                self._pixel_major[r] = buf = torch.empty([r * r, channels], dtype=self.dtype, device=self.device)
            col = 0
            for k in ks:
                c = maps[k].shape[0]
                if self.kernel is not None and maps[k].is_contiguous():
                    upsample_kernel.transpose_into(self.kernel, maps[k], buf, col)
                else:
                    buf[:, col:col + c] = maps[k].reshape(c, r * r).t()
                col += c

    def unload(self):
        """Drop the reference to the sample's maps (the copies are overwritten by the next ``load``)."""
        self._maps = None

    @staticmethod
    def _stack_rows(blocks):
        """``torch.cat(blocks)`` for [C_k, hidden] blocks, as a view when they are consecutive rows of one matrix
        (the column blocks of adjacent maps in a first-layer weight are)."""
        first = blocks[0]
        end, storage = first.data_ptr(), first.untyped_storage().data_ptr()
        for b in blocks:
            if (b.data_ptr() != end or b.stride() != first.stride() or b.shape[1] != first.shape[1]
                    or b.untyped_storage().data_ptr() != storage):
                return torch.cat(blocks)
            end += b.shape[0] * b.stride(0) * b.element_size()
        total = sum(b.shape[0] for b in blocks)
        return first.as_strided((total, first.shape[1]), first.stride(), first.storage_offset())

    def run(self, weights_t, bias, consume, relu=False):
        """Evaluate the first layer for the loaded sample and hand each band to ``consume(y0, y1, pre_activation)``.

        ``weights_t[k]`` is map k's column block of the (stacked) first-layer weight, transposed: [C_k, hidden];
        ``bias`` is [hidden] or None. ``pre_activation`` is a reused [(y1-y0)*R, hidden] buffer (pixel-major) that
        ``consume`` may overwrite; with ``relu`` it is clamped at 0 first (fused into the kernel where it runs).
        """
        R = self.out_res
        hidden = weights_t[0].shape[1]
        work = self._workspace(hidden)
        Y = {}
        for r, entry in self.low.items():
            P = work['P'][r][:r * r * hidden].view(r * r, hidden)
            if r in self._pixel_major:
                torch.mm(self._pixel_major[r], self._stack_rows([weights_t[k] for k in entry['maps']]), out=P)
            else:
                for i, k in enumerate(entry['maps']):
                    f = self._maps[k].reshape(self._maps[k].shape[0], r * r).t()
                    torch.mm(f, weights_t[k], out=P) if i == 0 else P.addmm_(f, weights_t[k])
            if self.kernel is None:
                Yr = work['Y'][r][:r * R * hidden].view(r, R, hidden)
                self._xstep(P.view(r, r, hidden), Yr, entry['xstep'])
                Y[r] = Yr.view(r, R * hidden)
        accumulate = self._kernel_for(hidden) if self.kernel is not None else None
        top = self._pixel_major.get(R) if self.top_maps else None
        top_weight = self._stack_rows([weights_t[k] for k in self.top_maps]) if self.top_maps else None
        buf = work['band'][:self.band_rows * R * hidden].view(self.band_rows * R, hidden)
        if accumulate is not None and bias is not None:
            bias = bias.contiguous()
        for b, (y0, y1) in enumerate(self.bands):
            hb = buf[:(y1 - y0) * R]
            if accumulate is not None:  # the kernel adds the bias, every lower resolution and the ReLU
                if top_weight is not None:
                    torch.mm(top[y0 * R:y1 * R], top_weight, out=hb)
                accumulate(hb, y0, y1 - y0, bias=bias, accumulate=top_weight is not None, relu=relu)
                consume(y0, y1, hb)
                continue
            if top_weight is None:
                hb.zero_() if bias is None else hb.copy_(bias.expand_as(hb))
            elif bias is None:
                torch.mm(top[y0 * R:y1 * R], top_weight, out=hb)
            else:
                torch.addmm(bias, top[y0 * R:y1 * R], top_weight, out=hb)
            flat = hb.view(y1 - y0, R * hidden)
            for r, entry in self.low.items():
                lo, hi, block = entry['blocks'][b]
                flat.addmm_(block, Y[r][lo:hi])
            if relu:
                hb.relu_()
            consume(y0, y1, hb)


def _prepare_maps(features, layout_expected, device, dtype):
    maps = _as_maps(features)
    layout = feature_layout(maps)
    if layout_expected is not None and total_channels(layout) != layout_expected:
        raise ValueError(f'the features have {total_channels(layout)} channels but the first layer takes '
                         f'{layout_expected}')
    return [m.to(device=device, dtype=dtype) for m in maps], layout


def _split_columns(weight, layout):
    """Per map: its column block of ``weight`` [hidden, D], transposed to [C_k, hidden]. These are views (a BLAS
    reads a transposed column block directly), so no weight is copied."""
    out, col = [], 0
    for c, _ in layout:
        out.append(weight[:, col:col + c].t())
        col += c
    return out


def first_layer_projection(features, weight: torch.Tensor, bias: Optional[torch.Tensor], out_res: int,
                           mode: str = 'bilinear', band_rows: int = 16,
                           use_kernel: Optional[bool] = None) -> torch.Tensor:
    """``W . up(F) + b`` for every output pixel as ``[hidden, out_res, out_res]``, without the dense features.

    Equal to ``(dense_features(features, out_res, mode) @ weight.T + bias).T`` up to float rounding; computed as
    ``sum_k up(W_k . F_k) + b`` with every ``W_k . F_k`` at the map's native resolution (see ``_ProjectionPlan``).
    Runs in ``weight``'s dtype and on its device; ``use_kernel`` as in ``EnsemblePredictor``.
    """
    out_res = _check_res(out_res)
    _check_mode(mode)
    if weight.ndim != 2:
        raise ValueError(f'weight must be [hidden, D], got shape {tuple(weight.shape)}')
    maps, layout = _prepare_maps(features, weight.shape[1], weight.device, weight.dtype)
    plan = _ProjectionPlan(layout, out_res, mode, band_rows, weight.device, weight.dtype, use_kernel=use_kernel)
    out = torch.empty([out_res * out_res, weight.shape[0]], dtype=weight.dtype, device=weight.device)

    def consume(y0, y1, hb):
        out[y0 * out_res:y1 * out_res] = hb

    with torch.no_grad():
        plan.load(maps)
        plan.run(_split_columns(weight.detach(), layout), None if bias is None else bias.detach(), consume)
    return out.t().reshape(weight.shape[0], out_res, out_res).contiguous()


# ------------------------------------------------------------------------------------------------ the ensemble


@dataclass
class EnsembleResult:
    """One sample's ensemble output.

    ``labels``: int64 [H, W], per-pixel majority vote over the models' argmax labels (ties -> smallest label, as
    ``scipy.stats.mode``); ``js``: float32 [H, W], ``H(mean_k p_k) - mean_k H(p_k)`` (natural log); ``score``: mean of
    the largest ``int(H*W*top_fraction)`` js values (all of them when that is 0; the originals'
    ``uncertrainty_score``); ``mean_prob``: [H, W, C] mean softmax (with ``keep_mean_prob``); ``model_probs``:
    [M, H, W, C] per-model softmax (with ``keep_model_probs``); both in the models' dtype.
    """
    labels: torch.Tensor
    score: float
    js: torch.Tensor
    mean_prob: Optional[torch.Tensor] = None
    model_probs: Optional[torch.Tensor] = None


def _layers_of(model):
    """The ``nn.Sequential`` of a pixel classifier: ``model.module`` (DataParallel), then ``.layers`` if present."""
    m = model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model
    layers = getattr(m, 'layers', m)
    if not isinstance(layers, nn.Sequential) or len(layers) == 0 or not isinstance(layers[0], nn.Linear):
        raise TypeError('each model must be an nn.Sequential (or have one as .layers) whose first module is '
                        'nn.Linear')
    return layers


def _compile_rest(rest):
    """The layers after the first Linear as a list of stages, with eval-mode BatchNorm folded into a neighbouring
    Linear: ``('relu',)``, ``('affine', W_t [in, out], b [out])`` or ``('scale', a, c)`` (``x * a + c``).

    Returns None when a module is not Linear / ReLU / BatchNorm1d with running statistics / Dropout / Identity;
    the caller then runs the modules themselves. Folding changes results only by float rounding.
    """
    stages = []
    for mod in rest:
        if isinstance(mod, nn.Linear):
            b = mod.bias if mod.bias is not None else torch.zeros_like(mod.weight[:, 0])
            stages.append(['affine', mod.weight.detach().t(), b.detach()])
        elif isinstance(mod, nn.ReLU):
            stages.append(['relu'])
        elif isinstance(mod, nn.BatchNorm1d):
            if mod.training or mod.running_mean is None or mod.running_var is None:
                return None
            a = torch.rsqrt(mod.running_var.detach() + mod.eps)
            if mod.weight is not None:
                a = a * mod.weight.detach()
            c = -mod.running_mean.detach() * a
            if mod.bias is not None:
                c = c + mod.bias.detach()
            stages.append(['scale', a, c])
        elif isinstance(mod, (nn.Dropout, nn.Identity)) and not (isinstance(mod, nn.Dropout) and mod.training):
            continue
        else:
            return None
    merged = []
    for st in stages:
        if merged and st[0] == 'affine' and merged[-1][0] == 'scale':  # (x a + c) W + b
            _, a, c = merged.pop()
            st = ['affine', st[1] * a[:, None], st[2] + c @ st[1]]
        elif merged and st[0] == 'scale' and merged[-1][0] == 'affine':  # (x W + b) a + c
            _, wt, b = merged.pop()
            st = ['affine', wt * st[1][None, :], b * st[1] + st[2]]
        merged.append(st)
    return [tuple(st) for st in merged]


class _PassRunner:
    """Runs the layers after the first Linear for the models of one pass on a band of pre-activations.

    Each model's layers are compiled (``_compile_rest``) and run with plain matmuls on its column slice of the band
    (no copy: the slice is a strided matrix the BLAS reads directly); a leading ReLU shared by all models is left to
    the plan. The last Linear writes class-major logits ``[C, n]``. Models whose layers do not compile run their own
    modules.
    """

    def __init__(self, members):
        self.members = members  # (model index, column offset, hidden, rest modules)
        self.compiled = []
        for _, _, _, rest in members:
            stages = _compile_rest(rest)
            if stages is not None and stages and stages[-1][0] == 'affine':
                wt, b = stages[-1][1], stages[-1][2]
                stages = stages[:-1] + [('last', wt.t().contiguous(), b[:, None].contiguous())]  # [C, in], [C, 1]
            self.compiled.append(stages)
        self.shared_relu = all(c is not None and c and c[0][0] == 'relu' for c in self.compiled)

    def __call__(self, hb, out=None):
        """``hb`` [n, sum hidden] (may be overwritten) -> logits [m, C, n] (class-major), written into ``out`` when
        given (e.g. a band of the statistics' buffer: no stacking copy). With ``shared_relu`` the leading ReLU of
        every model must already be applied to ``hb`` (``_ProjectionPlan.run(relu=True)`` does it in one pass over
        all models' columns, fused into the kernel where it runs)."""
        outs = []
        for i, ((m, off, h, rest), stages) in enumerate(zip(self.members, self.compiled)):
            x = hb[:, off:off + h]
            if stages is None:
                outs.append(self._place(out, i, m, rest(x).t()))
                continue
            for st in stages[1:] if self.shared_relu else stages:
                if st[0] == 'relu':
                    x = x.relu_() if x.is_contiguous() else x.relu()
                elif st[0] == 'affine':
                    x = torch.addmm(st[2], x, st[1])
                elif st[0] == 'scale':
                    x = torch.addcmul(st[2], x, st[1])
                else:
                    if out is not None and st[1].shape[0] == out.shape[1]:
                        x = torch.addmm(st[2], st[1], x.t(), out=out[i])
                    else:
                        x = self._place(out, i, m, torch.addmm(st[2], st[1], x.t()))
                    break
            else:
                x = self._place(out, i, m, x.t())
            outs.append(x)
        if out is not None:
            return out
        if len(outs) == 1:
            return outs[0].unsqueeze(0)
        return torch.stack(outs)

    def _place(self, out, i, model, logits):
        if out is None:
            return logits
        if logits.shape != out.shape[1:]:
            raise ValueError(f'model {model} gives {logits.shape[0]} classes, model {self.members[0][0]} gives '
                             f'{out.shape[1]}')
        out[i].copy_(logits)
        return out[i]


_STATS_CHUNK = 16384  # pixels per reduction step: bounds the temporaries (about 10 x models x classes x chunk values)


class _EnsembleStats:
    """Accumulates per-model logits into vote counts, summed probabilities and summed entropies.

    The logits of a group of models (one pass of the fast path, one model of the dense path) arrive for all pixels
    at once, class-major, and are reduced in chunks of ``chunk`` pixels: many small reductions over a handful of
    classes cost more than the arithmetic, one reduction over everything more memory than it needs.
    ``logits_buffer`` lends a reused buffer for a group's logits.
    """

    def __init__(self, num_models, num_pixels, keep_mean_prob, keep_model_probs, chunk=None):
        self.num_models = num_models
        self.num_pixels = num_pixels
        self.keep_model_probs = keep_model_probs
        self.keep_mean_prob = keep_mean_prob
        self.chunk = int(chunk or _STATS_CHUNK)
        self.psum = self.hsum = self.votes = self.model_probs = self._ones = self._buffer = None

    def logits_buffer(self, m, c, dtype, device):
        """A [m, c, num_pixels] buffer for the logits of ``m`` models (reused by the next group)."""
        need = m * c * self.num_pixels
        buf = self._buffer
        if buf is None or buf.numel() < need or buf.dtype != dtype or buf.device != torch.device(device):
            self._buffer = buf = None
            self._buffer = buf = torch.empty([need], dtype=dtype, device=device)
        return buf[:need].view(m, c, self.num_pixels)

    def add(self, first_model, logits):
        """``logits`` [m, C, num_pixels] (class-major) of models ``first_model .. first_model+m-1``."""
        m, c, n = logits.shape
        if n != self.num_pixels:
            raise ValueError(f'expected logits for {self.num_pixels} pixels, got {n}')
        if self.psum is None:
            kw = dict(dtype=logits.dtype, device=logits.device)
            self.psum = torch.zeros([c, n], **kw)
            self.hsum = torch.zeros([n], **kw)
            self.votes = torch.zeros([n, c], dtype=torch.int32, device=logits.device)
            if self.keep_model_probs:
                self.model_probs = torch.zeros([self.num_models, c, n], **kw)
        elif c != self.psum.shape[0]:
            raise ValueError(f'model {first_model} gives {c} classes, an earlier model {self.psum.shape[0]}')
        models = slice(first_model, first_model + m)
        for start in range(0, n, self.chunk):
            self._reduce(models, start, logits[:, :, start:start + self.chunk])

    def _reduce(self, models, start, logits):
        m, c, n = logits.shape
        if self._ones is None or self._ones.shape[0] < n or self._ones.shape[1] < m:
            self._ones = torch.ones([n, m], dtype=torch.int32, device=logits.device)
        z = logits - logits.amax(dim=1, keepdim=True)
        e = z.exp()
        total = e.sum(dim=1, keepdim=True)
        p = e.div_(total)  # softmax
        logp = z.sub_(total.log_())  # log_softmax
        # Categorical(logits=...).entropy() = -(clamp(log_softmax, min=finfo.min) * softmax).sum(classes)
        neg_entropy = (logp.clamp(min=torch.finfo(logp.dtype).min) * p).sum(1)  # [m, n]
        sl = slice(start, start + n)
        self.psum[:, sl] += p.sum(0) if m > 1 else p[0]
        self.hsum[sl] -= neg_entropy.sum(0) if m > 1 else neg_entropy[0]
        # the originals: torch.max(log_softmax(logits), 1); first maximum on ties. (argmax over a short,
        # non-innermost axis is slow on CPU; on a pixel-major copy it is fast.)
        label = logp.permute(2, 0, 1).contiguous().argmax(dim=2)  # [n, m]
        self.votes[sl].scatter_add_(1, label, self._ones[:n, :m])
        if self.model_probs is not None:
            self.model_probs[models, :, sl] = p

    def finish(self, out_res, top_fraction):
        M = self.num_models
        self._buffer = None
        mean = self.psum.t() / M
        # Categorical(probs=mean).entropy(): probs renormalised, log of probs clamped to [eps, 1 - eps].
        probs = mean / mean.sum(1, keepdim=True)
        eps = torch.finfo(probs.dtype).eps
        logits = torch.log(probs.clamp(min=eps, max=1 - eps)).clamp(min=torch.finfo(probs.dtype).min)
        full_entropy = -(logits * probs).sum(1)
        js = full_entropy - self.hsum / M
        k = int(self.num_pixels * top_fraction)
        top = js if k <= 0 else torch.topk(js, k, sorted=False).values  # js.sort()[-0:] is everything
        score = float(top.double().mean())
        labels = self.votes.argmax(dim=1).to(torch.int64)  # first maximum: the smallest label on ties
        return EnsembleResult(
            labels=labels.view(out_res, out_res),
            score=score,
            js=js.to(torch.float32).view(out_res, out_res),
            mean_prob=mean.reshape(out_res, out_res, -1) if self.keep_mean_prob else None,
            model_probs=(self.model_probs.transpose(1, 2).reshape(M, out_res, out_res, -1)
                         if self.model_probs is not None else None))


class EnsemblePredictor:
    """Segmentation, uncertainty map and uncertainty score of one generated sample from an ensemble of classifiers.

    ``models``: pixel classifiers; each is an ``nn.Sequential`` whose first module is ``nn.Linear`` (or has one as
    ``.layers``, optionally inside DataParallel). They are put in eval mode; computation runs on the first model's
    device and in its parameter dtype.

    ``fast=True``: the first layer of each model is evaluated by ``_ProjectionPlan`` (native-resolution projection,
    then upsampling of the hidden activations band by band), ``models_per_pass`` models at a time; the remaining
    layers (BatchNorm folded into the next Linear) run on each band of ``chunk`` pixels (rounded to whole rows).
    ``use_kernel``: the C upsampling kernel (``upsample_kernel``; CPU and float32 only): None uses it where it
    builds, False never (the PyTorch path), True requires it. ``models_per_pass`` None: 2 with the kernel (larger
    GEMMs, 5-7 % faster), else 1 (the PyTorch path's buffers grow with it).
    Extra memory at paper256, 256x256, 128 hidden units: with the kernel and 2 models per pass, 61 MiB of
    pixel-major map copies, 21 MiB of native-resolution projections, a 4 MiB band and one pass's stacked weights
    (5 MiB); the PyTorch path with 1 model per pass: 32 MiB of copies, 11 MiB of projections, 33 MiB of
    x-interpolated projections and a 2 MiB band. Plus one pass's logits (2 MiB for 2 models x 4 classes) and the
    vote and probability sums (2.3 MiB). Call ``release()`` to drop the kept buffers. ``fast=False``: the reference,
    ``dense_features`` and every full model on the [H*W, D] matrix, as the originals.

    ``top_fraction``: fraction of pixels whose js values make the score (the originals: 1/10).
    ``keep_mean_prob`` / ``keep_model_probs``: also return the mean / per-model softmax (models' dtype).
    """

    def __init__(self, models: Sequence[nn.Module], out_res: int, mode: str = 'bilinear', fast: bool = True,
                 chunk: int = 4096, models_per_pass: Optional[int] = None, top_fraction: float = 0.1,
                 keep_mean_prob: bool = False, keep_model_probs: bool = False, use_kernel: Optional[bool] = None):
        _check_mode(mode)
        self.out_res = _check_res(out_res)
        self.mode = mode
        self.fast = bool(fast)
        if int(chunk) < 1 or (models_per_pass is not None and int(models_per_pass) < 1):
            raise ValueError('chunk and models_per_pass must be positive')
        if not 0 <= float(top_fraction) <= 1:
            raise ValueError(f'top_fraction must lie in [0, 1], got {top_fraction}')
        self.chunk = int(chunk)
        self.models_per_pass = None if models_per_pass is None else int(models_per_pass)
        self.use_kernel = use_kernel
        self.top_fraction = float(top_fraction)
        self.keep_mean_prob = keep_mean_prob
        self.keep_model_probs = keep_model_probs
        self.models = list(models)
        if not self.models:
            raise ValueError('models is empty')
        self.layers = [_layers_of(m) for m in self.models]
        for m in self.models:
            m.eval()
        first = self.layers[0][0].weight
        self.device, self.dtype = first.device, first.dtype
        self.dim = first.shape[1]
        for i, layers in enumerate(self.layers):
            if layers[0].in_features != self.dim:
                raise ValueError(f'model {i} takes {layers[0].in_features} features, model 0 takes {self.dim}')
        self._passes = None
        self._plan = None
        self._stack_buffer = None

    def _prepare(self, layout):
        key = tuple(layout)
        if self._plan is not None and self._plan_key == key:
            return
        self._plan = None  # free the old plan's buffers before building the new one
        band_rows = max(1, self.chunk // self.out_res)
        self._plan = _ProjectionPlan(layout, self.out_res, self.mode, band_rows, self.device, self.dtype,
                                     use_kernel=self.use_kernel)
        self._plan_key = key
        per_pass = self.models_per_pass or (2 if self._plan.kernel is not None else 1)
        self._passes = []
        for start in range(0, len(self.layers), per_pass):
            members, weights, biases, off = [], [], [], 0
            for m in range(start, min(start + per_pass, len(self.layers))):
                lin = self.layers[m][0]
                hidden = lin.out_features
                weights.append(lin.weight.detach())
                biases.append(lin.bias.detach() if lin.bias is not None
                              else torch.zeros(hidden, dtype=self.dtype, device=self.device))
                members.append((m, off, hidden, self.layers[m][1:]))
                off += hidden
            self._passes.append((_PassRunner(members), weights, torch.cat(biases)))

    def _stacked(self, weights):
        """The first-layer weights of a pass's models stacked into one [sum hidden, D] matrix. One buffer serves
        every pass (2.5 MB per model at paper256: a copy kept per pass would add 25 MB to a fast path of about
        110 MB, and a fresh allocation per pass costs more in page faults than the copy)."""
        if len(weights) == 1:
            return weights[0]
        rows = sum(w.shape[0] for w in weights)
        if self._stack_buffer is None or self._stack_buffer.shape[0] < rows:
            self._stack_buffer = None
            self._stack_buffer = torch.empty([rows, self.dim], dtype=self.dtype, device=self.device)
        return torch.cat(weights, dim=0, out=self._stack_buffer[:rows])

    def release(self):
        """Free the fast path's cached buffers and weight copies (rebuilt on the next call)."""
        self._plan = self._passes = self._stack_buffer = None

    def __call__(self, features) -> EnsembleResult:
        with torch.no_grad():
            maps, layout = _prepare_maps(features, self.dim, self.device, self.dtype)
            R = self.out_res
            stats = _EnsembleStats(len(self.layers), R * R, self.keep_mean_prob, self.keep_model_probs)
            if self.fast:
                self._prepare(layout)
                self._plan.load(maps)
                for runner, weights, bias in self._passes:
                    weights_t = _split_columns(self._stacked(weights), layout)
                    logits = []  # the pass's [m, C, R*R] buffer, made once the first band tells C

                    def consume(y0, y1, hb, runner=runner, logits=logits):
                        if logits:
                            runner(hb, out=logits[0][:, :, y0 * R:y1 * R])
                            return
                        band = runner(hb)
                        logits.append(stats.logits_buffer(band.shape[0], band.shape[1], band.dtype, band.device))
                        logits[0][:, :, y0 * R:y1 * R] = band
                    self._plan.run(weights_t, bias, consume, relu=runner.shared_relu)
                    stats.add(runner.members[0][0], logits[0])
                self._plan.unload()
            else:
                x = dense_features(maps, R, self.mode, self.dtype)
                for m, layers in enumerate(self.layers):
                    stats.add(m, layers(x).t().unsqueeze(0))
                del x
            return stats.finish(R, self.top_fraction)
