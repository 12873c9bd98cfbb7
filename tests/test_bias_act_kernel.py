"""The C kernel of CPU bias_act (torch_utils/ops/csrc/bias_act_cpu.c) against the reference ops.

In float32 the forward result and the input gradient must be bitwise the reference's (the same operations in the
same order, no fused multiply-adds); the bias gradient (summed in double) and everything in float64 must agree to
rounding, second order included (gradcheck / gradgradcheck run the float64 kernel). Also: the layouts the kernel
covers (bias along any dim, rows of one element, tensors large enough for the threaded loop), the cases it leaves to
the torch steps, and the in-place inference form.
"""

import itertools

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from torch_utils import custom_ops
from torch_utils.ops import bias_act, bias_act_cpu

pytestmark = pytest.mark.skipif(bias_act_cpu.KERNEL.get() is None, reason='no C compiler: the kernel is not built')

ACTS = ['linear', 'relu', 'lrelu']
SHAPES = [((6, 5, 7), 1), ((3, 4, 5, 6), 1), ((4, 9), 1), ((5, 3, 4), 0), ((2, 3, 4), 2), ((2, 16, 48, 48), 1)]


def _data(shape, dim, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) * 3
    b = torch.randn([shape[dim]], generator=g, dtype=torch.float64).to(dtype)
    return x, b


