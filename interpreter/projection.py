"""The first layer of a pixel classifier without the dense feature matrix.

The first layer of every classifier is linear and so is the upsampling: ``W . up(F) + b = sum_k up(W_k . F_k) + b``.
Each column block ``W_k`` of the first layer is applied at its map's native resolution (maps of equal resolution are
summed first), and only the small ``hidden``-channel result is upsampled, band by band of output rows, straight into
the pre-activation of the next layer (``ProjectionPlan``; ``first_layer_projection`` for one layer and sample).
"""

from typing import Optional

import numpy as np
import torch

from interpreter import upsample_kernel
from interpreter.feature_maps import (
    as_maps,
    check_mode,
    check_out_res,
    feature_layout,
    interp_matrix,
    precision_for,
    source_taps,
    total_channels,
)
from torch_utils import custom_ops


class ProjectionPlan:
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
        precision = precision_for(dtype)
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
            uy = interp_matrix(r, R, mode, precision)
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
        ux = torch.from_numpy(interp_matrix(r, R, mode, precision)).to(device=self.device, dtype=self.dtype)
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


def prepare_maps(features, dim, device, dtype):
    """One sample's maps moved to a first layer's device and dtype, and their layout; their channels must add up to
    the layer's input width ``dim`` (None: not checked)."""
    maps = as_maps(features)
    layout = feature_layout(maps)
    if dim is not None and total_channels(layout) != dim:
        raise ValueError(f'the features have {total_channels(layout)} channels but the first layer takes {dim}')
    return [m.to(device=device, dtype=dtype) for m in maps], layout


def split_columns(weight, layout):
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

    Equal to ``(feature_maps.dense_features(features, out_res, mode) @ weight.T + bias).T`` up to float rounding;
    computed as ``sum_k up(W_k . F_k) + b`` with every ``W_k . F_k`` at the map's native resolution (see
    ``ProjectionPlan``). Runs in ``weight``'s dtype and on its device; ``use_kernel`` as in
    ``ensemble.EnsemblePredictor``.
    """
    out_res = check_out_res(out_res)
    check_mode(mode)
    if weight.ndim != 2:
        raise ValueError(f'weight must be [hidden, D], got shape {tuple(weight.shape)}')
    maps, layout = prepare_maps(features, weight.shape[1], weight.device, weight.dtype)
    plan = ProjectionPlan(layout, out_res, mode, band_rows, weight.device, weight.dtype, use_kernel=use_kernel)
    out = torch.empty([out_res * out_res, weight.shape[0]], dtype=weight.dtype, device=weight.device)

    def consume(y0, y1, hb):
        out[y0 * out_res:y1 * out_res] = hb

    with torch.no_grad():
        plan.load(maps)
        plan.run(split_columns(weight.detach(), layout), None if bias is None else bias.detach(), consume)
    return out.t().reshape(weight.shape[0], out_res, out_res).contiguous()
