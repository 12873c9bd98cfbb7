"""The autograd wrappers around the CUDA plugins, run on the CPU with a stand-in plugin that implements the kernel
contract (torch_utils/ops/*.h) with plain tensor maths: forward, first and second order gradients must equal the
reference paths'. This checks the Python side (saved tensors, layouts, bias reduction, the backward geometry of
upfirdn2d) on machines without a GPU; tests/test_ops_cuda.py checks the real kernels on one."""

import pytest
import torch
import torch.nn.functional as F

from torch_utils.ops import bias_act, upfirdn2d

SCALE = 1.0507009873554804934193349852946
ALPHA_S = 1.6732632423543772848170429916717
CODES = {spec.cuda_idx: name for name, spec in bias_act.activation_funcs.items()}


class FakeBiasActPlugin:
    """bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp) following the documented contract."""

    @staticmethod
    def bias_act(x, b, xref, yref, dy, grad, dim, act, alpha, gain, clamp):
        name = CODES[act]
        shape = [-1 if i == dim else 1 for i in range(x.ndim)]
        bias = b.reshape(shape) if b.numel() else 0
        if grad == 0:
            z = x + bias
            y = {'linear': z, 'relu': z.clamp(min=0), 'lrelu': torch.where(z > 0, z, alpha * z), 'tanh': z.tanh(),
                 'sigmoid': z.sigmoid(), 'elu': torch.where(z >= 0, z, z.expm1()),
                 'selu': torch.where(z >= 0, SCALE * z, SCALE * ALPHA_S * z.expm1()), 'softplus': F.softplus(z),
                 'swish': z * z.sigmoid()}[name] * gain
            return y.clamp(-clamp, clamp) if clamp >= 0 else y
        z = xref + bias if name == 'swish' else None
        t = yref / gain if yref.numel() else None
        s = z.sigmoid() if z is not None else None
        if grad == 1:
            d = {'linear': lambda: torch.ones_like(x), 'relu': lambda: (t > 0).to(x.dtype),
                 'lrelu': lambda: torch.where(t > 0, 1.0, alpha).to(x.dtype), 'tanh': lambda: 1 - t * t,
                 'sigmoid': lambda: t * (1 - t), 'elu': lambda: torch.where(t >= 0, 1.0, t + 1),
                 'selu': lambda: torch.where(t >= 0, SCALE, t + SCALE * ALPHA_S),
                 'softplus': lambda: -torch.expm1(-t), 'swish': lambda: s + z * s * (1 - s)}[name]()
            out = x * gain * d
        else:
            if name in ('linear', 'relu', 'lrelu'):
                return torch.zeros_like(x)
            d2 = {'tanh': lambda: -2 * t * (1 - t * t), 'sigmoid': lambda: t * (1 - t) * (1 - 2 * t),
                  'elu': lambda: torch.where(t >= 0, 0.0, t + 1), 'selu': lambda: torch.where(t >= 0, 0.0,
                                                                                             t + SCALE * ALPHA_S),
                  'softplus': lambda: (-torch.expm1(-t)) * torch.exp(-t),
                  'swish': lambda: s * (1 - s) * (2 + z * (1 - 2 * s))}[name]()
            out = x * dy * gain * d2
        if clamp >= 0:
            out = torch.where(yref.abs() >= clamp, torch.zeros_like(out), out)
        return out


class FakeUpfirdn2dPlugin:
    """upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain) from the definition."""

    @staticmethod
    def upfirdn2d(x, f, upx, upy, downx, downy, padx0, padx1, pady0, pady1, flip, gain):
        n, c, h, w = x.shape
        u = x.new_zeros([n, c, h * upy, w * upx])
        u[:, :, ::upy, ::upx] = x
        u = F.pad(u, [max(padx0, 0), max(padx1, 0), max(pady0, 0), max(pady1, 0)])
        u = u[:, :, max(-pady0, 0): u.shape[2] - max(-pady1, 0), max(-padx0, 0): u.shape[3] - max(-padx1, 0)]
        g = (f if flip else f.flip([0, 1])).to(x.dtype) * gain
        out = F.conv2d(u.reshape(n * c, 1, *u.shape[2:]), g[None, None])
        return out.reshape(n, c, *out.shape[2:])[:, :, ::downy, ::downx].contiguous()


@pytest.fixture
def fake_plugins(monkeypatch):
    monkeypatch.setattr(bias_act._plugin, 'module', FakeBiasActPlugin())
    monkeypatch.setattr(upfirdn2d._plugin, 'module', FakeUpfirdn2dPlugin())
    monkeypatch.setattr(upfirdn2d, '_cpu_kernel', FakeUpfirdn2dPlugin.upfirdn2d)  # CPU tensors reach the stand-in


