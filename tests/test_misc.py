"""torch_utils.misc: constants, shape checks, InfiniteSampler sequence, parameter copying, module summary, devices."""

import itertools
import re

import numpy as np
import pytest
import torch

from torch_utils import misc

# ---------------------------------------------------------------------------------------------------------------------
# constant / nan_to_num / assert_shape / profiled_function / get_device


def test_constant_is_cached_per_key():
    a = misc.constant([1, 3, 3, 1], dtype=torch.float32)
    b = misc.constant([1, 3, 3, 1], dtype=torch.float32)
    c = misc.constant([1, 3, 3, 1], dtype=torch.float64)
    d = misc.constant([1, 3, 3, 2], dtype=torch.float32)
    assert a is b
    assert c is not a and c.dtype == torch.float64
    assert d is not a
    assert a.tolist() == [1.0, 3.0, 3.0, 1.0]
    e = misc.constant(2.5, shape=[2, 3])
    assert e.shape == (2, 3) and e.dtype == torch.get_default_dtype() and bool((e == 2.5).all())
    assert misc.constant(2.5, shape=[3, 2]) is not e
    f = misc.constant(np.zeros([1, 2, 3, 4]), memory_format=torch.channels_last)
    assert f.is_contiguous(memory_format=torch.channels_last)


def test_nan_to_num():
    x = torch.tensor([float('nan'), float('inf'), -float('inf'), 1.5])
    y = misc.nan_to_num(x, nan=0.0, posinf=7.0, neginf=-7.0)
    assert y.tolist() == [0.0, 7.0, -7.0, 1.5]


def test_assert_shape():
    x = torch.zeros([2, 3, 4])
    misc.assert_shape(x, [2, 3, 4])
    misc.assert_shape(x, [None, 3, None])
    misc.assert_shape(x, [torch.tensor(2), 3, 4])
    with pytest.raises(AssertionError, match=re.escape('[2, 3, 4]')) as info:
        misc.assert_shape(x, [2, 5, None])
    assert '[2, 5, ?]' in str(info.value) and 'dimension 1' in str(info.value)
    with pytest.raises(AssertionError, match='dimensions'):
        misc.assert_shape(x, [2, 3])
    with pytest.raises(AssertionError):
        misc.assert_shape(x, [torch.tensor(9), 3, 4])


def test_profiled_function_keeps_name_and_result():
    @misc.profiled_function
    def add_one(x, k=1):
        return x + k

    assert add_one.__name__ == 'add_one'
    assert add_one(2, k=3) == 5
    # a named range while a profiler runs (and only then: outside one it is skipped for speed)
    with torch.profiler.profile() as prof:
        assert torch.equal(add_one(torch.ones(2)), torch.full([2], 2.0))
    assert 'add_one' in [e.name for e in prof.events()]


def test_get_device():
    assert misc.get_device('cpu') == torch.device('cpu')
    expected = 'cuda' if torch.cuda.is_available() else 'cpu'
    assert misc.get_device().type == expected
    assert misc.get_device().index is None  # Never pinned to a particular GPU.
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match='CUDA is not available'):
            misc.get_device('cuda')
    for bad in ('tpu', 'cuda:99' if torch.cuda.is_available() else 'cuda:0'):
        with pytest.raises(misc.DeviceError) as err:
            misc.get_device(bad)
        assert isinstance(err.value, ValueError) and isinstance(err.value, RuntimeError)  # both callers' contracts


# ---------------------------------------------------------------------------------------------------------------------
# InfiniteSampler against an independent statement of upstream's algorithm


def _reference_indices(n, count, rank=0, num_replicas=1, shuffle=True, seed=0, window_size=0.5):
    """Upstream's sequence, written out with plain Python lists and an explicit RandomState."""
    order = list(range(n))
    rng = None
    window = 0
    if shuffle:
        rng = np.random.RandomState(seed)
        rng.shuffle(order)
        window = round(n * window_size)  # Python's round() is round-half-to-even, like np.rint.
    out = []
    for step in itertools.count():
        if len(out) == count:
            return out
        pos = step % n
        if step % num_replicas == rank:
            out.append(order[pos])
        if window >= 2:
            back = rng.randint(window)
            other = (pos - back) % n
            order[pos], order[other] = order[other], order[pos]


def _take(sampler, count):
    return [int(i) for i in itertools.islice(iter(sampler), count)]


@pytest.mark.parametrize('n, seed, window_size', [(10, 0, 0.5), (10, 3, 0.25), (7, 123, 1.0), (37, 5, 0.5)])
def test_infinite_sampler_shuffled_matches_reference(n, seed, window_size):
    dataset = list(range(n))
    got = _take(misc.InfiniteSampler(dataset, seed=seed, window_size=window_size), 50)
    assert got == _reference_indices(n, 50, seed=seed, window_size=window_size)
    # Sanity of the reference itself: with seed 0 and n = 10 the first element is the first of the permutation.
    assert got[0] == np.random.RandomState(seed).permutation(n)[0]


def test_infinite_sampler_small_window_repeats_the_permutation():
    n = 10
    perm = np.random.RandomState(4).permutation(n).tolist()
    got = _take(misc.InfiniteSampler(list(range(n)), seed=4, window_size=0.1), 30)  # window = 1: no swaps.
    assert got == perm * 3


