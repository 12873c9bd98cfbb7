"""First and second order gradients of the ops' reference paths (float64 gradcheck / gradgradcheck),
plus an independent loop-based reference for upfirdn2d and checks of conv2d_gradfix, fma and grid_sample."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from conftest import load_parity
from torch_utils import custom_ops
from torch_utils.ops import bias_act, conv2d_gradfix, conv2d_resample, fma, grid_sample_gradfix, upfirdn2d

ACTS = list(bias_act.activation_funcs)


def _rand(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


@pytest.fixture
def gradfix_enabled(request):
    # The CPU fast path bypasses conv2d_gradfix's Function; the reference ops keep it, so 'enabled' tests it there.
    old = conv2d_gradfix.enabled
    conv2d_gradfix.enabled = request.param
    with custom_ops.reference_ops(request.param):
        yield request.param
    conv2d_gradfix.enabled = old


@pytest.fixture
def gradfix_function(monkeypatch):
    """conv2d_gradfix's own autograd Function (on CUDA, and on the CPU's reference path)."""
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    with custom_ops.reference_ops():
        yield


# ---------------------------------------------------------------------------------------------- bias_act

@pytest.mark.parametrize('act', ACTS)
@pytest.mark.parametrize('kwargs', [{}, {'clamp': 0.7, 'gain': 1.3}, {'alpha': 0.05}],
                         ids=['default', 'clamp', 'alpha'])
def test_bias_act_gradcheck(act, kwargs):
    x = _rand(2, 3, 4, seed=1)
    b = _rand(3, seed=2, scale=0.3)
    fn = lambda x, b: bias_act.bias_act(x, b, act=act, impl='ref', **kwargs)  # noqa: E731
    assert gradcheck(fn, (x, b), eps=1e-6, atol=1e-5)
    assert gradgradcheck(fn, (x, b), eps=1e-6, atol=1e-5)


def test_bias_act_against_plain_formulas():
    x = _rand(3, 5, 2, seed=3).detach()
    b = _rand(5, seed=4).detach()
    z = x + b[None, :, None]
    expect = {
        'linear': z, 'relu': np.sqrt(2) * z.clamp(min=0), 'lrelu': np.sqrt(2) * torch.where(z > 0, z, 0.2 * z),
        'tanh': torch.tanh(z), 'sigmoid': 1 / (1 + torch.exp(-z)), 'elu': torch.where(z >= 0, z, torch.exp(z) - 1),
        'selu': 1.0507009873554804934 * torch.where(z >= 0, z, 1.6732632423543772848 * (torch.exp(z) - 1)),
        'softplus': torch.log1p(torch.exp(z)), 'swish': np.sqrt(2) * z / (1 + torch.exp(-z)),
    }
    for act, ref in expect.items():
        torch.testing.assert_close(bias_act.bias_act(x, b, act=act, impl='ref'), ref)
        clamped = bias_act.bias_act(x, b, act=act, gain=3.0, clamp=0.4, impl='ref')
        torch.testing.assert_close(clamped, (ref / bias_act.activation_funcs[act].def_gain * 3.0).clamp(-0.4, 0.4))


def test_bias_act_rejects_bad_arguments():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match='unknown activation'):
        bias_act.bias_act(x, act='gelu')
    with pytest.raises(ValueError, match='does not match'):
        bias_act.bias_act(x, torch.zeros(4))
    with pytest.raises(ValueError, match='clamp'):
        bias_act.bias_act(x, clamp=-0.5)


# --------------------------------------------------------------------------------------------- upfirdn2d

def _upfirdn2d_loops(x, f, up, down, pad, flip_filter, gain):
    """Straight from the definition: zero-insert, pad/crop, convolve, decimate (numpy, float64)."""
    upx, upy = up
    downx, downy = down
    px0, px1, py0, py1 = pad
    x = np.asarray(x, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    f2 = np.outer(f, f) * gain if f.ndim == 1 else f * gain  # a separable filter is the outer product
    n, c, h, w = x.shape
    u = np.zeros((n, c, h * upy, w * upx))
    u[:, :, ::upy, ::upx] = x
    big = np.zeros((n, c, h * upy + abs(py0) + abs(py1), w * upx + abs(px0) + abs(px1)))
    big[:, :, abs(py0): abs(py0) + h * upy, abs(px0): abs(px0) + w * upx] = u
    big = big[:, :, abs(py0) - py0: big.shape[2] - abs(py1) + py1, abs(px0) - px0: big.shape[3] - abs(px1) + px1]
    g = f2 if flip_filter else f2[::-1, ::-1]
    fh, fw = g.shape
    oh, ow = big.shape[2] - fh + 1, big.shape[3] - fw + 1
    out = np.zeros((n, c, oh, ow))
    for ky in range(fh):
        for kx in range(fw):
            out += g[ky, kx] * big[:, :, ky: ky + oh, kx: kx + ow]
    return out[:, :, ::downy, ::downx]


UPFIRDN_CASES = [
    dict(up=[1, 1], down=[1, 1], pad=[0, 0, 0, 0], filt='rect', flip=False, gain=1),
    dict(up=[2, 2], down=[1, 1], pad=[2, 1, 2, 1], filt='1331', flip=False, gain=4),
    dict(up=[1, 1], down=[2, 2], pad=[1, 1, 1, 1], filt='1331', flip=False, gain=1),
    dict(up=[2, 1], down=[1, 3], pad=[1, -1, 3, 0], filt='rect', flip=True, gain=2),
    dict(up=[4, 4], down=[2, 2], pad=[-2, 3, 1, -1], filt='rect', flip=False, gain=0.5),
    dict(up=[1, 2], down=[2, 1], pad=[0, 2, 2, 0], filt='sep8', flip=True, gain=3),
    dict(up=[3, 3], down=[1, 1], pad=[0, 2, 0, 2], filt='none', flip=False, gain=1),
]
FILTERS = {'rect': [[1, 2, 0.5, 0, 1], [0, 3, 1, 2, 0.5], [2, 0.5, 4, 1, 1.5]], '1331': [1, 3, 3, 1],
           'sep8': [1, 2, 3, 4, 4, 3, 2, 1], 'none': None}


@pytest.mark.parametrize('case', UPFIRDN_CASES, ids=lambda c: f"up{c['up']}-down{c['down']}-{c['filt']}")
def test_upfirdn2d_matches_loop_reference(case):
    x = _rand(2, 3, 7, 9, seed=5).detach()
    f = upfirdn2d.setup_filter(FILTERS[case['filt']])
    y = upfirdn2d.upfirdn2d(x, f, up=case['up'], down=case['down'], padding=case['pad'], flip_filter=case['flip'],
                            gain=case['gain'], impl='ref')
    ref = _upfirdn2d_loops(x.numpy(), f.numpy(), case['up'], case['down'], case['pad'], case['flip'], case['gain'])
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('case', UPFIRDN_CASES, ids=lambda c: f"up{c['up']}-down{c['down']}-{c['filt']}")
def test_upfirdn2d_gradcheck(case):
    x = _rand(1, 2, 5, 6, seed=6)
    f = upfirdn2d.setup_filter(FILTERS[case['filt']])
    fn = lambda x: upfirdn2d.upfirdn2d(x, f, up=case['up'], down=case['down'], padding=case['pad'],  # noqa: E731
                                       flip_filter=case['flip'], gain=case['gain'], impl='ref')
    assert gradcheck(fn, (x,))
    assert gradgradcheck(fn, (x,))


def test_upfirdn2d_rejects_a_trainable_filter():
    f = upfirdn2d.setup_filter([1, 3, 3, 1]).requires_grad_(True)
    with pytest.raises(ValueError, match='filter'):
        upfirdn2d.upfirdn2d(torch.zeros(1, 1, 4, 4), f)


# ------------------------------------------------------------------------------------- conv2d_resample

RESAMPLE_CASES = [
    dict(k=3, up=2, down=1, padding=1, groups=1, flip_weight=False),
    dict(k=3, up=1, down=2, padding=1, groups=1, flip_weight=True),
    dict(k=1, up=2, down=1, padding=0, groups=1, flip_weight=False),
    dict(k=1, up=1, down=2, padding=0, groups=1, flip_weight=True),
    dict(k=3, up=2, down=2, padding=1, groups=2, flip_weight=False),
    dict(k=3, up=1, down=1, padding=[1, 0, 2, 1], groups=1, flip_weight=True),
]


@pytest.mark.parametrize('gradfix_enabled', [False, True], indirect=True, ids=['F.conv', 'gradfix'])
@pytest.mark.parametrize('case', RESAMPLE_CASES, ids=lambda c: f"k{c['k']}-up{c['up']}-down{c['down']}-g{c['groups']}")
def test_conv2d_resample_gradcheck(case, gradfix_enabled):
    x = _rand(1, 4, 5, 5, seed=7)
    w = _rand(4, 4 // case['groups'], case['k'], case['k'], seed=8, scale=0.5)
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    fn = lambda x, w: conv2d_resample.conv2d_resample(  # noqa: E731
        x, w, f=f, up=case['up'], down=case['down'], padding=case['padding'], groups=case['groups'],
        flip_weight=case['flip_weight'])
    assert gradcheck(fn, (x, w))
    assert gradgradcheck(fn, (x, w))


@pytest.mark.parametrize('gradfix_enabled', [True], indirect=True)
def test_conv2d_resample_parity_holds_with_gradfix(gradfix_enabled):
    """The custom conv backward gives the upstream gradients too."""
    from test_ops_parity import test_conv2d_resample_matches_upstream
    _, meta = load_parity('ops_conv2d_resample')
    for case in meta['cases']:
        if case['grad']:
            test_conv2d_resample_matches_upstream(case)


# -------------------------------------------------------------------------------------- conv2d_gradfix

@pytest.mark.parametrize('transpose', [False, True])
def test_conv2d_gradfix_matches_torch_to_second_order(transpose, gradfix_function):
    x = _rand(2, 4, 6, 5, seed=9)
    w = _rand(4, 2, 3, 2, seed=10)
    b = _rand(4, seed=11)
    kw = dict(stride=2, padding=1, groups=2)
    if transpose:
        ours = lambda x, w, b: conv2d_gradfix.conv_transpose2d(x, w, b, output_padding=1, **kw)  # noqa: E731
        ref = lambda x, w, b: F.conv_transpose2d(x, w, b, output_padding=1, **kw)  # noqa: E731
    else:
        ours = lambda x, w, b: conv2d_gradfix.conv2d(x, w, b, **kw)  # noqa: E731
        ref = lambda x, w, b: F.conv2d(x, w, b, **kw)  # noqa: E731
    y_ours, y_ref = ours(x, w, b), ref(x, w, b)
    torch.testing.assert_close(y_ours, y_ref)
    gy = torch.randn_like(y_ref)
    g_ours = torch.autograd.grad((y_ours * gy).sum(), [x, w, b], create_graph=True)
    g_ref = torch.autograd.grad((y_ref * gy).sum(), [x, w, b], create_graph=True)
    for a, r in zip(g_ours, g_ref):
        torch.testing.assert_close(a, r)
    # Second order: differentiate a function of the first-order gradients.
    s_ours = torch.autograd.grad(g_ours[0].square().sum() + g_ours[1].square().sum(), [x, w])
    s_ref = torch.autograd.grad(g_ref[0].square().sum() + g_ref[1].square().sum(), [x, w])
    for a, r in zip(s_ours, s_ref):
        torch.testing.assert_close(a, r)
    assert gradgradcheck(ours, (x, w, b))


def test_no_weight_gradients_skips_only_the_weight(gradfix_function):
    x = _rand(1, 2, 5, 5, seed=12)
    w = _rand(3, 2, 3, 3, seed=13)
    y = conv2d_gradfix.conv2d(x, w, padding=1)
    assert type(y.grad_fn).__name__ == 'Conv2dBackward'
    with conv2d_gradfix.no_weight_gradients():
        dx, dw = torch.autograd.grad(y.square().sum(), [x, w], allow_unused=True, materialize_grads=True)
    dx_ref, dw_ref = torch.autograd.grad(F.conv2d(x, w, padding=1).square().sum(), [x, w])
    torch.testing.assert_close(dx, dx_ref)
    assert torch.count_nonzero(dw) == 0 and torch.count_nonzero(dw_ref) > 0
    assert not conv2d_gradfix.weight_gradients_disabled  # the context restores the flag


def test_cpu_fast_path_uses_torch_convolution(monkeypatch):
    # On the CPU fast path the conv is PyTorch's own, and a regulariser's autograd.grad(inputs=[x]) computes no
    # weight gradient anyway: the input gradient equals the Function's.
    monkeypatch.setattr(conv2d_gradfix, 'enabled', True)
    x = _rand(1, 2, 5, 5, seed=12)
    w = _rand(3, 2, 3, 3, seed=13)
    for transpose in (False, True):
        op = conv2d_gradfix.conv_transpose2d if transpose else conv2d_gradfix.conv2d
        with custom_ops.reference_ops(False):
            y = op(x, w.transpose(0, 1) if transpose else w, padding=1)
        assert type(y.grad_fn).__name__ == 'ConvolutionBackward0'
        with custom_ops.reference_ops(True):
            y_ref = op(x, w.transpose(0, 1) if transpose else w, padding=1)
        assert type(y_ref.grad_fn).__name__ == 'Conv2dBackward'
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(torch.autograd.grad(y.square().sum(), [x])[0],
                                   torch.autograd.grad(y_ref.square().sum(), [x])[0])


# ------------------------------------------------------------------------------------ fma, grid_sample

@pytest.mark.parametrize('reference', [True, False], ids=['Function', 'addcmul'])
def test_fma_value_and_unbroadcast_gradients(reference, monkeypatch):
    monkeypatch.setattr(custom_ops, '_force_reference', reference)  # the Python Function, or the CPU fast path
    a = _rand(3, 1, 4, seed=14)
    b = _rand(1, 5, 1, seed=15)
    c = _rand(4, seed=16)
    assert (type(fma.fma(a, b, c).grad_fn).__name__ == '_FusedMultiplyAddBackward') == reference
    torch.testing.assert_close(fma.fma(a, b, c), a * b + c)
    assert gradcheck(fma.fma, (a, b, c))
    ga = torch.autograd.grad(fma.fma(a, b, c).sum(), [a, b, c])
    gr = torch.autograd.grad((a * b + c).sum(), [a, b, c])
    for x, r in zip(ga, gr):
        assert x.shape == r.shape
        torch.testing.assert_close(x, r)


def test_grid_sample_second_order_wrt_image():
    img = _rand(1, 2, 5, 6, seed=17)
    grid = (torch.rand(1, 4, 3, 2, generator=torch.Generator().manual_seed(18), dtype=torch.float64) * 1.8 - 0.9)
    ref = F.grid_sample(img, grid, mode='bilinear', padding_mode='zeros', align_corners=False)
    torch.testing.assert_close(grid_sample_gradfix.grid_sample(img, grid), ref)
    assert gradgradcheck(lambda i: grid_sample_gradfix.grid_sample(i, grid), (img,))
