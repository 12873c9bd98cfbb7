"""The CUDA plugins against the reference paths of the same ops, on a GPU: forward values, first-order
gradients and second-order gradients, in float32 and float16, contiguous and channels_last.

Skipped where CUDA is not available. Where it is, the plugins must build: a silent fall-back to the
reference path would make every comparison here vacuous, so the tests assert that the plugin is in use.
"""

import math

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='CUDA is not available')

DTYPES = [torch.float32, torch.float16]
LAYOUTS = [torch.contiguous_format, torch.channels_last]
# Largest error allowed, relative to the largest magnitude of the reference result. fp16: the reference
# path computes in fp16 while the kernels compute in fp32, so each fp16 rounding shows up.
TOL = {torch.float32: 2e-5, torch.float16: 1e-2}
TOL_GRAD = {torch.float32: 1e-4, torch.float16: 2e-2}


@pytest.fixture(scope='module')
def ops():
    from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d

    assert bias_act._plugin_available(), 'the bias_act CUDA plugin did not build (see the warning above)'
    assert upfirdn2d._plugin_available(), 'the upfirdn2d CUDA plugin did not build (see the warning above)'
    return bias_act, upfirdn2d, conv2d_resample


@pytest.fixture(autouse=True)
def _no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _randn(shape, dtype, seed, memory_format=torch.contiguous_format, scale=1.0):
    g = torch.Generator(device='cuda').manual_seed(seed)
    x = torch.randn(shape, generator=g, device='cuda', dtype=torch.float32) * scale
    return x.to(dtype).contiguous(memory_format=memory_format)


def _assert_close(actual, expected, tol, what, mask=None):
    assert actual.shape == expected.shape, f'{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}'
    assert actual.dtype == expected.dtype, f'{what}: dtype {actual.dtype} != {expected.dtype}'
    a, e = actual.detach().double(), expected.detach().double()
    if mask is not None:
        a, e = a[mask], e[mask]
    if e.numel() == 0:
        return
    assert torch.isfinite(a).all() == torch.isfinite(e).all(), f'{what}: non-finite values differ'
    scale = max(float(e.abs().max()), 1e-6)
    err = float((a - e).abs().max())
    assert err <= tol * scale, f'{what}: max abs error {err:.3g} > {tol:g} x scale {scale:.3g}'


def _first_and_second_order(fn, inputs, seed):
    """y = fn(*inputs); first-order grads of <y, dy>; second-order grads of <grad_x, w> w.r.t. all inputs."""
    y = fn(*inputs)
    dy = _randn(y.shape, y.dtype, seed)
    grads = torch.autograd.grad(y, inputs, dy, create_graph=True, allow_unused=True)
    if not grads[0].requires_grad:  # e.g. a plain linear map: the gradient does not depend on the inputs
        return y, grads, (None,) * len(inputs)
    w = _randn(grads[0].shape, grads[0].dtype, seed + 1)
    second = torch.autograd.grad((grads[0].float() * w.float()).sum(), inputs, allow_unused=True)
    return y, grads, second


def _off_clamp_boundary(bias_act, x, b, dim, act, kwargs):
    """Elements whose pre-clamp value is clearly inside or clearly outside [-clamp, clamp].

    On the boundary (within the rounding of the dtype) the reference (inclusive clamp gradient, on its own
    rounded pre-clamp value) and the kernel (zero where |y| >= clamp) may legitimately disagree."""
    if kwargs.get('clamp') is None:
        return None
    clamp = float(kwargs['clamp'])
    unclamped = {k: v for k, v in kwargs.items() if k != 'clamp'}
    pre = bias_act.bias_act(x.detach().double(), b.detach().double(), dim=dim, act=act, impl='ref', **unclamped)
    eps = 4e-3 if x.dtype == torch.float16 else 1e-5
    return (pre.abs() - clamp).abs() > eps * clamp


def _compare_second_order(s_c, s_r, tol, label, mask, exact):
    """Second-order gradients: None (no graph) and all-zero are the same answer."""
    for i, name in enumerate(['x', 'b']):
        if s_r[i] is None and s_c[i] is None:
            continue
        sr = s_r[i] if s_r[i] is not None else torch.zeros_like(s_c[i])
        sc = s_c[i] if s_c[i] is not None else torch.zeros_like(s_r[i])
        if name == 'x':
            _assert_close(sc, sr, tol, f'second-order d/dx {label}', mask)
        elif exact:
            _assert_close(sc, sr, tol, f'second-order d/db {label}')


# ---------------------------------------------------------------------------------------------- bias_act

