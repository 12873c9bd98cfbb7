"""The C kernel of CPU upfirdn2d (torch_utils/ops/csrc/upfirdn_cpu.c) against the reference op.

Every combination of upsampling, downsampling, padding (cropping included), tap count and filter flip, per axis, in
float64 to rounding and in float32 to float32 rounding; the threaded loops against one thread (bitwise: each output
is the same sum in the same order); the routing of ``_cpu_kernel`` (separable filters to C, others to the depthwise
convolution, the same result either way) and the autograd Function on top to second order.
"""

import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from torch_utils import custom_ops
from torch_utils.ops import upfirdn2d, upfirdn2d_cpu

pytestmark = pytest.mark.skipif(upfirdn2d_cpu.KERNEL.get() is None, reason='no C compiler: the kernel is not built')

TAPS = {1: [1.0], 2: [1, 1], 4: [1, 3, 3, 1], 6: [1, 5, 10, 10, 5, 1]}
CASES = list(itertools.product([1, 2, 3], [1, 2], [(0, 0), (2, 1), (-1, 2), (3, -2)], [1, 2, 4, 6], [False, True]))


def _rand(*shape, dtype=torch.float64, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize('up,down,pad,ntaps,flip', CASES)
def test_kernel_matches_the_reference(up, down, pad, ntaps, flip):
    x = _rand(2, 3, 7, 9, seed=ntaps)
    f = upfirdn2d.setup_filter(TAPS[ntaps])
    # different resampling along the two axes, so a swapped axis would show
    args = dict(up=[up, 1 + (up % 2)], down=[down, 3 - down], padding=[pad[0], pad[1], pad[1] + 1, pad[0]],
                flip_filter=flip, gain=1.7)
    ref = upfirdn2d._upfirdn2d_ref(x, f, **args)
    upx, upy = args['up']
    downx, downy = args['down']
    got = upfirdn2d._cpu_kernel(x, f, upx, upy, downx, downy, *args['padding'], flip, 1.7)
    assert got.shape == ref.shape
    # The kernel factors the float32 2-D filter into two 1-D tap lists: exact up to the filter's own float32
    # rounding (about 1e-7 relative per tap).
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
    got32 = upfirdn2d._cpu_kernel(x.float(), f, upx, upy, downx, downy, *args['padding'], flip, 1.7)
    torch.testing.assert_close(got32, ref.float(), rtol=1e-5, atol=1e-5)


def test_one_dimensional_filters_filter_one_axis(monkeypatch):
    x = _rand(2, 2, 6, 5, seed=4)
    f = upfirdn2d.setup_filter([1, 2, 5], separable=True)  # 1-D: the Function runs a row pass, then a column pass
    for up, down in ((2, 1), (1, 2)):
        ref = upfirdn2d._upfirdn2d_ref(x, f, up=up, down=down, padding=[1, 2, 2, 1], gain=3.0)
        fast = upfirdn2d._upfirdn2d_function(up=up, down=down, padding=[1, 2, 2, 1], gain=3.0).apply(x, f)
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


def test_threads_do_not_change_the_result():
    x = _rand(2, 8, 97, 96, dtype=torch.float32, seed=5)  # above the kernel's threading threshold
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = upfirdn2d._cpu_kernel(x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0)
        torch.set_num_threads(max(threads, 2))
        many = upfirdn2d._cpu_kernel(x, f, 2, 2, 1, 1, 2, 1, 2, 1, False, 4.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_routing_and_the_fallback(monkeypatch):
    x = _rand(2, 3, 8, 8, seed=6)
    calls = []
    real = upfirdn2d_cpu.upfirdn2d
    monkeypatch.setattr(upfirdn2d_cpu, 'upfirdn2d', lambda *a: calls.append(len(a[1])) or real(*a))
    separable = upfirdn2d.setup_filter([1, 3, 3, 1])
    rank_two = separable + 0.01 * torch.eye(4)
    args = (2, 2, 1, 1, 2, 1, 2, 1, False, 1.0)
    with_kernel = upfirdn2d._cpu_kernel(x, separable, *args)
    upfirdn2d._cpu_kernel(x, rank_two, *args)  # not separable: the depthwise convolution
    assert calls == [4]
    monkeypatch.setattr(upfirdn2d_cpu.KERNEL, '_tried', True)
    monkeypatch.setattr(upfirdn2d_cpu.KERNEL, '_lib', None)  # no compiler
    torch.testing.assert_close(upfirdn2d._cpu_kernel(x, separable, *args), with_kernel, rtol=1e-12, atol=1e-12)
    assert calls == [4]


@pytest.mark.parametrize('up,down', [(2, 1), (1, 2), (1, 1)])
def test_function_on_the_kernel_has_gradients_of_any_order(up, down):
    x = _rand(1, 2, 6, 7, seed=7).requires_grad_(True)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])

    def op(x):
        return upfirdn2d._upfirdn2d_function(up=up, down=down, padding=[2, 1, 1, 2], gain=up * up).apply(x, f)

    assert gradcheck(op, (x,))
    assert gradgradcheck(op, (x,))
    with custom_ops.reference_ops():
        ref = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=[2, 1, 1, 2], gain=up * up)
    torch.testing.assert_close(op(x), ref, rtol=1e-12, atol=1e-12)


def test_inputs_shorter_than_the_filter():
    x = _rand(1, 2, 2, 3, seed=8)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    assert upfirdn2d._cpu_kernel(x, f, 1, 1, 1, 1, 0, 0, 0, 0, False, 1.0).shape == (1, 2, 0, 0)  # nothing fits
    for pad in (1, 2, 3):
        ref = upfirdn2d._upfirdn2d_ref(x, f, padding=pad)
        got = upfirdn2d._cpu_kernel(x, f, 1, 1, 1, 1, pad, pad, pad, pad, False, 1.0)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_cropped_views_are_read_in_place():
    # A view of a larger tensor (other row and plane strides) gives the contiguous copy's result, for both passes
    # and for a column filter, which reads the view directly in its only (height) pass.
    big = _rand(3, 5, 12, 14, seed=9)
    view = big[1:, 1:4, 2:10, 3:12]
    assert not view.is_contiguous()
    for f in (upfirdn2d.setup_filter([1, 3, 3, 1]), torch.tensor([[0.25], [0.5], [0.25]])):
        for args in ((2, 2, 1, 1, 2, 1, 2, 1), (1, 1, 2, 2, 1, 1, 1, 1), (1, 1, 1, 1, 0, 0, 1, 2)):
            got = upfirdn2d._cpu_kernel(view, f, *args, False, 1.0)
            want = upfirdn2d._cpu_kernel(view.contiguous(), f, *args, False, 1.0)
            assert torch.equal(got, want)


def test_filters_longer_than_the_kernel_takes_use_the_convolution():
    x = _rand(1, 2, 5, 90, seed=10)
    f = upfirdn2d.setup_filter(list(range(1, 71)), separable=True)  # 70 taps: the Function filters rows, then columns
    got = upfirdn2d._upfirdn2d_function(padding=[35, 34, 35, 34]).apply(x, f)
    torch.testing.assert_close(got, upfirdn2d._upfirdn2d_ref(x, f, padding=[35, 34, 35, 34]), rtol=1e-10, atol=1e-10)