def _kernel_calls(monkeypatch):
    calls = []
    for name in ('forward', 'gradient'):
        real = getattr(bias_act_cpu, name)
        monkeypatch.setattr(bias_act_cpu, name, lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    return calls


@pytest.mark.parametrize('act,clamp,gain', list(itertools.product(ACTS, [None, 2.5], [None, 0.5])))
@pytest.mark.parametrize('shape,dim', SHAPES)
def test_float32_forward_and_input_gradient_are_bitwise_the_reference(shape, dim, act, clamp, gain, monkeypatch):
    x, b = _data(shape, dim, torch.float32, seed=len(shape) * 10 + dim)
    dy = _data(shape, dim, torch.float32, seed=99)[0]
    calls = _kernel_calls(monkeypatch)
    in_kernel = act != 'linear' or clamp is not None  # with gradients a plain linear map stays in torch

    def run(reference):
        xr, br = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        with custom_ops.reference_ops(reference):
            y = bias_act.bias_act(xr, br, dim=dim, act=act, gain=gain, clamp=clamp)
        gx, gb = torch.autograd.grad(y, [xr, br], dy)
        return y.detach(), gx, gb

    (y_ref, gx_ref, gb_ref), (y, gx, gb) = run(True), run(False)
    assert calls == (['forward', 'gradient'] if in_kernel else [])  # the kernel did both passes
    assert torch.equal(y, y_ref)
    # The clamp's kink: the reference (torch.clamp) passes the gradient at exactly +-clamp, the kernel (like the
    # CUDA plugin) does not; elsewhere the two are the same float operations.
    off_kink = (y_ref.abs() != clamp) if clamp is not None else torch.ones_like(y_ref, dtype=torch.bool)
    assert torch.equal(gx[off_kink], gx_ref[off_kink])
    torch.testing.assert_close(gb, gb_ref, rtol=1e-5, atol=1e-5 * float(gx_ref.abs().sum()) / gb_ref.numel())


@pytest.mark.parametrize('act,clamp', [('linear', 1.5), ('relu', None), ('lrelu', 1.5), ('lrelu', None)])
def test_float64_gradients_of_first_and_second_order(act, clamp):
    # Inputs kept off the kinks (0 and +-clamp), where the derivative does not exist.
    g = torch.Generator().manual_seed(3)
    x = (torch.rand([2, 3, 4, 5], generator=g, dtype=torch.float64) * 0.8 + 0.1)
    x = (x * torch.where(torch.rand(x.shape, generator=g) < 0.5, -1.0, 1.0).double()).requires_grad_(True)
    b = torch.zeros([3], dtype=torch.float64, requires_grad=True)

    def f(x, b):
        return bias_act.bias_act(x, b, act=act, gain=1.3, clamp=clamp)

    assert f(x, b).grad_fn.__class__.__name__ == 'BiasActBackward'
    assert gradcheck(f, (x, b))
    assert gradgradcheck(f, (x, b))
    # the R1 pattern: the norm of the input gradient, differentiated again, against the reference
    dy = torch.randn([2, 3, 4, 5], generator=g, dtype=torch.float64)

    def r1(reference):
        with custom_ops.reference_ops(reference):
            gx, = torch.autograd.grad((f(x, b).square() * dy).sum(), [x], create_graph=True)
            return torch.autograd.grad((gx.square() * dy).sum(), [x, b], allow_unused=True, materialize_grads=True)

    for got, want in zip(r1(False), r1(True)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_gradient_of_the_gradient_with_respect_to_the_incoming_gradient():
    # The gradient pass is linear in dy: its derivative with respect to dy is the same pass.
    x, b = _data((3, 4, 5), 1, torch.float64, seed=5)
    x.requires_grad_(True)
    y = bias_act.bias_act(x, b, act='lrelu', clamp=2.0)
    dy = torch.randn_like(y, requires_grad=True)
    gx, = torch.autograd.grad(y, [x], dy, create_graph=True)
    w = torch.randn_like(gx)
    d_dy, = torch.autograd.grad((gx * w).sum(), [dy])
    slope = ((y > 0).double() + 0.2 * (y <= 0).double()) * 2 ** 0.5 * (y.abs() < 2.0).double()
    torch.testing.assert_close(d_dy, w * slope, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('shape,dim', SHAPES)
def test_in_place_inference_overwrites_the_owned_input(shape, dim):
    x, b = _data(shape, dim, torch.float32, seed=11)
    expect = bias_act.bias_act(x, b, dim=dim, act='lrelu', clamp=2.0, impl='ref')
    with torch.no_grad():
        own = x.clone()
        got = bias_act.bias_act_(own, b, dim=dim, act='lrelu', clamp=2.0)
        fresh = bias_act.bias_act(x, b, dim=dim, act='lrelu', clamp=2.0)
    assert got.data_ptr() == own.data_ptr() and torch.equal(got, expect)
    assert torch.equal(fresh, expect) and fresh.data_ptr() != x.data_ptr()


@pytest.mark.parametrize('case', ['tanh', 'negative gain', 'negative slope', 'non-contiguous', 'linear without clamp'])
def test_cases_outside_the_kernel_take_the_torch_steps(case, monkeypatch):
    calls = _kernel_calls(monkeypatch)
    x, b = _data((3, 4, 5), 1, torch.float64, seed=2)
    kwargs = dict(act='lrelu', clamp=2.0)
    if case == 'tanh':
        kwargs['act'] = 'tanh'
    elif case == 'negative gain':
        kwargs['gain'] = -1.0
    elif case == 'negative slope':
        kwargs['alpha'] = -0.1
    elif case == 'non-contiguous':
        x = x.transpose(0, 2).contiguous().transpose(0, 2)
    else:  # with gradients a plain linear map stays in torch: its output must remain writable in place
        kwargs = dict(act='linear', gain=0.5)
    x.requires_grad_(True)
    y = bias_act.bias_act(x, b, **kwargs)
    torch.testing.assert_close(y, bias_act.bias_act(x, b, **kwargs, impl='ref'))
    torch.autograd.grad(y.sum(), [x])
    assert calls == []


def test_without_the_kernel_the_torch_steps_give_the_same_result(monkeypatch):
    x, b = _data((2, 16, 48, 48), 1, torch.float32, seed=8)
    with torch.no_grad():
        with_kernel = bias_act.bias_act(x, b, act='lrelu', clamp=2.0)
        monkeypatch.setattr(bias_act_cpu.KERNEL, '_tried', True)
        monkeypatch.setattr(bias_act_cpu.KERNEL, '_lib', None)
        calls = _kernel_calls(monkeypatch)
        without = bias_act.bias_act(x, b, act='lrelu', clamp=2.0)
    assert calls == [] and torch.equal(with_kernel, without)
