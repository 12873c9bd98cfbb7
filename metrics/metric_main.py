"""Metric registry: computing a metric by name and reporting it to ``<run_dir>/metric-<name>.jsonl``.

Every metric is computed for both outputs of the dual-branch generator: the RGB value under the metric's usual key
(``fid50k_full``) and the NIR value under the same key with ``_nir`` appended (``fid50k_full_nir``,
``pr50k3_full_precision_nir``). A generator without an NIR head gets the RGB keys only.

``calc_metric(metric, G=..., dataset_kwargs=..., num_gpus=1, rank=0, device=None, progress=None, cache=True, ...)``
returns ``EasyDict(results=EasyDict(key -> float), metric, total_time, total_time_str, num_gpus)``. A missing
feature detector raises :class:`metric_utils.DetectorUnavailable` (one-line message), which callers may catch.
"""

import json
import os
import time

import torch

import dnnlib

from . import frechet_inception_distance, inception_score, kernel_inception_distance, metric_utils, precision_recall
from .metric_utils import INCEPTION_URL, VGG16_URL, DetectorUnavailable  # noqa: F401 (re-exported for callers)

_metric_dict = dict()  # name -> function(opts) -> dict of results
_metric_detectors = dict()  # name -> detector URLs the metric needs


def register_metric(fn=None, *, detectors=(INCEPTION_URL,)):
    """Register `fn(opts) -> {key: value}` under its function name; usable as ``@register_metric`` or
    ``@register_metric(detectors=(VGG16_URL,))``."""
    def decorator(func):
        if not callable(func):
            raise TypeError('register_metric() needs a function')
        _metric_dict[func.__name__] = func
        _metric_detectors[func.__name__] = tuple(detectors)
        return func
    return decorator if fn is None else decorator(fn)


def is_valid_metric(metric):
    return metric in _metric_dict


def list_valid_metrics():
    return list(_metric_dict.keys())


def metric_detectors(metric):
    """The detector URLs a registered metric needs (to fetch or check them before a long run)."""
    if not is_valid_metric(metric):
        raise ValueError(_unknown(metric))
    return _metric_detectors[metric]


def _unknown(metric):
    return f'unknown metric {metric!r}; valid metrics: {", ".join(list_valid_metrics())}'


def calc_metric(metric, **kwargs):
    """Compute a registered metric; kwargs are MetricOptions' (G, G_kwargs, dataset_kwargs, num_gpus, rank, device,
    progress, cache, detector_dir, num_gen, max_real, seed, data_loader_kwargs)."""
    if not is_valid_metric(metric):
        raise ValueError(_unknown(metric))
    opts = metric_utils.MetricOptions(**kwargs)
    start_time = time.time()
    results = _metric_dict[metric](opts)
    total_time = time.time() - start_time

    values = dnnlib.EasyDict()
    for key, value in results.items():
        if opts.num_gpus > 1:  # rank 0 holds the values; everybody reports the same numbers
            tensor = torch.as_tensor(float(value), dtype=torch.float64, device=opts.device)
            torch.distributed.broadcast(tensor=tensor, src=0)
            value = float(tensor.cpu())
        values[key] = float(value)
    return dnnlib.EasyDict(results=values, metric=metric, total_time=total_time,
                           total_time_str=dnnlib.util.format_time(total_time), num_gpus=opts.num_gpus)


def report_metric(result_dict, run_dir=None, snapshot_pkl=None):
    """Print the result as one JSON line and append it to ``<run_dir>/metric-<metric>.jsonl`` (one write)."""
    metric = result_dict['metric']
    if not is_valid_metric(metric):
        raise ValueError(_unknown(metric))
    if run_dir is not None and snapshot_pkl is not None:
        snapshot_pkl = os.path.relpath(snapshot_pkl, run_dir)
    line = json.dumps(dict(result_dict, snapshot_pkl=snapshot_pkl, timestamp=time.time()))
    print(line)
    if run_dir is not None and os.path.isdir(run_dir):
        with open(os.path.join(run_dir, f'metric-{metric}.jsonl'), 'a', encoding='utf-8') as f:
            f.write(line + '\n')


def _per_modality(name, values):
    """{'rgb': x, 'nir': y} -> {name: x, name_nir: y}; tuples become several keys via `name` being a tuple."""
    out = dict()
    for modality, value in values.items():
        suffix = '' if modality == 'rgb' else f'_{modality}'
        if isinstance(name, tuple):
            for key, item in zip(name, value):
                out[key + suffix] = item
        else:
            out[name + suffix] = value
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Recommended metrics (the real-data options are fixed: whole dataset, no mirroring).


@register_metric
def fid50k_full(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    max_real, num_gen = opts.counts(None, 50000)
    fid = frechet_inception_distance.compute_fid(opts, max_real=max_real, num_gen=num_gen)
    return _per_modality('fid50k_full', fid)


@register_metric
def fid10k_full(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    max_real, num_gen = opts.counts(None, 10000)
    fid = frechet_inception_distance.compute_fid(opts, max_real=max_real, num_gen=num_gen)
    return _per_modality('fid10k_full', fid)


@register_metric
def kid50k_full(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    max_real, num_gen = opts.counts(1000000, 50000)
    kid = kernel_inception_distance.compute_kid(opts, max_real=max_real, num_gen=num_gen, num_subsets=100,
                                                max_subset_size=1000)
    return _per_modality('kid50k_full', kid)


@register_metric(detectors=(VGG16_URL,))
def pr50k3_full(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    max_real, num_gen = opts.counts(200000, 50000)
    pr = precision_recall.compute_pr(opts, max_real=max_real, num_gen=num_gen, nhood_size=3, row_batch_size=10000,
                                     col_batch_size=10000)
    return _per_modality(('pr50k3_full_precision', 'pr50k3_full_recall'), pr)


@register_metric
def is50k(opts):
    opts.dataset_kwargs.update(max_size=None, xflip=False)
    _, num_gen = opts.counts(None, 50000)
    scores = inception_score.compute_is(opts, num_gen=num_gen, num_splits=10)
    return _per_modality(('is50k_mean', 'is50k_std'), scores)


# ---------------------------------------------------------------------------------------------------------------------
# Legacy metrics (the dataset's xflip setting is kept).


@register_metric
def fid50k(opts):
    opts.dataset_kwargs.update(max_size=None)
    max_real, num_gen = opts.counts(50000, 50000)
    fid = frechet_inception_distance.compute_fid(opts, max_real=max_real, num_gen=num_gen)
    return _per_modality('fid50k', fid)


@register_metric
def kid50k(opts):
    opts.dataset_kwargs.update(max_size=None)
    max_real, num_gen = opts.counts(50000, 50000)
    kid = kernel_inception_distance.compute_kid(opts, max_real=max_real, num_gen=num_gen, num_subsets=100,
                                                max_subset_size=1000)
    return _per_modality('kid50k', kid)


@register_metric(detectors=(VGG16_URL,))
def pr50k3(opts):
    opts.dataset_kwargs.update(max_size=None)
    max_real, num_gen = opts.counts(50000, 50000)
    pr = precision_recall.compute_pr(opts, max_real=max_real, num_gen=num_gen, nhood_size=3, row_batch_size=10000,
                                     col_batch_size=10000)
    return _per_modality(('pr50k3_precision', 'pr50k3_recall'), pr)
