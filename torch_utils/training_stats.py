"""Cheap statistics reporting for training: report values anywhere, read means/stds per interval in one place.

`report(name, value)` only adds [count, sum, sum of squares] of the values to a float64 counter kept per
(name, device), so it costs no host-device synchronisation. A `Collector` later drains the counters of the names it
watches, adds them up over devices and (in multi-process runs) over processes, and exposes the statistics of what was
reported since its previous `update()`. Every process must report the same names in the same order (use an empty
value, or `report0`, where a process has nothing to say) because the cross-process sum is one all_reduce over a
tensor stacked in name order.
"""

import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from dnnlib.util import EasyDict

_num_moments = 3  # [count, sum, sum of squares]
_counter_dtype = torch.float64  # float64 so that long runs with many small reports keep their precision.

_rank = 0
_sync_device: Optional[torch.device] = None
_sync_called = False
_counters: Dict[str, Dict[torch.device, torch.Tensor]] = dict()  # name -> device -> moments not yet synced.
_cumulative: Dict[str, torch.Tensor] = dict()  # name -> moments synced so far (CPU), shared by all collectors.


def init_multiprocessing(rank: int, sync_device) -> None:
    """Tell the module its process rank and the device to all-reduce on (None: no cross-process sums).

    Must be called before the first `Collector.update()`; otherwise processes would already disagree about the
    totals. Use 'cuda' with NCCL and 'cpu' with gloo.
    """
    global _rank, _sync_device
    if _sync_called:
        raise RuntimeError('training_stats.init_multiprocessing() must be called before the first Collector.update()')
    _rank = int(rank)
    _sync_device = None if sync_device is None else torch.device(sync_device)


def report(name: str, value):
    """Add scalar(s) to the statistic `name` and return `value` unchanged (so calls can wrap expressions).

    `value` may be a number, a sequence, a numpy array or a tensor of any shape; every element counts as one sample.
    An empty value only registers the name (keeps the name order identical across processes).
    """
    if name not in _counters:
        _counters[name] = dict()
    elems = torch.as_tensor(value)
    if elems.numel() == 0:
        return value
    elems = elems.detach().flatten().to(torch.float32).to(_counter_dtype)
    moments = torch.stack([
        torch.ones_like(elems).sum(),
        elems.sum(),
        elems.square().sum(),
    ])
    device = moments.device
    counter = _counters[name].get(device)
    if counter is None:
        _counters[name][device] = moments
    else:
        counter.add_(moments)
    return value


def report0(name: str, value):
    """Like `report`, but only rank 0's value counts (other ranks report nothing, keeping the name order)."""
    report(name, value if _rank == 0 else [])
    return value


def _sync(names: List[str]) -> List[Tuple[str, torch.Tensor]]:
    """Drain the counters of `names`, sum over devices and processes, add to the cumulative totals."""
    global _sync_called
    if len(names) == 0:
        return []
    _sync_called = True

    device = _sync_device if _sync_device is not None else torch.device('cpu')
    deltas = []
    for name in names:
        delta = torch.zeros([_num_moments], dtype=_counter_dtype, device=device)
        for counter in _counters[name].values():
            delta.add_(counter.to(device))
            counter.zero_()
        deltas.append(delta)
    deltas = torch.stack(deltas)

    dist = torch.distributed
    if _sync_device is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(deltas)

    deltas = deltas.cpu()
    for idx, name in enumerate(names):
        if name not in _cumulative:
            _cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        _cumulative[name].add_(deltas[idx])
    return [(name, _cumulative[name]) for name in names]


class Collector:
    """Statistics of the reported values whose names fully match `regex`, over the interval between updates.

    Values reported before the collector was created are not included. With `keep_previous`, a name that received
    nothing during the last interval keeps the statistics of the interval before; otherwise it reads as empty.
    `update()` is a collective operation in multi-process runs: call it on every process at the same point.
    """

    def __init__(self, regex: str = '.*', keep_previous: bool = True):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._cumulative: Dict[str, torch.Tensor] = dict()  # This collector's view of _cumulative at its last update.
        self._moments: Dict[str, torch.Tensor] = dict()  # Moments of the last interval, per name.
        self.update()  # Take the current totals as the baseline ...
        self._moments.clear()  # ... and forget them.

    def names(self) -> List[str]:
        """Names reported so far (by anyone) that match the regex, in order of first report."""
        return [name for name in _counters if self._regex.fullmatch(name)]

    def update(self) -> None:
        """Gather everything reported since the previous update (all devices and processes)."""
        if not self._keep_previous:
            self._moments.clear()
        for name, cumulative in _sync(self.names()):
            if name not in self._cumulative:
                self._cumulative[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
            delta = cumulative - self._cumulative[name]
            self._cumulative[name].copy_(cumulative)
            if float(delta[0]) != 0:
                self._moments[name] = delta

    def _get_delta(self, name: str) -> torch.Tensor:
        if not self._regex.fullmatch(name):
            raise KeyError(f"{name!r} does not match this collector's regex {self._regex.pattern!r}")
        if name not in self._moments:
            self._moments[name] = torch.zeros([_num_moments], dtype=_counter_dtype)
        return self._moments[name]

    def num(self, name: str) -> int:
        """Number of scalars reported for `name` in the last interval."""
        return int(self._get_delta(name)[0])

    def mean(self, name: str) -> float:
        """Mean of the last interval's values; NaN if there were none."""
        delta = self._get_delta(name)
        if int(delta[0]) == 0:
            return float('nan')
        return float(delta[1] / delta[0])

    def std(self, name: str) -> float:
        """Population standard deviation, sqrt(max(E[x^2] - E[x]^2, 0)); 0 for one value; NaN if none or non-finite."""
        delta = self._get_delta(name)
        count = int(delta[0])
        if count == 0 or not np.isfinite(float(delta[1])):
            return float('nan')
        if count == 1:
            return 0.0
        mean = float(delta[1] / delta[0])
        raw_var = float(delta[2] / delta[0])
        return float(np.sqrt(max(raw_var - mean * mean, 0.0)))

    def as_dict(self) -> EasyDict:
        """{name: {num, mean, std}} for every matching name (what the training loop writes to stats.jsonl)."""
        stats = EasyDict()
        for name in self.names():
            stats[name] = EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
        return stats

    def __getitem__(self, name: str) -> float:
        """`collector[name]` is the mean."""
        return self.mean(name)