ACTS = ['linear', 'relu', 'lrelu', 'tanh', 'sigmoid', 'elu', 'selu', 'softplus', 'swish']
BIAS_ACT_KWARGS = [{}, {'clamp': 0.7, 'gain': 1.3}, {'alpha': 0.05, 'gain': 0.9}, {'clamp': 256}]


@pytest.mark.parametrize('kwargs', BIAS_ACT_KWARGS, ids=['default', 'clamp-gain', 'alpha-gain', 'clamp256'])
@pytest.mark.parametrize('memory_format', LAYOUTS, ids=['contiguous', 'channels_last'])
@pytest.mark.parametrize('dtype', DTYPES, ids=['fp32', 'fp16'])
@pytest.mark.parametrize('act', ACTS)
def test_bias_act_matches_reference(ops, act, dtype, memory_format, kwargs):
    bias_act = ops[0]
    x0 = _randn([3, 10, 6, 7], dtype, 1, memory_format, scale=2.0)
    b0 = _randn([10], dtype, 2)
    outputs = {}
    for impl in ('ref', 'cuda'):
        x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        b = b0.detach().clone().requires_grad_(True)
        fn = lambda x, b: bias_act.bias_act(x, b, act=act, impl=impl, **kwargs)  # noqa: E731
        outputs[impl] = _first_and_second_order(fn, (x, b), seed=3)
    (y_r, g_r, s_r), (y_c, g_c, s_c) = outputs['ref'], outputs['cuda']
    label = f'{act} {dtype} {memory_format} {kwargs}'
    _assert_close(y_c, y_r, TOL[dtype], f'forward {label}')
    if memory_format == torch.channels_last:
        assert y_c.is_contiguous(memory_format=torch.channels_last), 'the CUDA path lost channels_last'

    # Leave out elements on the clamp boundary, and the bias gradients (sums over them) when there are any.
    mask = _off_clamp_boundary(bias_act, x0, b0, 1, act, kwargs)
    exact = mask is None or bool(mask.all())
    _assert_close(g_c[0], g_r[0], TOL_GRAD[dtype], f'dx {label}', mask)
    if exact:
        _assert_close(g_c[1], g_r[1], TOL_GRAD[dtype], f'db {label}')
    _compare_second_order(s_c, s_r, 2 * TOL_GRAD[dtype], label, mask, exact)


@pytest.mark.parametrize('shape, dim', [([6, 33], 1), ([4, 5, 6], 0), ([4, 5, 6], 2), ([2, 3, 4, 5], 3),
                                        ([2, 3, 4, 5], -1), ([70000], 0), ([1, 512, 1, 1], 1)])
@pytest.mark.parametrize('dtype', DTYPES, ids=['fp32', 'fp16'])
def test_bias_act_dims(ops, shape, dim, dtype):
    bias_act = ops[0]
    x0 = _randn(shape, dtype, 4)
    b0 = _randn([shape[dim]], dtype, 5)
    outputs = {}
    for impl in ('ref', 'cuda'):
        x, b = x0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
        fn = lambda x, b: bias_act.bias_act(x, b, dim=dim, act='swish', clamp=1.5, impl=impl)  # noqa: E731
        outputs[impl] = _first_and_second_order(fn, (x, b), seed=6)
    (y_r, g_r, s_r), (y_c, g_c, s_c) = outputs['ref'], outputs['cuda']
    mask = _off_clamp_boundary(bias_act, x0, b0, dim, 'swish', {'clamp': 1.5})
    _assert_close(y_c, y_r, TOL[dtype], f'forward {shape} dim {dim}')
    _assert_close(g_c[0], g_r[0], TOL_GRAD[dtype], f'dx {shape} dim {dim}', mask)
    exact = bool(mask.all())
    if exact:
        _assert_close(g_c[1], g_r[1], TOL_GRAD[dtype], f'db {shape} dim {dim}')
    _compare_second_order(s_c, s_r, 2 * TOL_GRAD[dtype], f'{shape} dim {dim}', mask, exact)


def test_bias_act_without_bias_and_noop(ops):
    bias_act = ops[0]
    x = _randn([4, 8, 5, 5], torch.float32, 7)
    for act in ACTS:
        _assert_close(bias_act.bias_act(x, act=act, impl='cuda'), bias_act.bias_act(x, act=act, impl='ref'),
                      TOL[torch.float32], f'no bias {act}')
    # linear, gain 1, no clamp, no bias: the identity.
    _assert_close(bias_act.bias_act(x, impl='cuda'), x, 0, 'identity')


