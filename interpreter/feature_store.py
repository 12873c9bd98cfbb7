"""The training gather: the annotated samples' feature maps kept at their native resolutions, and the rows of the
originals' dense training matrix computed from them for each mini-batch of pixels."""

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from interpreter.feature_maps import (
    as_maps,
    check_mode,
    check_out_res,
    check_pixels,
    feature_layout,
    pixel_taps,
    source_taps,
    total_channels,
)


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
    ``gather(sample_idx, pixel_index)`` returns the rows of ``feature_maps.dense_features`` for those pixels as float32
    ``[P, D]``; ``sample_idx`` is an int or a tensor with one sample index per pixel. ``gather_flat`` indexes the
    originals' training matrix ``[N * out_res^2, D]`` directly.
    """

    def __init__(self, out_res: Optional[int] = None, mode: str = 'bilinear', dtype=torch.float32,
                 device='cpu', capacity: Optional[int] = None):
        check_mode(mode)
        if not dtype.is_floating_point:
            raise ValueError(f'dtype must be a floating point type, got {dtype}')
        self.out_res = None if out_res is None else check_out_res(out_res)
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
        maps = as_maps(features)
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
            dst = np.arange(out_res)
            index, wy, wx = pixel_taps(source_taps(r, out_res, mode, np.float32), r, dst[:, None], dst[None, :])
            idx = np.stack([i.reshape(-1) for i in index], axis=1)
            # the product weight per tap: one weighted row sum (embedding_bag) blends all 4 at once
            w = np.stack([(a * b).reshape(-1) for a, b in zip(wy, wx)], axis=1)
            self._tables[key] = (torch.from_numpy(idx).to(self.device),
                                 torch.from_numpy(w.astype(np.float32)).to(self.device))
        return self._tables[key]

    def _resolve(self, out_res, mode):
        out_res = self.out_res if out_res is None else check_out_res(out_res)
        if out_res is None:
            raise ValueError('out_res is needed: pass it here or to the NativeFeatureStore constructor')
        mode = self.mode if mode is None else mode
        check_mode(mode)
        return out_res, mode

    def gather(self, sample_idx, pixel_index, out_res: Optional[int] = None, mode: Optional[str] = None):
        """float32 ``[P, D]``: for each pixel, its row of its sample's ``dense_features``."""
        out_res, mode = self._resolve(out_res, mode)
        pixel_index = check_pixels(pixel_index, out_res).to(self.device)
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

    def gather_flat(self, flat_index, out_res: Optional[int] = None, mode: Optional[str] = None, samples=None):
        """Rows of the originals' training matrix ``[num_samples * out_res^2, D]`` (sample-major, row-major): the
        features of a training batch whose labels are the same rows of the flattened masks. ``samples``: the
        store's samples that make up the matrix, in order (default: all of them; see ``subset``)."""
        out_res, mode = self._resolve(out_res, mode)
        flat_index = torch.as_tensor(flat_index, dtype=torch.int64).reshape(-1)
        hw = out_res * out_res
        sample_idx = flat_index // hw
        if samples is not None:
            sample_idx = torch.as_tensor(samples, dtype=torch.int64)[sample_idx]
        return self.gather(sample_idx, flat_index % hw, out_res, mode)

    def subset(self, samples) -> 'StoreSubset':
        """The training matrix of some of the samples (e.g. a cross-validation fold's), without copying features."""
        return StoreSubset(self, samples)


class StoreSubset:
    """Samples ``samples`` of a ``NativeFeatureStore``, renumbered from 0: ``gather_flat`` indexes their training
    matrix as the store's own does for all of its samples."""

    def __init__(self, store: NativeFeatureStore, samples):
        self.store = store
        self.samples = torch.as_tensor(samples, dtype=torch.int64).reshape(-1)

    def __len__(self):
        return self.samples.numel()

    def gather_flat(self, flat_index, out_res: Optional[int] = None, mode: Optional[str] = None):
        return self.store.gather_flat(flat_index, out_res, mode, samples=self.samples)