def _second_order(fn, inputs):
    """Values, first-order gradients and a second-order gradient of a function of the inputs."""
    y = fn(*inputs)
    gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    grads = torch.autograd.grad((y * gy).sum(), inputs, create_graph=True, allow_unused=True)
    target = sum(g.square().sum() for g in grads if g is not None and g.requires_grad)
    second = torch.autograd.grad(target, inputs, allow_unused=True) if torch.is_tensor(target) else [None] * len(inputs)
    return y, grads, second


@pytest.mark.parametrize('act', list(bias_act.activation_funcs))
@pytest.mark.parametrize('dim, shape', [(1, (2, 5, 3, 4)), (0, (70,)), (2, (3, 2, 6))])
@pytest.mark.parametrize('clamp', [None, 0.6])
def test_bias_act_wrapper_matches_reference(fake_plugins, act, dim, shape, clamp):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_(True)
    b = (0.3 * torch.randn([shape[dim]], generator=g, dtype=torch.float64)).requires_grad_(True)
    kwargs = dict(dim=dim, act=act, alpha=None, gain=None, clamp=clamp)
    ours = _second_order(lambda x, b: bias_act._bias_act_cuda(**kwargs).apply(x, b), [x, b])
    ref = _second_order(lambda x, b: bias_act._bias_act_ref(x, b, **kwargs), [x, b])
    torch.testing.assert_close(ours[0], ref[0])
    for a, r in zip(list(ours[1]) + list(ours[2]), list(ref[1]) + list(ref[2])):
        if r is None:
            assert a is None or torch.count_nonzero(a) == 0
        else:
            torch.testing.assert_close(a, r)


def test_bias_act_wrapper_keeps_channels_last(fake_plugins):
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_(True)
    b = torch.randn(4, dtype=torch.float64)
    y = bias_act._bias_act_cuda(act='lrelu').apply(x, b)
    torch.testing.assert_close(y, bias_act._bias_act_ref(x, b, act='lrelu'))
    g, = torch.autograd.grad(y.sum(), [x])
    torch.testing.assert_close(g, torch.autograd.grad(bias_act._bias_act_ref(x, b, act='lrelu').sum(), [x])[0])


@pytest.mark.parametrize('up,down,pad', [((1, 1), (1, 1), (0, 0, 0, 0)), ((2, 2), (1, 1), (2, 1, 2, 1)),
                                          ((1, 1), (2, 2), (1, 1, 1, 1)), ((2, 1), (1, 3), (1, -1, 3, 0)),
                                          ((1, 3), (2, 1), (-2, 2, 2, -1)), ((3, 2), (2, 3), (0, 4, 1, 1))])
@pytest.mark.parametrize('flip,gain', [(False, 1.0), (True, 2.5)])
def test_cpu_kernel_follows_the_plugin_contract(up, down, pad, flip, gain):
    # The CPU kernel behind the fast path against the contract written out directly (FakeUpfirdn2dPlugin).
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 7, 8, generator=g, dtype=torch.float64)
    f = torch.rand(3, 4, generator=g, dtype=torch.float32)
    args = (*up, *down, *pad, flip, gain)
    expect = FakeUpfirdn2dPlugin.upfirdn2d(x, f, *args)
    got = upfirdn2d._cpu_kernel(x, f, *args)
    assert got.shape == expect.shape
    # The kernel scales the float32 filter before casting it, as the reference path does: float32 rounding only.
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('case', [
    dict(up=2, down=1, padding=[2, 1, 2, 1], f=[1, 3, 3, 1], flip=False, gain=4),
    dict(up=1, down=2, padding=[1, 1, 1, 1], f=[1, 3, 3, 1], flip=False, gain=1),
    dict(up=[2, 1], down=[1, 3], padding=[1, -1, 3, 0], f=[[1, 2, 0.5, 0, 1], [0, 3, 1, 2, 0.5], [2, 0.5, 4, 1, 1.5]],
         flip=True, gain=2),
    dict(up=[1, 2], down=[2, 1], padding=[0, 2, 2, 0], f=[1, 2, 3, 4, 4, 3, 2, 1], flip=True, gain=3),
], ids=['up2', 'down2', 'aniso-rect', 'separable'])
def test_upfirdn2d_wrapper_matches_reference(fake_plugins, case):
    x = torch.randn(2, 3, 7, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_(True)
    f = upfirdn2d.setup_filter(case['f'])
    kwargs = dict(up=case['up'], down=case['down'], padding=case['padding'], flip_filter=case['flip'],
                  gain=case['gain'])

    def ours(x):
        return upfirdn2d._upfirdn2d_function(**kwargs).apply(x, f)

    def ref(x):
        return upfirdn2d._upfirdn2d_ref(x, f, **kwargs)

    y_ours, g_ours, _ = _second_order(ours, [x])
    y_ref, g_ref, _ = _second_order(ref, [x])
    torch.testing.assert_close(y_ours, y_ref)
    torch.testing.assert_close(g_ours[0], g_ref[0])
