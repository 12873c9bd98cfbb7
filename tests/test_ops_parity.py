"""The reference paths of the ops reproduce the numbers produced by the upstream code (shared/parity)."""

import pytest
import torch

from conftest import assert_close_to_scale, load_parity
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d

OPS_FWD = 1e-6   # max|a - ref| <= 1e-6 * max(1, max|ref|)
GRAD = 1e-4      # max|a - ref| <= 1e-4 * max|ref|


def _t(arrays, key, grad=False):
    return torch.from_numpy(arrays[key].copy()).requires_grad_(grad)


def _cases(name):
    _, meta = load_parity(name)
    return [pytest.param(case, id=case['name']) for case in meta['cases']]


@pytest.mark.parametrize('case', _cases('ops_bias_act'))
def test_bias_act_matches_upstream(case):
    arrays, _ = load_parity('ops_bias_act')
    name = case['name']
    x = _t(arrays, case['x'], grad=case['grad'])
    b = _t(arrays, case['b'], grad=case['grad']) if case['b'] is not None else None
    y = bias_act.bias_act(x, b, impl='ref', **case['kwargs'])
    assert_close_to_scale(y, arrays[f'y/{name}'], OPS_FWD, floor=1.0, name=f'y/{name}')
    if case['grad']:
        dx, db = torch.autograd.grad((y * _t(arrays, f'gy/{name}')).sum(), [x, b])
        assert_close_to_scale(dx, arrays[f'dx/{name}'], GRAD, name=f'dx/{name}')
        assert_close_to_scale(db, arrays[f'db/{name}'], GRAD, name=f'db/{name}')


def test_bias_act_covers_every_upstream_activation():
    _, meta = load_parity('ops_bias_act')
    assert list(meta['act_table']) == list(bias_act.activation_funcs)
    for act, table in meta['act_table'].items():
        spec = bias_act.activation_funcs[act]
        assert spec.def_alpha == pytest.approx(table['def_alpha'])
        assert spec.def_gain == pytest.approx(table['def_gain'])


def test_setup_filter_matches_upstream():
    arrays, meta = load_parity('ops_upfirdn2d')
    for name, spec in meta['filters'].items():
        f = upfirdn2d.setup_filter(spec['f'], **spec['kwargs'])
        assert_close_to_scale(f, arrays[f'setup/{name}'], OPS_FWD, floor=1.0, name=f'setup/{name}')


@pytest.mark.parametrize('case', _cases('ops_upfirdn2d'))
def test_upfirdn2d_matches_upstream(case):
    arrays, _ = load_parity('ops_upfirdn2d')
    name = case['name']
    x = _t(arrays, case['x'], grad=case['grad'])
    f = _t(arrays, case['f']) if case['f'] is not None else None
    y = getattr(upfirdn2d, case['func'])(x, f, impl='ref', **case['kwargs'])
    assert_close_to_scale(y, arrays[f'y/{name}'], OPS_FWD, floor=1.0, name=f'y/{name}')
    if case['grad']:
        dx, = torch.autograd.grad((y * _t(arrays, f'gy/{name}')).sum(), [x])
        assert_close_to_scale(dx, arrays[f'dx/{name}'], GRAD, name=f'dx/{name}')


@pytest.mark.parametrize('case', _cases('ops_conv2d_resample'))
def test_conv2d_resample_matches_upstream(case):
    arrays, _ = load_parity('ops_conv2d_resample')
    name = case['name']
    x = _t(arrays, case['x'], grad=case['grad'])
    w = _t(arrays, case['w'], grad=case['grad'])
    f = _t(arrays, case['f']) if case['f'] is not None else None
    y = conv2d_resample.conv2d_resample(x=x, w=w, f=f, **case['kwargs'])
    assert_close_to_scale(y, arrays[f'y/{name}'], OPS_FWD, floor=1.0, name=f'y/{name}')
    if case['grad']:
        dx, dw = torch.autograd.grad((y * _t(arrays, f'gy/{name}')).sum(), [x, w])
        assert_close_to_scale(dx, arrays[f'dx/{name}'], GRAD, name=f'dx/{name}')
        assert_close_to_scale(dw, arrays[f'dw/{name}'], GRAD, name=f'dw/{name}')