def test_bias_act_large_tensor_uses_64_bit_indexing(ops):
    """More than 2**31 elements: the channel of elements past 2**31 must still be right."""
    bias_act = ops[0]
    free, _ = torch.cuda.mem_get_info()
    n = 2 ** 31 + 3 * 4096
    if free < 3 * n * 2 + (1 << 30):
        pytest.skip('not enough free GPU memory for a > 2**31-element fp16 tensor')
    c = 3
    x = torch.empty([1, c, n // c], device='cuda', dtype=torch.float16).normal_()
    b = torch.tensor([1.0, -2.0, 3.0], device='cuda', dtype=torch.float16)
    y = bias_act.bias_act(x, b, act='lrelu', impl='cuda')
    tail = slice(-4096, None)
    for ch in range(c):
        want = bias_act.bias_act(x[:, ch:ch + 1, tail], b[ch:ch + 1], act='lrelu', impl='ref')
        _assert_close(y[:, ch:ch + 1, tail], want, TOL[torch.float16], f'channel {ch} past 2**31')
    del x, y
    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------- upfirdn2d

def _make_filter(upfirdn2d, kind, seed):
    """'none', '1331' (StyleGAN2's 4x4), 'sym6' (a 12-tap separable filter, as in the augmentation
    pipeline) or 'HxW' (a random, asymmetric, un-normalised 2-D filter)."""
    g = torch.Generator().manual_seed(seed)
    if kind == 'none':
        return None
    if kind == '1331':
        return upfirdn2d.setup_filter([1, 3, 3, 1], device='cuda')
    if kind == 'sym6':
        return upfirdn2d.setup_filter(torch.rand([12], generator=g).tolist(), device='cuda')
    fh, fw = (int(s) for s in kind.split('x'))
    return (torch.rand([fh, fw], generator=g) + 0.1).cuda()


UPFIRDN_CASES = [
    # (x shape, filter, up, down, padding, flip_filter, gain)
    ([2, 5, 8, 8], '1331', 2, 1, [2, 1, 2, 1], False, 4),       # upsample2d
    ([2, 5, 16, 16], '1331', 1, 2, [1, 1, 1, 1], False, 1),     # downsample2d
    ([2, 5, 17, 17], '1331', 1, 1, [1, 1, 1, 1], False, 4),     # after conv_transpose (G conv0)
    ([2, 5, 18, 18], '1331', 1, 1, [1, 1, 1, 1], False, 1),     # D conv1 filter-only
    ([1, 3, 16, 12], 'sym6', 2, 1, [6, 5, 6, 5], False, 4),     # separable upsample
    ([1, 3, 16, 12], 'sym6', 1, 2, [5, 5, 5, 5], True, 1),      # separable downsample
    ([2, 4, 9, 13], '1x1', 1, 1, [0, 0, 0, 0], False, 1),
    ([2, 4, 9, 13], 'none', 2, 1, [1, -1, 0, 2], False, 1),
    ([2, 4, 9, 13], '2x3', 1, 1, [1, 1, 0, 1], True, 0.5),
    ([2, 4, 9, 13], '3x2', 2, 1, [2, 1, -1, 2], False, 2),
    ([2, 4, 9, 13], '4x4', 4, 1, [3, 3, 2, 3], False, 16),
    ([2, 4, 20, 15], '5x3', 1, 4, [2, 2, 1, 3], True, 1),
    ([2, 4, 12, 11], '6x6', 2, 2, [3, 2, 2, 3], False, 2),
    ([2, 4, 9, 13], '7x8', 1, 2, [-2, 4, 3, 3], False, 1),
    ([2, 4, 9, 13], '8x8', 4, 4, [4, 3, 4, 3], True, 3),
    ([2, 4, 21, 10], '4x4', [2, 1], [1, 2], [2, 1, 1, 1], False, 1),  # anisotropic factors: generic kernel
    ([2, 4, 11, 9], '9x10', 3, 1, [4, 5, 5, 4], False, 1),            # beyond the specialisations
    ([1, 2, 6, 6], '30x30', 1, 1, [20, 20, 20, 20], False, 1),        # large filter
    ([1, 70, 64, 40], '1331', 2, 1, [2, 1, 2, 1], False, 4),          # several tiles, channel chunks
    ([1, 70, 64, 40], '1331', 1, 2, [1, 1, 1, 1], False, 1),
    ([2, 100, 2, 2], '1331', 1, 2, [1, 1, 1, 1], False, 1),          # 1x1 outputs, many channels per tile
    ([1, 2, 40, 1], '3x1', 1, 1, [0, 0, 1, 1], False, 1),             # one column
]


@pytest.mark.parametrize('memory_format', LAYOUTS, ids=['contiguous', 'channels_last'])
@pytest.mark.parametrize('dtype', DTYPES, ids=['fp32', 'fp16'])
@pytest.mark.parametrize('case', range(len(UPFIRDN_CASES)))
def test_upfirdn2d_matches_reference(ops, case, dtype, memory_format):
    upfirdn2d = ops[1]
    shape, kind, up, down, padding, flip, gain = UPFIRDN_CASES[case]
    f = _make_filter(upfirdn2d, kind, case)
    x0 = _randn(shape, dtype, 10 + case, memory_format)
    outputs = {}
    for impl in ('ref', 'cuda'):
        x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        fn = lambda x: upfirdn2d.upfirdn2d(x, f, up=up, down=down, padding=padding, flip_filter=flip,  # noqa: E731
                                           gain=gain, impl=impl)
        y = fn(x)
        dy = _randn(y.shape, dtype, 20 + case).requires_grad_(True)
        dx, = torch.autograd.grad(y, x, dy, create_graph=True)
        w = _randn(dx.shape, dtype, 30 + case)
        # upfirdn2d is linear: the second-order path is the gradient of <dx, w> w.r.t. dy (the op again).
        d2, = torch.autograd.grad((dx.float() * w.float()).sum(), dy)
        outputs[impl] = (y, dx, d2)
    label = f'case {UPFIRDN_CASES[case]} {dtype} {memory_format}'
    (y_r, dx_r, d2_r), (y_c, dx_c, d2_c) = outputs['ref'], outputs['cuda']
    _assert_close(y_c, y_r, TOL[dtype], f'forward {label}')
    _assert_close(dx_c, dx_r, TOL_GRAD[dtype], f'dx {label}')
    _assert_close(d2_c, d2_r, TOL_GRAD[dtype], f'second order {label}')
    if memory_format == torch.channels_last and shape[1] > 1:
        assert y_c.is_contiguous(memory_format=torch.channels_last), 'the CUDA path lost channels_last'


@pytest.mark.parametrize('dtype', DTYPES, ids=['fp32', 'fp16'])
def test_resampling_helpers_match_reference(ops, dtype):
    upfirdn2d = ops[1]
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device='cuda')
    f12 = upfirdn2d.setup_filter(torch.rand([12], generator=torch.Generator().manual_seed(0)).tolist(), device='cuda')
    x = _randn([2, 6, 12, 10], dtype, 40, torch.channels_last)
    calls = {
        'upsample2d': lambda impl: upfirdn2d.upsample2d(x, f, impl=impl),
        'upsample2d sym6': lambda impl: upfirdn2d.upsample2d(x, f12, impl=impl),
        'downsample2d': lambda impl: upfirdn2d.downsample2d(x, f, impl=impl),
        'downsample2d sym6': lambda impl: upfirdn2d.downsample2d(x, f12, impl=impl),
        'filter2d': lambda impl: upfirdn2d.filter2d(x, f, padding=1, impl=impl),
        'upsample2d [1,2] flip': lambda impl: upfirdn2d.upsample2d(x, f, up=[1, 2], flip_filter=True, impl=impl),
    }
    for name, call in calls.items():
        _assert_close(call('cuda'), call('ref'), TOL[dtype], f'{name} {dtype}')


@pytest.mark.parametrize('up, down, k', [(2, 1, 3), (1, 2, 3), (2, 1, 1), (1, 2, 1), (1, 1, 3)])
@pytest.mark.parametrize('dtype', DTYPES, ids=['fp32', 'fp16'])
def test_conv2d_resample_matches_reference(ops, up, down, k, dtype):
    from torch_utils import custom_ops

    upfirdn2d, conv2d_resample = ops[1], ops[2]
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device='cuda')
    x0 = _randn([2, 8, 8, 8], dtype, 50, torch.channels_last)
    w = _randn([6, 8, k, k], dtype, 51) / math.sqrt(8 * k * k)
    outputs = []
    for ref in (True, False):
        with custom_ops.reference_ops(ref):
            x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
            y = conv2d_resample.conv2d_resample(x, w, f=f, up=up, down=down, padding=k // 2, flip_weight=(up == 1))
            dy = _randn(y.shape, dtype, 52)
            dx, = torch.autograd.grad(y, x, dy)
            outputs.append((y, dx))
    (y_r, dx_r), (y_c, dx_c) = outputs
    _assert_close(y_c, y_r, TOL[dtype], f'conv2d_resample up {up} down {down} k {k}')
    _assert_close(dx_c, dx_r, TOL_GRAD[dtype], f'conv2d_resample dx up {up} down {down} k {k}')