def test_infinite_sampler_without_shuffle_cycles_in_order():
    got = _take(misc.InfiniteSampler(list(range(6)), shuffle=False), 20)
    assert got == [i % 6 for i in range(20)]
    got = _take(misc.InfiniteSampler(list(range(6)), rank=1, num_replicas=2, shuffle=False), 6)
    assert got == [1, 3, 5, 1, 3, 5]


def test_infinite_sampler_replicas_interleave_single_stream():
    n, seed = 13, 7
    single = _take(misc.InfiniteSampler(list(range(n)), seed=seed), 60)
    rank0 = _take(misc.InfiniteSampler(list(range(n)), rank=0, num_replicas=2, seed=seed), 30)
    rank1 = _take(misc.InfiniteSampler(list(range(n)), rank=1, num_replicas=2, seed=seed), 30)
    assert rank0 == _reference_indices(n, 30, rank=0, num_replicas=2, seed=seed)
    interleaved = [x for pair in zip(rank0, rank1) for x in pair]
    assert interleaved == single


def test_infinite_sampler_works_with_dataloader():
    dataset = list(range(5))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=misc.InfiniteSampler(dataset, seed=1))
    batch = next(iter(loader))
    assert batch.tolist() == _reference_indices(5, 4, seed=1)


# ---------------------------------------------------------------------------------------------------------------------
# Parameters and buffers


def _net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def test_named_params_and_buffers_order():
    names = [name for name, _ in misc.named_params_and_buffers(_net(0))]
    assert names == ['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var',
                     '1.num_batches_tracked']
    assert len(misc.params_and_buffers(_net(0))) == 7


def test_copy_params_and_buffers_copies_by_name_and_keeps_requires_grad():
    src = _net(0)
    with torch.no_grad():
        src[1].running_mean.fill_(0.25)
    dst = _net(1)
    dst[0].weight.requires_grad_(False)
    assert not torch.equal(src[0].weight, dst[0].weight)
    misc.copy_params_and_buffers(src, dst)
    for (name, a), (_, b) in zip(misc.named_params_and_buffers(src), misc.named_params_and_buffers(dst)):
        assert torch.equal(a, b), name
    assert dst[0].weight.requires_grad is False and dst[0].bias.requires_grad is True
    assert dst[0].weight.data_ptr() != src[0].weight.data_ptr()  # A copy, not shared storage.


def test_copy_params_and_buffers_missing_names():
    src = torch.nn.Sequential(torch.nn.Linear(3, 4))
    dst = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    extra_before = dst[1].weight.detach().clone()
    misc.copy_params_and_buffers(src, dst)  # Missing source names are allowed by default ...
    assert torch.equal(dst[0].weight, src[0].weight)
    assert torch.equal(dst[1].weight, extra_before)  # ... and keep their values.
    with pytest.raises(KeyError, match=re.escape('1.weight')):
        misc.copy_params_and_buffers(src, dst, require_all=True)


def test_copy_params_and_buffers_rejects_shape_mismatch():
    src = torch.nn.Sequential(torch.nn.Linear(1, 1))
    dst = torch.nn.Sequential(torch.nn.Linear(1, 3))
    with pytest.raises(ValueError, match='0.weight'):
        misc.copy_params_and_buffers(src, dst)


def test_ddp_helpers_without_distributed():
    net = _net(0)
    with misc.ddp_sync(net, sync=False):  # Not DDP: a plain pass-through.
        net(torch.zeros([2, 3]))
    misc.check_ddp_consistency(net)  # No process group: nothing to check, must not raise.


# ---------------------------------------------------------------------------------------------------------------------
# print_module_summary


def test_print_module_summary_returns_outputs_and_prints_real_totals(capsys):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8),
        torch.nn.BatchNorm1d(8),
        torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Linear(8, 2), torch.nn.Tanh()),
    ).eval()
    x = torch.randn([5, 4])
    out = misc.print_module_summary(net, [x])
    assert torch.equal(out, net(x))
    text = capsys.readouterr().out
    # Hand count: Linear(4, 8) 32 + 8, BatchNorm1d(8) 8 + 8, Linear(8, 2) 16 + 2 -> 74 parameters;
    # BatchNorm buffers: running_mean 8 + running_var 8 + num_batches_tracked 1 -> 17.
    total = [line.split() for line in text.splitlines() if line.startswith('Total')]
    assert total == [['Total', '74', '17', '-', '-']]
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows['0'][1:] == ['40', '-', '[5,', '8]', 'float32']
    assert rows['1'][1:3] == ['16', '17']
    assert rows['3.0'][1] == '18'  # Nested module, within max_nesting.
    assert '[5, 2]' in text


def test_print_module_summary_max_nesting_folds_deep_modules(capsys):
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(2, 3)), torch.nn.Linear(3, 1))
    misc.print_module_summary(net, [torch.zeros([1, 2])], max_nesting=1)
    text = capsys.readouterr().out
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    assert '0.0' not in names and '0' in names  # The inner Linear is folded into its parent row.
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    assert rows['0'][1] == '9' and rows['1'][1] == '4' and rows['Total'][1] == '13'
