"""torch_utils.training_stats: report/Collector moments, interval (delta) semantics, regex, report0, multi-process sums.

Statistics live in module-level state shared by all tests in a process, so every test uses its own name prefix.
"""

import datetime
import json
import math
import os
import time

import numpy as np
import pytest
import torch

from torch_utils import training_stats


def test_report_returns_value_and_collector_matches_numpy():
    collector = training_stats.Collector(regex='T1/.*')
    data_a = [torch.tensor([1.0, 2.0, 4.0]), np.array([[8.0, -1.0]]), 3.5, [0.25, 0.5]]
    for value in data_a:
        assert training_stats.report('T1/a', value) is value
    training_stats.report('T1/b', torch.tensor(7.0))
    collector.update()

    flat = np.concatenate([np.ravel(np.asarray(v, dtype=np.float64)) for v in data_a])
    assert collector.num('T1/a') == flat.size == 8
    assert collector.mean('T1/a') == pytest.approx(flat.mean(), rel=1e-12)
    assert collector.std('T1/a') == pytest.approx(flat.std(), rel=1e-9)  # Population std (ddof=0).
    assert collector['T1/a'] == collector.mean('T1/a')
    assert collector.num('T1/b') == 1 and collector.mean('T1/b') == 7.0 and collector.std('T1/b') == 0.0
    d = collector.as_dict()
    assert list(d) == ['T1/a', 'T1/b']
    assert d['T1/a'].num == 8 and d['T1/a']['mean'] == pytest.approx(flat.mean())


def test_values_reported_before_collector_creation_are_excluded():
    training_stats.report('T2/x', [100.0, 200.0])
    collector = training_stats.Collector(regex='T2/.*')
    collector.update()  # Nothing new since creation, even with keep_previous.
    assert collector.num('T2/x') == 0 and math.isnan(collector.mean('T2/x'))
    training_stats.report('T2/x', [1.0, 3.0])
    collector.update()
    assert collector.num('T2/x') == 2 and collector.mean('T2/x') == 2.0


def test_update_gives_deltas_since_previous_update():
    collector = training_stats.Collector(regex='T3/.*')
    training_stats.report('T3/x', [1.0, 2.0, 3.0])
    collector.update()
    assert collector.num('T3/x') == 3 and collector.mean('T3/x') == 2.0
    training_stats.report('T3/x', [10.0, 20.0])
    collector.update()
    assert collector.num('T3/x') == 2 and collector.mean('T3/x') == 15.0
    assert collector.std('T3/x') == pytest.approx(5.0)


def test_keep_previous():
    keep = training_stats.Collector(regex='T4/.*', keep_previous=True)
    drop = training_stats.Collector(regex='T4/.*', keep_previous=False)
    training_stats.report('T4/x', [2.0, 4.0])
    keep.update()
    drop.update()  # Two collectors watching the same name both see the data.
    assert keep.mean('T4/x') == 3.0 and drop.mean('T4/x') == 3.0
    keep.update()  # An interval with no new data.
    drop.update()
    assert keep.num('T4/x') == 2 and keep.mean('T4/x') == 3.0
    assert drop.num('T4/x') == 0 and math.isnan(drop.mean('T4/x')) and math.isnan(drop.std('T4/x'))


def test_regex_is_a_full_match():
    collector = training_stats.Collector(regex='T5/loss')
    training_stats.report('T5/loss', 1.0)
    training_stats.report('T5/loss_extra', 5.0)
    collector.update()
    assert collector.names() == ['T5/loss']
    assert collector.mean('T5/loss') == 1.0
    with pytest.raises(KeyError):
        collector.mean('T5/loss_extra')
    # The unmatched name was not drained: a collector created before it was reported still sees it.
    other = training_stats.Collector(regex='T5/.*')
    training_stats.report('T5/loss_extra', 7.0)
    other.update()
    assert other.num('T5/loss_extra') == 1 and other.mean('T5/loss_extra') == 7.0


def test_empty_reports_register_names_and_nan_rules():
    collector = training_stats.Collector(regex='T6/.*')
    training_stats.report('T6/empty', [])
    training_stats.report('T6/nan', [1.0, float('nan')])
    collector.update()
    assert collector.names() == ['T6/empty', 'T6/nan']
    assert collector.num('T6/empty') == 0 and math.isnan(collector.mean('T6/empty'))
    assert collector.num('T6/nan') == 2 and math.isnan(collector.mean('T6/nan')) and math.isnan(collector.std('T6/nan'))


def test_std_never_negative_for_constant_values():
    collector = training_stats.Collector(regex='T7/.*')
    training_stats.report('T7/c', torch.full([1000], 0.1))
    collector.update()
    assert collector.std('T7/c') >= 0.0 and collector.std('T7/c') == pytest.approx(0.0, abs=1e-6)


def test_report0_single_process_counts():
    collector = training_stats.Collector(regex='T8/.*')
    assert training_stats.report0('T8/x', 5.0) == 5.0
    collector.update()
    assert collector.num('T8/x') == 1 and collector.mean('T8/x') == 5.0


# ---------------------------------------------------------------------------------------------------------------------
# Two processes, gloo on CPU


_RANK_VALUES = {0: [1.0, 2.0, 3.0], 1: [10.0, 20.0]}


def _dist_worker(rank, world_size, init_file, out_dir):
    torch.set_num_threads(1)
    torch.distributed.init_process_group('gloo', init_method='file://' + init_file, rank=rank,
                                         world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        training_stats.init_multiprocessing(rank, sync_device=torch.device('cpu'))
        collector = training_stats.Collector(regex='D/.*')
        training_stats.report('D/x', _RANK_VALUES[rank])
        training_stats.report0('D/only0', float(rank + 42))
        collector.update()
        first = collector.as_dict()
        training_stats.report('D/x', [float(rank)])  # Second interval: 0.0 from rank 0, 1.0 from rank 1.
        training_stats.report0('D/only0', [])
        collector.update()
        second = collector.as_dict()
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump({'first': first, 'second': second}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_collector_sums_across_processes(tmp_path):
    if not torch.distributed.is_available():
        pytest.skip('torch.distributed is not available')
    init_file = str(tmp_path / 'dist_init')
    context = torch.multiprocessing.spawn(_dist_worker, args=(2, init_file, str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail('distributed workers did not finish in time')
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()

    both = np.array(_RANK_VALUES[0] + _RANK_VALUES[1])
    for rank in range(2):
        with open(tmp_path / f'rank{rank}.json') as f:
            stats = json.load(f)
        first, second = stats['first'], stats['second']
        assert first['D/x']['num'] == 5
        assert first['D/x']['mean'] == pytest.approx(both.mean())
        assert first['D/x']['std'] == pytest.approx(both.std())
        assert first['D/only0'] == {'num': 1, 'mean': 42.0, 'std': 0.0}  # Rank 1's value is ignored.
        assert second['D/x']['num'] == 2 and second['D/x']['mean'] == pytest.approx(0.5)
        assert second['D/only0']['num'] == 1 and second['D/only0']['mean'] == 42.0  # keep_previous
