"""The CPU fast paths against PyTorch's own operators and the reference ops: the polyphase transposed convolution and
in-place bias_act of inference (values; the polyphase convolution also to second order), the cheap demodulation and
skipped no-op copies that also serve training (values, first- and second-order gradients in float64), and the
training losses' gradients (R1, path length) in float32."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from conftest import assert_close_to_scale
from torch_utils import custom_ops
from torch_utils.ops import bias_act, bias_act_cpu, conv2d_gradfix, conv2d_resample, upfirdn2d
from training import networks


def _rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(True)


def _both_paths(fn):
    """``fn()`` on the reference ops and on the fast path."""
    with custom_ops.reference_ops(True):
        ref = fn()
    with custom_ops.reference_ops(False):
        fast = fn()
    return ref, fast


# ------------------------------------------------------------------------------------- polyphase transpose

POLY_CASES = [c for c in itertools.product([2, 3], [1, 2, 3, 4], [1, 3], [1, 2], [0, 1])
              if c[4] < min(c[1], c[2]) or c[4] == 0]


@pytest.mark.parametrize('stride,kh,kw,groups,padding', POLY_CASES)
def test_polyphase_transpose_equals_conv_transpose2d(stride, kh, kw, groups, padding):
    x = _rand(2, 4, 5, 4, seed=1).detach()
    w = _rand(4, 3, kh, kw, seed=2).detach()  # [Cin, Cout / groups, kh, kw]
    expect = F.conv_transpose2d(x, w, stride=stride, padding=padding, groups=groups)
    got = conv2d_resample.conv_transpose2d_polyphase(x, w, stride, padding, groups)
    assert got.shape == expect.shape
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-12)


def test_polyphase_transpose_handles_a_transposed_weight_view():
    # The networks pass w.transpose(0, 1) of an [O, I, k, k] weight; the result must not depend on the strides.
    x = _rand(2, 6, 4, 4, seed=3).detach()
    w = _rand(5, 6, 3, 3, seed=4).detach()
    expect = F.conv_transpose2d(x, w.transpose(0, 1).contiguous(), stride=2)
    torch.testing.assert_close(conv2d_resample.conv_transpose2d_polyphase(x, w.transpose(0, 1), 2), expect)


@pytest.mark.parametrize('gradfix', [False, True])
def test_polyphase_transpose_second_order_gradients(gradfix, monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', gradfix)
    x = _rand(2, 4, 4, 3, seed=5)
    w = _rand(4, 3, 3, 3, seed=6)
    fn = lambda x, w: conv2d_resample.conv_transpose2d_polyphase(x, w, 2, 1, 2)  # noqa: E731
    assert gradcheck(fn, (x, w))
    assert gradgradcheck(fn, (x, w))


# ----------------------------------------------------------------------------------------------- bias_act

BIAS_ACT_CASES = list(itertools.product(list(bias_act.activation_funcs), [None, 0.6], [None, 0.7, -1.5], [1, 2]))


@pytest.fixture(params=['c-kernel', 'torch'])
def bias_act_kernel(request, monkeypatch):
    """Each CPU bias_act test runs with the C kernel (tests/test_bias_act_kernel.py tests it on its own) and with the
    in-place torch steps that replace it where no compiler is available."""
    if request.param == 'torch':
        monkeypatch.setattr(bias_act_cpu.KERNEL, '_tried', True)
        monkeypatch.setattr(bias_act_cpu.KERNEL, '_lib', None)
    elif bias_act_cpu.KERNEL.get() is None:
        pytest.skip('no C compiler: the CPU bias_act kernel is not built')
    return request.param


@pytest.mark.parametrize('act,clamp,gain,dim', BIAS_ACT_CASES)
def test_bias_act_in_place_inference_matches_reference(act, clamp, gain, dim, monkeypatch, bias_act_kernel):
    calls = []
    in_place = bias_act._bias_act_cpu
    monkeypatch.setattr(bias_act, '_bias_act_cpu', lambda *a, **k: calls.append(a) or in_place(*a, **k))
    x = _rand(3, 4, 5, 2, seed=7).detach()
    b = _rand(x.shape[dim], seed=8).detach()
    x_before = x.clone()
    with torch.no_grad():
        got = bias_act.bias_act(x, b, dim=dim, act=act, clamp=clamp, gain=gain)
    assert len(calls) == 1  # the in-place path is the one under test
    torch.testing.assert_close(got, bias_act.bias_act(x, b, dim=dim, act=act, clamp=clamp, gain=gain, impl='ref'))
    assert torch.equal(x, x_before)  # in place on a new tensor, never on the input
    with torch.no_grad():
        torch.testing.assert_close(bias_act.bias_act(x, None, dim=dim, act=act, clamp=clamp, gain=gain),
                                   bias_act.bias_act(x, None, dim=dim, act=act, clamp=clamp, gain=gain, impl='ref'))
        assert torch.equal(x, x_before)


@pytest.mark.parametrize('act,clamp,gain', [('lrelu', 0.6, None), ('linear', 0.5, 2.0), ('tanh', None, None)])
def test_bias_act_overwriting_variant(act, clamp, gain, bias_act_kernel):
    x = _rand(3, 4, 5, seed=20).detach()
    b = _rand(4, seed=21).detach()
    expect = bias_act.bias_act(x, b, act=act, clamp=clamp, gain=gain, impl='ref')
    with torch.no_grad():
        own = x.clone()
        got = bias_act.bias_act_(own, b, act=act, clamp=clamp, gain=gain)
    torch.testing.assert_close(got, expect)
    if act != 'tanh':  # piecewise-linear activations run in place; the others may return a new tensor
        assert got.data_ptr() == own.data_ptr()
    with custom_ops.reference_ops():  # the reference path never overwrites
        own = x.clone()
        torch.testing.assert_close(bias_act.bias_act_(own, b, act=act, clamp=clamp, gain=gain), expect)
        assert torch.equal(own, x)
    xg = x.clone().requires_grad_(True)  # with gradients: the ordinary op, the input untouched
    torch.testing.assert_close(bias_act.bias_act_(xg, b, act=act, clamp=clamp, gain=gain), expect)
    assert torch.equal(xg.detach(), x)
    with pytest.raises(ValueError, match='does not match'):
        bias_act.bias_act_(x.clone(), torch.zeros(3))


@pytest.mark.parametrize('act', ['linear', 'relu', 'lrelu'])
@pytest.mark.parametrize('bias,gain,clamp', [(True, None, None), (True, 1.0, 0.7), (False, 1.0, 0.7),
                                             (False, 2.0, None), (True, 2.0, 0.7), (False, 1.0, None)])
def test_bias_act_with_gradients_matches_reference_to_second_order(act, bias, gain, clamp, bias_act_kernel):
    # The CPU training path (piecewise-linear activations): in-place steps where nothing saved them, hardtanh for the
    # clamp. Values, first- and second-order gradients against the reference, away from the clamp's kinks.
    x = _rand(3, 4, 5, seed=19)
    b = (_rand(4, seed=20) * 0.3).detach().requires_grad_(True) if bias else None
    inputs = [x] + ([b] if bias else [])
    with torch.no_grad():  # the seeds keep every element off the kinks (0 and +-clamp), where gradients may differ
        y = bias_act._bias_act_ref(x, b, act=act, gain=gain)
        assert (bias_act._bias_act_ref(x, b).abs() > 1e-3).all() and (clamp is None or
                                                                      ((y.abs() - clamp).abs() > 1e-3).all())

    def run():
        y = bias_act.bias_act(x, b, act=act, gain=gain, clamp=clamp)
        gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape).requires_grad_(True)
        grads = torch.autograd.grad((y * y * gy).sum(), inputs, create_graph=True)
        return [y] + list(grads) + list(torch.autograd.grad(sum(g.square().sum() for g in grads), inputs + [gy]))

    ref, fast = _both_paths(run)
    for a, r in zip(fast, ref):
        torch.testing.assert_close(a, r)
    x0 = x.detach().clone()  # the input is never overwritten
    bias_act.bias_act(x, b, act=act, gain=gain, clamp=clamp).sum().backward()
    assert torch.equal(x.detach(), x0)


@pytest.mark.parametrize('act', ['lrelu', 'tanh'])
def test_bias_act_with_gradients_leaves_the_input_alone(act, monkeypatch, bias_act_kernel):
    # With gradients the CPU path runs only for piecewise-linear activations (tanh: the reference), never in place on
    # the input.
    if act == 'tanh':
        monkeypatch.setattr(bias_act, '_bias_act_cpu', lambda *a, **k: pytest.fail('CPU path for tanh with gradients'))
    x = _rand(2, 3, 4, seed=9)
    x0 = x.detach().clone()
    y = bias_act.bias_act(x, torch.zeros(3), act=act, clamp=1.0)
    assert torch.equal(x.detach(), x0)
    if act == 'tanh':
        return
    g, = torch.autograd.grad(y.sum(), [x])
    torch.testing.assert_close(g, torch.where(x > 0, 1.0, 0.2).double() * np.sqrt(2) * (y.abs() < 1.0).double())


# ------------------------------------------------------------------------------- upfirdn2d and conv2d_resample

@pytest.mark.parametrize('up,down,padding', [(1, 1, 0), (1, 1, 2), (1, 1, -1), (2, 1, 1), (1, 2, 1),
                                             (1, 1, [0, 1, 2, 0])])
def test_upfirdn2d_fast_matches_reference(up, down, padding):
    x = _rand(2, 3, 7, 6, seed=11)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    ref, fast = _both_paths(lambda: upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding))
    torch.testing.assert_close(fast, ref)


UPFIRDN_CASES = [  # up, down, padding, taps, flip, gain: the layers' cases and odd ones (anisotropic, cropping)
    (2, 1, [2, 1, 2, 1], [1, 3, 3, 1], False, 4), (1, 2, [1, 1, 1, 1], [1, 3, 3, 1], False, 1),
    (1, 1, [2, 1, 2, 1], [1, 3, 3, 1], True, 1), ([2, 1], [1, 3], [1, -1, 3, 0], [[1, 2, 0.5], [0, 3, 1]], True, 2),
    ([1, 2], [2, 1], [0, 2, 2, 0], [1, 2, 3, 4, 4, 3, 2, 1], False, 3), (2, 2, [-1, 3, 0, -2], [1, 2, 1], False, 1)]


def _is_separable(taps):
    return np.linalg.matrix_rank(np.atleast_2d(np.asarray(taps, dtype=np.float64))) == 1


@pytest.mark.parametrize('path', ['matmul', 'function'])
@pytest.mark.parametrize('up,down,padding,taps,flip,gain', UPFIRDN_CASES)
def test_upfirdn2d_cpu_fast_paths_match_reference_to_second_order(up, down, padding, taps, flip, gain, path,
                                                                   monkeypatch):
    # Two CPU fast paths: small images with a separable filter as banded matrix products (plain autograd), the rest
    # in one autograd Function whose backward is upfirdn2d again. The reference is autograd through pad, reshape and
    # a depthwise convolution.
    x = _rand(2, 3, 7, 9, seed=18)
    f = upfirdn2d.setup_filter(taps)
    separable = np.asarray(taps).ndim == 1 or _is_separable(taps)
    if path == 'function':
        monkeypatch.setattr(upfirdn2d, 'matmul_max_size', lambda x: 0)
    elif not separable:
        pytest.skip('a filter of rank two always takes the Function')
    else:
        monkeypatch.setattr(upfirdn2d, '_upfirdn2d_function', lambda **_: pytest.fail('the Function was used'))

    def run():
        y = upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip, gain=gain)
        gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape).requires_grad_(True)
        gx, = torch.autograd.grad((y * gy).sum(), [x], create_graph=True)
        return [y, gx] + list(torch.autograd.grad(gx.square().sum(), [gy]))  # the op is linear: through gy

    ref, fast = _both_paths(run)
    for a, b in zip(fast, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    with custom_ops.reference_ops(False):
        fn = lambda t: upfirdn2d.upfirdn2d(t, f, up=up, down=down, padding=padding, flip_filter=flip,  # noqa: E731
                                           gain=gain)
        assert gradcheck(fn, [x]) and gradgradcheck(fn, [x])
        if path == 'function':  # one node: the Function, not pad/conv/slice
            assert type(fn(x).grad_fn).__name__ == 'Upfirdn2dBackward'


def test_upfirdn2d_matmul_path_only_for_separable_filters_on_small_images(monkeypatch):
    calls = []
    real = upfirdn2d._upfirdn2d_function
    monkeypatch.setattr(upfirdn2d, '_upfirdn2d_function', lambda **kw: calls.append(kw) or real(**kw))
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    small = torch.randn(1, 2, 8, 8)
    large = torch.randn(1, 1, upfirdn2d.matmul_max_size(small) + 1, 4)
    upfirdn2d.upsample2d(small, f)
    assert calls == []
    upfirdn2d.upsample2d(large, f)
    upfirdn2d.upsample2d(small, upfirdn2d.setup_filter([[1, 2], [3, 1]]))  # rank two
    assert len(calls) == 2
    assert upfirdn2d._separable_taps(f) is not None and upfirdn2d._separable_taps(f.flip(0), gain=4) is not None


@pytest.mark.parametrize('up,down,k,flip_weight', [(2, 1, 3, False), (2, 1, 3, True), (2, 1, 1, False),
                                                   (1, 2, 3, True), (2, 2, 3, False), (1, 1, 3, True)])
def test_conv2d_resample_fast_matches_reference(up, down, k, flip_weight):
    x = _rand(2, 4, 6, 6, seed=12)
    w = _rand(5, 4, k, k, seed=13)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])

    def run():
        with torch.no_grad():
            y0 = conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, flip_weight=flip_weight)
        y = conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, flip_weight=flip_weight)
        gx, gw = torch.autograd.grad((y.square()).sum(), [x, w], create_graph=True)
        return [y0, y] + list(torch.autograd.grad(gx.square().sum() + gw.square().sum(), [x, w]))

    for fast, ref in zip(*_both_paths(run)[::-1]):
        torch.testing.assert_close(fast, ref)


def test_small_1x1_convolutions_run_as_a_matrix_product_to_second_order(monkeypatch):
    x = _rand(3, 5, 4, 6, seed=30)
    w = _rand(7, 5, 1, 1, seed=31)
    assert gradcheck(conv2d_resample.pointwise_matmul, (x, w))
    assert gradgradcheck(conv2d_resample.pointwise_matmul, (x, w))
    torch.testing.assert_close(conv2d_resample.pointwise_matmul(x, w), F.conv2d(x, w), rtol=1e-12, atol=1e-12)
    # chosen on the fast path for small maps only, never for a kernel above 1x1, a stride, groups or the reference
    calls = []
    real = conv2d_resample.pointwise_matmul
    monkeypatch.setattr(conv2d_resample, 'pointwise_matmul', lambda *a: calls.append(a[0].shape) or real(*a))
    conv2d_resample.conv2d_resample(x, w)
    conv2d_resample.conv2d_resample(x, _rand(7, 5, 3, 3, seed=32), padding=1)
    conv2d_resample.conv2d_resample(x, _rand(5, 1, 1, 1, seed=33), groups=5)
    with custom_ops.reference_ops():
        conv2d_resample.conv2d_resample(x, w)
    big = torch.randn(1, 64, 64, 64)
    conv2d_resample.conv2d_resample(big, torch.randn(1024, 64, 1, 1))  # 2^28 multiply-adds: oneDNN is faster
    assert calls == [x.shape]


@pytest.mark.parametrize('weight_grad', [True, False])
def test_large_strided_convolutions_take_the_phase_function_to_second_order(weight_grad, monkeypatch):
    """A strided convolution with a gradient and an output of at least STRIDED_FUNCTION_MIN_PIXELS runs through
    conv2d_gradfix's Function on the fast path, its input gradient by output phases: the same values, first and
    second order, as F.conv2d (float64); the weight gradient is left out inside no_weight_gradients()."""
    monkeypatch.setattr(conv2d_gradfix, 'STRIDED_FUNCTION_MIN_PIXELS', 9)  # small shapes for gradcheck
    # 7 rows come back exactly from 3 outputs, 8 columns need an output padding of one
    x = _rand(2, 3, 7, 8, seed=34).requires_grad_()
    w = _rand(4, 3, 3, 3, seed=35).requires_grad_(weight_grad)
    phases = []
    real = conv2d_resample.conv_transpose2d_polyphase
    monkeypatch.setattr(conv2d_resample, 'conv_transpose2d_polyphase',
                        lambda *a, **k: phases.append(1) or real(*a, **k))
    y = conv2d_gradfix.conv2d(x, w, stride=2)
    assert type(y.grad_fn).__name__ == 'Conv2dBackward'  # the Function, not ConvolutionBackward0
    g = _rand(*y.shape, seed=36)
    inputs = [x, w] if weight_grad else [x]
    got = torch.autograd.grad(y, inputs, g)
    want = torch.autograd.grad(F.conv2d(x, w, stride=2), inputs, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert phases, 'the input gradient did not run by phases'
    fn = lambda a, b: conv2d_gradfix.conv2d(a, b, stride=2)  # noqa: E731
    assert gradcheck(fn, (x, w))
    assert gradgradcheck(fn, (x, w))
    with conv2d_gradfix.no_weight_gradients():
        dx, = torch.autograd.grad(conv2d_gradfix.conv2d(x, w, stride=2), [x], g)
    torch.testing.assert_close(dx, want[0], rtol=1e-12, atol=1e-12)
    # small outputs, no gradient, and the reference ops go straight to F.conv2d
    monkeypatch.setattr(conv2d_gradfix, 'STRIDED_FUNCTION_MIN_PIXELS', 32 * 32)
    assert type(conv2d_gradfix.conv2d(x, w, stride=2).grad_fn).__name__ == 'ConvolutionBackward0'
    with torch.no_grad():
        assert conv2d_gradfix.conv2d(x, w, stride=2).grad_fn is None
    with custom_ops.reference_ops():
        assert type(conv2d_gradfix.conv2d(x, w, stride=2).grad_fn).__name__ == 'ConvolutionBackward0'


@pytest.mark.parametrize('padding,output_padding', [(0, 0), (1, 0), (0, 1), (1, 1), (2, 1)])
def test_transposed_function_by_phases_matches_conv_transpose2d(padding, output_padding):
    x = _rand(2, 4, 5, 6, seed=37).requires_grad_()
    w = _rand(4, 3, 3, 3, seed=38).requires_grad_()
    fn = conv2d_gradfix._conv_function(True, w.shape, 2, padding, output_padding, 1, 1)
    got = fn.apply(x, w, None)
    want = F.conv_transpose2d(x, w, stride=2, padding=padding, output_padding=output_padding)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert gradgradcheck(lambda a, b: fn.apply(a, b, None), (x, w))


# ------------------------------------------------------------------------------------------- modulated conv

@pytest.mark.parametrize('up,demodulate,fused,noise', [(1, True, True, True), (1, True, False, False),
                                                       (2, True, True, True), (2, True, False, True),
                                                       (1, False, True, False), (1, False, False, True)])
def test_modulated_conv2d_fast_matches_reference_to_second_order(up, demodulate, fused, noise):
    x = _rand(3, 4, 5, 5, seed=14)
    w = _rand(6, 4, 3 if demodulate else 1, 3 if demodulate else 1, seed=15)
    s = _rand(3, 4, seed=16)
    n = _rand(1, 1, 5 * up, 5 * up, seed=17).detach() if noise else None
    f = upfirdn2d.setup_filter([1, 3, 3, 1])

    def run():
        y = networks.modulated_conv2d(x, w, s, noise=n, up=up, padding=w.shape[-1] // 2, resample_filter=f,
                                      demodulate=demodulate, flip_weight=(up == 1), fused_modconv=fused)
        grads = torch.autograd.grad((y.square()).sum(), [x, w, s], create_graph=True)
        return [y] + list(torch.autograd.grad(sum(g.square().sum() for g in grads), [x, w, s]))

    ref, fast = _both_paths(run)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------- whole networks

def _tiny_networks(res=16):
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=res, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=256))
    D = networks.Discriminator(c_dim=0, img_resolution=res, img_channels=3, channel_base=256, channel_max=16,
                               num_fp16_res=0, conv_clamp=256)
    return G.train(), D.train()


def test_generator_forward_and_path_length_gradients_match_reference(monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    G, _ = _tiny_networks()
    z = torch.randn([4, 16], generator=torch.Generator().manual_seed(1))
    params = [p for p in G.parameters()]

    def run():
        ws = G.mapping(z, None, skip_w_avg_update=True).detach().requires_grad_(True)
        img, nir = G.synthesis(ws, noise_mode='const')
        target = (img * torch.linspace(-1, 1, img.numel()).reshape(img.shape)).sum() + nir.mean()
        g, = torch.autograd.grad(target, [ws], create_graph=True)
        pl = g.square().sum(2).mean(1).sqrt().sum()
        return [img, nir, g] + list(torch.autograd.grad(pl + img.mean(), params, allow_unused=True))

    ref, fast = _both_paths(run)
    for a, b in zip(fast, ref):
        if b is not None:
            assert_close_to_scale(a, b.detach().numpy(), 1e-4)


def test_discriminator_r1_gradients_match_reference(monkeypatch):
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    _, D = _tiny_networks()
    img = torch.randn([4, 3, 16, 16], generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    params = list(D.parameters())

    def run():
        logits = D(img, None)
        r1, = torch.autograd.grad(logits.sum(), [img], create_graph=True)
        return [logits, r1] + list(torch.autograd.grad(r1.square().sum() + logits.mean(), params))

    ref, fast = _both_paths(run)
    for a, b in zip(fast, ref):
        assert_close_to_scale(a, b.detach().numpy(), 1e-4)


def test_inference_generator_fast_path_matches_reference_at_batch_above_one():
    G, _ = _tiny_networks(32)
    G.eval()
    z = torch.randn([3, 16], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        (ref_img, ref_nir), (img, nir) = _both_paths(lambda: G(z, None, noise_mode='const'))
    assert_close_to_scale(img, ref_img.numpy(), 1e-5)
    assert_close_to_scale(nir, ref_nir.numpy(), 1e-5)
    assert np.abs(ref_img.numpy()).max() > 0


def test_upsampling_convolution_uses_no_transposed_convolution_in_inference(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError('transposed convolution called')

    monkeypatch.setattr(conv2d_gradfix, 'conv_transpose2d', refuse)
    x, w = _rand(1, 2, 4, 4, seed=18), _rand(3, 2, 3, 3, seed=19)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    with torch.no_grad():
        conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)
        with custom_ops.reference_ops(), pytest.raises(AssertionError, match='transposed convolution called'):
            conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)
    with pytest.raises(AssertionError, match='transposed convolution called'):  # gradients: the transposed one
        conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1, flip_weight=False)


def test_cpu_fast_path_selection():
    x = torch.zeros(2, requires_grad=True)
    assert custom_ops.cpu_fast_path(x, None)
    assert custom_ops.cpu_fast_path(x, inference_only=False)
    assert not custom_ops.cpu_fast_path(x, inference_only=True)  # x needs a gradient
    with torch.no_grad():
        assert custom_ops.cpu_fast_path(x, inference_only=True)
    assert custom_ops.cpu_fast_path(x.detach(), None, inference_only=True)
    assert not custom_ops.cpu_fast_path(torch.zeros(2, device='meta'))
    with custom_ops.reference_ops():
        assert not custom_ops.cpu_fast_path(x.detach())
