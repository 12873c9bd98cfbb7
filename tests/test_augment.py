"""The ADA augmentation pipe and the ADA p-update rule.

Expected values are computed independently of ``training.augment``: the filters from the published wavelet taps,
the colour matrices with scipy's rotations, image-space filtering with ``scipy.ndimage``, padding and blitting with
numpy, and the random parameters by re-drawing upstream's sequence of torch random numbers after reseeding.
"""

import inspect
import pickle

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import scipy.special
import torch
from scipy.spatial.transform import Rotation

from torch_utils import custom_ops, persistence
from torch_utils.ops import conv2d_gradfix
from training import augment, legacy

SYM2 = [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025]
SYM6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633, 0.4910559419267466,
        0.787641141030194, 0.3379294217276218, -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
        0.0017677118642428036, -0.007800708325034148]

BLIT = ['xflip', 'rotate90', 'xint']
GEOM = ['scale', 'rotate', 'aniso', 'xfrac']
COLOR = ['brightness', 'contrast', 'lumaflip', 'hue', 'saturation']
ALL_OPS = BLIT + GEOM + COLOR + ['imgfilter', 'noise', 'cutout']


def _images(n=4, c=3, h=16, w=16, seed=123, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand([n, c, h, w], generator=g, dtype=torch.float64) * 2 - 1).to(dtype)


def _smooth_images(c=3, h=16, w=16):
    """Low-frequency cosines in [-0.9, 0.9] and their largest spatial derivative (per pixel)."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
    fx, fy = 0.07, 0.05  # cycles per pixel
    img = np.stack([0.9 * np.cos(2 * np.pi * (fx * xx + fy * yy) + ph) for ph in np.arange(c)])
    max_grad = 0.9 * 2 * np.pi * (fx + fy)
    return torch.tensor(img[None], dtype=torch.float32), max_grad


def _pipe(p=1.0, **kwargs):
    pipe = augment.AugmentPipe(**kwargs)
    pipe.p.fill_(p)
    return pipe


def _erfinv_quantile(q, std):
    """Upstream's debug magnitude for a normal draw: erfinv(2q - 1) * std (= norm.ppf(q) * std / sqrt(2))."""
    return float(scipy.special.erfinv(2 * q - 1)) * std


# ---------------------------------------------------------------------------------------- constructor, state


def test_constructor_keywords_and_defaults_are_upstreams():
    expected = dict(xflip=0, rotate90=0, xint=0, xint_max=0.125, scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2,
                    rotate_max=1, aniso_std=0.2, xfrac_std=0.125, brightness=0, contrast=0, lumaflip=0, hue=0,
                    saturation=0, brightness_std=0.2, contrast_std=0.5, hue_max=1, saturation_std=1, imgfilter=0,
                    imgfilter_bands=[1, 1, 1, 1], imgfilter_std=1, noise=0, cutout=0, noise_std=0.1,
                    cutout_size=0.5)
    params = inspect.signature(augment.AugmentPipe.__init__).parameters
    assert list(params)[1:] == list(expected)
    assert {k: v.default for k, v in params.items() if k != 'self'} == expected
    pipe = augment.AugmentPipe(xflip=1, hue_max=np.float64(0.5))
    for name, value in expected.items():
        attr = getattr(pipe, name)
        assert type(attr) is (list if name == 'imgfilter_bands' else float), name
    assert pipe.xflip == 1.0 and pipe.hue_max == 0.5


def test_state_dict_names_shapes_and_filters():
    state = augment.AugmentPipe().state_dict()
    assert list(state) == ['p', 'Hz_geom', 'Hz_fbank']
    assert state['p'].shape == () and float(state['p']) == 1.0
    assert all(t.dtype == torch.float32 for t in state.values())

    # Hz_geom: the sym6 low-pass, 12 taps, normalised to sum 1 (kept 1-D: separable).
    sym6 = np.asarray(SYM6)
    assert state['Hz_geom'].shape == (12,)
    np.testing.assert_allclose(state['Hz_geom'].numpy(), sym6 / sym6.sum(), rtol=1e-6, atol=1e-8)
    assert abs(float(state['Hz_geom'].sum()) - 1) < 1e-6
    np.testing.assert_allclose(state['Hz_geom'][:3].numpy(), [0.010892, 0.002468, -0.083432], atol=1e-6)

    # Hz_fbank: built here another way (2-D scipy convolution, interleaving with dstack) from sym2.
    lo = np.asarray(SYM2)
    hi = lo * (-1) ** np.arange(4)
    lo2, hi2 = np.convolve(lo, lo[::-1]) / 2, np.convolve(hi, hi[::-1]) / 2
    bank = np.eye(4, 1)
    for i in range(1, 4):
        bank = np.dstack([bank, np.zeros_like(bank)]).reshape(4, -1)[:, :-1]
        bank = scipy.signal.convolve(bank, [lo2])
        mid = bank.shape[1] // 2
        bank[i, mid - 3:mid + 4] += hi2
    fb = state['Hz_fbank'].numpy()
    assert fb.shape == (4, 43)
    np.testing.assert_allclose(fb, bank, atol=1e-7)
    # The documented properties: symmetric rows, row sums [1, 0, 0, 0], centre column, row energies.
    np.testing.assert_allclose(fb, fb[:, ::-1], atol=1e-7)
    np.testing.assert_allclose(fb.sum(axis=1), [1, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(fb[:, 21], [0.125, 0.125, 0.25, 0.5], atol=1e-7)
    np.testing.assert_allclose((fb.astype(np.float64) ** 2).sum(axis=1), [0.100134, 0.061981, 0.131519, 0.410156],
                               atol=1e-6)


def test_upstream_record_loads_strictly():
    """An official pickle's AugmentPipe (init kwargs + the three buffers) converts into this class."""
    kwargs = dict(augment.augpipe_specs['bgc'])
    fb = augment.AugmentPipe().Hz_fbank.clone()
    state = {'training': True, '_parameters': {}, '_modules': {}, '_init_args': (), '_init_kwargs': kwargs,
             '_buffers': {'p': torch.tensor(0.125), 'Hz_geom': torch.tensor(SYM6, dtype=torch.float32) / sum(SYM6),
                          'Hz_fbank': fb}}
    pipe = legacy.convert_upstream_record(persistence.PersistentRecord('AugmentPipe', state))
    assert isinstance(pipe, augment.AugmentPipe)
    assert float(pipe.p) == 0.125 and pipe.xflip == 1.0 and pipe.imgfilter == 0.0
    wrong = dict(state, _buffers=dict(state['_buffers'], Hz_geom=torch.ones(8)))
    with pytest.raises(legacy.CheckpointError):
        legacy.convert_upstream_record(persistence.PersistentRecord('AugmentPipe', wrong))


def test_presets():
    blit, geom = {'xflip', 'rotate90', 'xint'}, {'scale', 'rotate', 'aniso', 'xfrac'}
    color = {'brightness', 'contrast', 'lumaflip', 'hue', 'saturation'}
    expected = {'blit': blit, 'geom': geom, 'color': color, 'filter': {'imgfilter'}, 'noise': {'noise'},
                'cutout': {'cutout'}, 'bg': blit | geom, 'bgc': blit | geom | color,
                'bgcf': blit | geom | color | {'imgfilter'}, 'bgcfn': blit | geom | color | {'imgfilter', 'noise'},
                'bgcfnc': blit | geom | color | {'imgfilter', 'noise', 'cutout'}}
    assert set(augment.augpipe_specs) == set(expected)
    for name, ops in expected.items():
        assert augment.augpipe_specs[name] == {op: 1 for op in ops}, name
        augment.AugmentPipe(**augment.augpipe_specs[name])  # valid keywords


# -------------------------------------------------------------------------------------------- identity


@pytest.mark.parametrize('preset', sorted(augment.augpipe_specs))
@pytest.mark.parametrize('channels', [1, 3])
def test_p0_is_exact_identity(preset, channels):
    x = _images(c=channels)
    y = _pipe(0.0, **augment.augpipe_specs[preset])(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, x)


def test_rng_draws_do_not_depend_on_p_or_debug():
    """Every enabled op draws for every sample whatever p is (and in debug mode), as upstream."""
    x = _images(c=3)
    states = []
    for p, dbg in [(0.0, None), (1.0, None), (0.3, None), (1.0, 0.7)]:
        torch.manual_seed(5)
        _pipe(p, **augment.augpipe_specs['bgcfnc'])(x, debug_percentile=dbg)
        states.append(torch.rand(4))
    for s in states[1:]:
        assert torch.equal(s, states[0])


@pytest.mark.parametrize('channels', [1, 3])
def test_rng_sequence_matches_upstream_order(channels):
    """Re-draw upstream's sequence (kind and count per op, magnitude before the apply-draw) and compare states."""
    n, c, h, w = 4, channels, 8, 8
    torch.manual_seed(11)
    _pipe(0.6, **augment.augpipe_specs['bgcfnc'])(_images(n, c, h, w))
    after = torch.rand(8)

    torch.manual_seed(11)
    seq = [('rand', [n]), ('rand', [n]),              # xflip
           ('rand', [n]), ('rand', [n]),              # rotate90
           ('rand', [n, 2]), ('rand', [n, 1]),        # xint
           ('randn', [n]), ('rand', [n]),             # scale
           ('rand', [n]), ('rand', [n]),              # pre-rotation
           ('randn', [n]), ('rand', [n]),             # aniso
           ('rand', [n]), ('rand', [n]),              # post-rotation
           ('randn', [n, 2]), ('rand', [n, 1]),       # xfrac
           ('randn', [n]), ('rand', [n]),             # brightness
           ('randn', [n]), ('rand', [n]),             # contrast
           ('rand', [n]), ('rand', [n])]              # lumaflip
    if channels > 1:
        seq += [('rand', [n]), ('rand', [n]), ('randn', [n]), ('rand', [n])]  # hue, saturation
    seq += [('randn', [n]), ('rand', [n])] * 4        # imgfilter, one pair per band
    seq += [('randn', [n]), ('rand', [n]), ('randn', [n, c, h, w])]  # noise
    seq += [('rand', [n]), ('rand', [n, 2])]          # cutout: apply-draw, then the centre
    for kind, shape in seq:
        getattr(torch, kind)(shape)
    assert torch.equal(torch.rand(8), after)


# ---------------------------------------------------------------------------------------- each op alone

def _geometric_bound():
    """|out| <= max|in| * (2 * max polyphase L1 of the upsampling taps * L1 of the downsampling taps)^2:
    upfirdn2d, reflect padding and bilinear grid_sample (convex weights, zero padding) are linear with these
    per-axis gains, so this holds for every transform."""
    f = np.asarray(SYM6) / sum(SYM6)
    up = 2 * max(np.abs(f[0::2]).sum(), np.abs(f[1::2]).sum())
    return (up * np.abs(f).sum()) ** 2


def _filter_bound(sigmas=6):
    """|out| <= (sum_j max|g_j| * L1(fbank row j))^2 with every band draw within +-6 sigma (t in [2^-6, 2^6])."""
    fb = augment.AugmentPipe().Hz_fbank.double().numpy()
    e = np.array([10, 1, 1, 1]) / 13
    t = 2.0 ** sigmas
    gmax = np.ones(4)
    for i in range(4):
        for j in range(4):
            gmax[j] *= t / np.sqrt(1 - e[i] + e[i] * t * t) if i == j else 1 / np.sqrt(1 - e[i] + e[i] / t / t)
    return ((gmax * np.abs(fb).sum(axis=1)).sum()) ** 2


# Bounds on |output| for inputs in [-1, 1] (random draws taken within 6 sigma; the tests are seeded):
BOUNDS = {
    **{op: _geometric_bound() for op in BLIT + GEOM},
    'brightness': 1 + 6 * 0.2,               # |x + b|, |b| <= 6 * brightness_std
    'contrast': 2 ** (6 * 0.5),              # |c x|, c <= 2^(6 * contrast_std)
    'lumaflip': np.sqrt(3) + 1e-5,           # orthogonal per-pixel map: |out| <= |rgb pixel| <= sqrt(3)
    'hue': np.sqrt(3) + 1e-5,                # rotation about the luma axis: same
    'saturation': 2 ** 6 * np.sqrt(3),       # singular values 1 and s <= 2^(6 * saturation_std)
    'imgfilter': _filter_bound(),
    'noise': 1 + 6 * (6 * 0.1),              # |x + n sigma|, |n| <= 6, sigma <= 6 * noise_std
    'cutout': 1.0,                           # pixels are kept or zeroed
}


@pytest.mark.parametrize('channels', [1, 3])
@pytest.mark.parametrize('op', ALL_OPS)
def test_single_op_at_p1(op, channels):
    x = _images(n=8, c=channels, h=16, w=16)
    torch.manual_seed(2)
    y = _pipe(1.0, **{op: 1})(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all()
    assert float(y.abs().max()) <= BOUNDS[op]
    if channels == 1 and op in ('hue', 'saturation'):
        assert torch.equal(y, x)  # need colour: skipped for one-channel images, as upstream
        return
    changed = (y - x).flatten(1).abs().max(dim=1).values > 1e-3
    assert changed.any(), f'{op} left all samples unchanged'
    if op == 'cutout':
        assert torch.all((y == x) | (y == 0))
    if op in ('lumaflip', 'hue') and channels == 3:  # orthogonal colour maps keep every pixel's norm
        torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=1e-5)
    if op in ('hue', 'saturation') and channels == 3:  # both fix the luma axis
        torch.testing.assert_close(y.mean(dim=1), x.mean(dim=1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels', [2, 4])
def test_other_channel_counts_run(channels):
    x = _images(c=channels, h=24, w=24)
    y = _pipe(1.0, **augment.augpipe_specs['bgcfnc'])(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # The colour stage treats each channel like a one-channel image: brightness shifts all channels alike.
    q = 0.8
    y = _pipe(1.0, brightness=1)(x, debug_percentile=q)
    torch.testing.assert_close(y - x, torch.full_like(x, _erfinv_quantile(q, 0.2)), rtol=0, atol=1e-6)
    # Hue and saturation are drawn (C > 1) but fix the luma axis, so they vanish on luma channels.
    torch.manual_seed(0)
    y = _pipe(1.0, hue=1, saturation=1)(x)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)


def test_rejects_bad_input():
    pipe = _pipe(1.0, xflip=1)
    with pytest.raises(ValueError):
        pipe(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError):
        pipe(torch.zeros(1, 3, 8, 8, dtype=torch.int64))


# --------------------------------------------------------------------------------------------- blitting

def _reflect_shift(img, tx, ty):
    """out[y, x] = img[y - ty, x - tx] with mirror (no edge repeat) continuation: numpy's pad + crop."""
    h, w = img.shape[-2:]
    padded = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(abs(ty), abs(ty)), (abs(tx), abs(tx))], mode='reflect')
    return padded[..., abs(ty) - ty: abs(ty) - ty + h, abs(tx) - tx: abs(tx) - tx + w]


def test_xint_debug_is_reflect_translation():
    x = _images(n=2, c=3, h=16, w=24)
    y = _pipe(1.0, xint=1)(x, debug_percentile=1.0)  # t = xint_max: (3, 2) pixels
    expected = _reflect_shift(x.numpy(), 3, 2)
    np.testing.assert_allclose(y.numpy(), expected, atol=2e-5)
    # Apart from the reflected border, the output holds exactly the input's values: a permutation.
    np.testing.assert_allclose(np.sort(y[..., 2:, 3:].numpy().ravel()), np.sort(x[..., :-2, :-3].numpy().ravel()),
                               atol=2e-5)
    y = _pipe(1.0, xint=1)(x, debug_percentile=0.0)  # -xint_max: (-3, -2)
    np.testing.assert_allclose(y.numpy(), _reflect_shift(x.numpy(), -3, -2), atol=2e-5)


def test_xint_random_draws():
    n, h, w, p = 8, 16, 12, 0.7
    x = _images(n=n, c=1, h=h, w=w)
    torch.manual_seed(3)
    y = _pipe(p, xint=1, xint_max=0.25)(x)
    torch.manual_seed(3)
    t = (torch.rand([n, 2]) * 2 - 1) * 0.25
    t = torch.where(torch.rand([n, 1]) < p, t, torch.zeros_like(t))
    tx, ty = torch.round(t[:, 0] * w).int().tolist(), torch.round(t[:, 1] * h).int().tolist()
    assert any(tx) and any(ty) and not all(tx)  # the seed covers moved and unmoved samples
    for i in range(n):
        np.testing.assert_allclose(y[i].numpy(), _reflect_shift(x[i].numpy(), tx[i], ty[i]), atol=2e-5)


def test_xflip_and_rotate90_random_draws():
    """Which samples get flipped / rotated by how much follows upstream's draws. Upstream resamples these through
    the sym6 up/down chain too; sym6 is not symmetric, so a mirrored image comes out ~0.1 px off (identity and
    translations are exact): compare on smooth images with a 0.15 px * max-gradient tolerance."""
    img, max_grad = _smooth_images(c=1)
    n, p = 16, 0.8
    x = img.expand(n, -1, -1, -1).contiguous()
    tol = 0.15 * max_grad
    for op, count, apply in [('xflip', 2, lambda a, i: np.flip(a, axis=-1) if i else a),
                             ('rotate90', 4, lambda a, i: np.rot90(a, k=i, axes=(-2, -1)))]:
        torch.manual_seed(1)
        y = _pipe(p, **{op: 1})(x)
        torch.manual_seed(1)
        i = torch.floor(torch.rand([n]) * count)
        i = torch.where(torch.rand([n]) < p, i, torch.zeros_like(i)).int().tolist()
        assert len(set(i)) == count  # every outcome occurs
        for k in range(n):
            expected = apply(x[k].numpy(), i[k])
            err = np.abs(y[k].numpy() - expected).max()
            assert err <= (3e-5 if i[k] == 0 else tol), (op, k, i[k], err)
            for other in range(count):  # ... and it is not any of the other outcomes
                if other != i[k]:
                    assert np.abs(y[k].numpy() - apply(x[k].numpy(), other)).max() > 4 * tol


def test_geometric_compositions():
    x = _images(n=2, c=3, h=16, w=16)
    # rotate90 by one quarter turn == general rotation by pi/2 (rotate_max=0.5 at the top percentile).
    a = _pipe(1.0, rotate90=1)(x, debug_percentile=0.3)
    b = _pipe(1.0, rotate=1, rotate_max=0.5)(x, debug_percentile=1.0)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # xflip + a half turn is a vertical flip, i.e. the x-flip of the transposed image, transposed back.
    v = _pipe(1.0, xflip=1, rotate90=1)(x, debug_percentile=0.5)
    t = _pipe(1.0, xflip=1)(x.transpose(2, 3), debug_percentile=0.5).transpose(2, 3)
    torch.testing.assert_close(v, t, rtol=0, atol=1e-5)
    # Four quarter turns bring a smooth image back.
    img, max_grad = _smooth_images()
    z = img
    for _ in range(4):
        z = _pipe(1.0, rotate90=1)(z, debug_percentile=0.3)
    assert float((z - img).abs().max()) <= 0.15 * max_grad
    # A fractional translation by a whole number of pixels is the integer translation.
    q = 0.9
    std = 2 / (16 * _erfinv_quantile(q, 1.0))  # t * W = 2 pixels in x and y
    y = _pipe(1.0, xfrac=1, xfrac_std=std)(x, debug_percentile=q)
    np.testing.assert_allclose(y.numpy(), _reflect_shift(x.numpy(), 2, 2), atol=1e-4)


def test_reflect_pad_matches_numpy_for_large_pads():
    x = _images(n=1, c=2, h=5, w=3)
    pad = [7, 2, 11, 4]  # left, right, top, bottom; larger than the image
    y = augment.reflect_pad(x, pad)
    expected = np.pad(x.numpy(), [(0, 0), (0, 0), (pad[2], pad[3]), (pad[0], pad[1])], mode='reflect')
    np.testing.assert_array_equal(y.numpy(), expected)


# ----------------------------------------------------------------------------------------------- colour


@pytest.mark.parametrize('channels', [1, 3])
def test_brightness_adds_the_drawn_constant(channels):
    x = _images(n=4, c=channels)
    for q in (0.1, 0.8):
        y = _pipe(1.0, brightness=1)(x, debug_percentile=q)
        b = _erfinv_quantile(q, 0.2)  # upstream: erfinv(2q - 1) * std, not norm.ppf(q) * std
        torch.testing.assert_close((y - x).mean(dim=[1, 2, 3]), torch.full([4], b), rtol=0, atol=1e-6)
        torch.testing.assert_close(y - x, torch.full_like(x, b), rtol=0, atol=1e-6)
    # Random draws: magnitude first, then the apply-draw; a constant shift per sample.
    torch.manual_seed(8)
    y = _pipe(0.5, brightness=1)(x)
    torch.manual_seed(8)
    b = torch.randn([4]) * 0.2
    b = torch.where(torch.rand([4]) < 0.5, b, torch.zeros_like(b))
    assert (b == 0).any() and (b != 0).any()
    torch.testing.assert_close(y - x, b.reshape(4, 1, 1, 1).expand_as(x), rtol=0, atol=1e-6)


def test_colour_debug_values_one_channel():
    x = _images(n=2, c=1)
    q = 0.7
    c = 2 ** _erfinv_quantile(q, 0.5)
    torch.testing.assert_close(_pipe(1.0, contrast=1)(x, debug_percentile=q), x * c, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_pipe(1.0, lumaflip=1)(x, debug_percentile=0.75), -x, rtol=0, atol=1e-6)
    torch.testing.assert_close(_pipe(1.0, lumaflip=1)(x, debug_percentile=0.25), x, rtol=0, atol=1e-6)


def _expected_colour(x, draws, channels):
    """Apply the per-sample colour transforms with numpy/scipy (independent of augment's matrix helpers)."""
    b, c, flip, theta, s = draws
    v = np.ones(3) / np.sqrt(3)
    out = []
    for k in range(x.shape[0]):
        m = np.eye(4)
        m = np.array([[1, 0, 0, b[k]], [0, 1, 0, b[k]], [0, 0, 1, b[k]], [0, 0, 0, 1]]) @ m
        m = np.diag([c[k], c[k], c[k], 1]) @ m
        m = np.block([[np.eye(3) - 2 * flip[k] * np.outer(v, v), np.zeros([3, 1])], [np.zeros([1, 3]), 1]]) @ m
        if channels == 3:
            rot = Rotation.from_rotvec(v * theta[k]).as_matrix()
            m = np.block([[rot, np.zeros([3, 1])], [np.zeros([1, 3]), 1]]) @ m
            sat = np.outer(v, v) + (np.eye(3) - np.outer(v, v)) * s[k]
            m = np.block([[sat, np.zeros([3, 1])], [np.zeros([1, 3]), 1]]) @ m
            out.append(np.einsum('ij,jhw->ihw', m[:3, :3], x[k]) + m[:3, 3, None, None])
        else:
            luma = m[:3].mean(axis=0)
            out.append(x[k] * luma[:3].sum() + luma[3])
    return np.stack(out)


@pytest.mark.parametrize('channels', [1, 3])
def test_colour_stage_matches_independent_matrices(channels):
    n, p = 8, 0.7
    x = _images(n=n, c=channels)
    torch.manual_seed(9)
    y = _pipe(p, **augment.augpipe_specs['color'])(x)
    torch.manual_seed(9)

    def keep(value, identity, shape=None):
        u = torch.rand(shape or [n])
        return torch.where(u < p, value, torch.full_like(value, identity)).flatten().double().numpy()

    b = keep(torch.randn([n]) * 0.2, 0)
    c = keep(torch.exp2(torch.randn([n]) * 0.5), 1)
    flip = keep(torch.floor(torch.rand([n, 1, 1]) * 2), 0, [n, 1, 1])
    theta = s = np.zeros(n)
    if channels == 3:
        theta = keep((torch.rand([n]) * 2 - 1) * np.pi, 0)
        s = keep(torch.exp2(torch.randn([n, 1, 1])), 1, [n, 1, 1])
    expected = _expected_colour(x.double().numpy(), (b, c, flip, theta, s), channels)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    seq = [('randn', n), ('rand', n)] * 2 + [('rand', n)] * 2  # brightness, contrast, lumaflip
    if channels == 3:
        seq += [('rand', n)] * 2 + [('randn', n), ('rand', n)]  # hue, saturation
    assert torch.equal(torch.rand(4), _rng_after(9, seq))


def _rng_after(seed, seq):
    torch.manual_seed(seed)
    for kind, size in seq:
        getattr(torch, kind)([size])
    return torch.rand(4)


# ---------------------------------------------------------------------------------- filter, noise, cutout


@pytest.mark.parametrize('channels', [1, 3])
def test_imgfilter_matches_scipy(channels):
    n, p, h, w = 4, 0.8, 12, 26  # smaller than the 43-tap filter: repeated mirroring, as numpy/scipy do
    bands = [1, 0.5, 1, 2]
    x = _images(n=n, c=channels, h=h, w=w)
    torch.manual_seed(10)
    y = _pipe(p, imgfilter=1, imgfilter_bands=bands)(x)
    torch.manual_seed(10)
    e = np.array([10, 1, 1, 1]) / 13
    g = np.ones([n, 4])
    for i, strength in enumerate(bands):
        t_i = torch.exp2(torch.randn([n]))
        t_i = torch.where(torch.rand([n]) < p * strength, t_i, torch.ones_like(t_i)).double().numpy()
        t = np.ones([n, 4])
        t[:, i] = t_i
        g *= t / np.sqrt((e * t ** 2).sum(axis=1, keepdims=True))
    taps = g @ augment.build_filter_bank(SYM2)
    for k in range(n):
        img = x[k].double().numpy()
        img = scipy.ndimage.convolve1d(img, taps[k], axis=-1, mode='mirror')
        img = scipy.ndimage.convolve1d(img, taps[k], axis=-2, mode='mirror')
        np.testing.assert_allclose(y[k].numpy(), img, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('channels', [1, 3])
def test_noise_matches_draws(channels):
    n, p = 6, 0.5
    x = _images(n=n, c=channels)
    torch.manual_seed(12)
    y = _pipe(p, noise=1)(x)
    torch.manual_seed(12)
    sigma = torch.randn([n, 1, 1, 1]).abs() * 0.1
    sigma = torch.where(torch.rand([n, 1, 1, 1]) < p, sigma, torch.zeros_like(sigma))
    assert (sigma == 0).any() and (sigma != 0).any()
    torch.testing.assert_close(y, x + torch.randn(x.shape) * sigma, rtol=0, atol=1e-6)
    # Debug mode: sigma = erfinv(q) * noise_std (a half-normal quantile); check the empirical std.
    q = 0.6
    xl = torch.zeros([4, channels, 32, 32])
    y = _pipe(1.0, noise=1)(xl, debug_percentile=q)
    expected = float(scipy.special.erfinv(q)) * 0.1
    assert abs(float(y.std()) / expected - 1) < 0.05


def test_cutout_debug_and_draws():
    x = _images(n=2, c=3, h=16, w=16)
    y = _pipe(1.0, cutout=1)(x, debug_percentile=0.5)  # centre (0.5, 0.5), side 0.5: pixels 4..11 zeroed
    mask = np.ones([16, 16])
    mask[4:12, 4:12] = 0
    np.testing.assert_array_equal(y.numpy(), x.numpy() * mask)

    n, p = 8, 0.6
    x = _images(n=n, c=1, h=10, w=20)
    torch.manual_seed(13)
    y = _pipe(p, cutout=1, cutout_size=0.3)(x)
    torch.manual_seed(13)
    size = torch.where(torch.rand([n]) < p, torch.full([n], 0.3), torch.zeros([n])).numpy()
    centre = torch.rand([n, 2]).numpy()
    assert (size == 0).any() and (size > 0).any()
    xs, ys = (np.arange(20) + 0.5) / 20, (np.arange(10) + 0.5) / 10
    for k in range(n):
        inside = (np.abs(xs[None, :] - centre[k, 0]) < size[k] / 2) & (np.abs(ys[:, None] - centre[k, 1]) < size[k] / 2)
        np.testing.assert_array_equal(y[k, 0].numpy(), np.where(inside, 0, x[k, 0].numpy()))


# ------------------------------------------------------------------------------------------ probabilities


def test_per_sample_probabilities():
    """P(applied) = multiplier * p per sample; rotation split into pre/post so that P(rotated) = rotate * p."""
    n = 2000
    torch.manual_seed(14)
    x = torch.zeros([n, 1, 1, 1])
    y = _pipe(0.6, brightness=0.5)(x)
    frac = float((y != 0).float().mean())
    assert abs(frac - 0.3) < 0.04
    x = _images(n=n, c=1, h=4, w=4)
    y = _pipe(0.8, rotate=0.5)(x)
    rotated = float(((y - x).flatten(1).abs().max(dim=1).values > 1e-4).float().mean())
    assert abs(rotated - 0.4) < 0.04


# -------------------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize('gradfix', [False, True])
@pytest.mark.parametrize('channels', [1, 3])
def test_r1_double_backward_through_bgc(channels, gradfix):
    torch.manual_seed(15)
    D = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3), torch.nn.LeakyReLU(0.2), torch.nn.Conv2d(4, 1, 3))
    pipe = _pipe(1.0, **augment.augpipe_specs['bgcfnc'])
    x = _images(n=4, c=channels).requires_grad_(True)
    old = conv2d_gradfix.enabled
    conv2d_gradfix.enabled = gradfix
    try:  # gradfix's Function runs on the reference ops (the CPU fast path uses PyTorch's convolution)
        with conv2d_gradfix.no_weight_gradients(gradfix), custom_ops.reference_ops(gradfix):
            g, = torch.autograd.grad(D(pipe(x)).sum(), x, create_graph=True)
        assert g.shape == x.shape and g.abs().sum() > 0
        g.square().sum().backward()
    finally:
        conv2d_gradfix.enabled = old
    # The penalty depends on the weights (the biases only shift activations: zero or no gradient).
    for param in (D[0].weight, D[2].weight):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


@pytest.mark.parametrize('op', [dict(rotate=1, scale=1, xfrac=1), dict(imgfilter=1),
                                dict(xflip=1, brightness=1, contrast=1, cutout=1)])
def test_gradcheck_float64(op):
    """For fixed draws the pipe is linear in the images; check its first and (for the warp) second derivatives
    numerically in float64."""
    pipe = _pipe(1.0, **op)
    x = _images(n=1, c=1, h=5, w=5, dtype=torch.float64).requires_grad_(True)

    def f(inp):
        torch.manual_seed(16)  # the same draws on every evaluation
        return pipe(inp)

    assert f(x).dtype == torch.float64 and not torch.allclose(f(x), x)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)
    if 'rotate' in op:
        assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-5, fast_mode=True)


# ------------------------------------------------------------------------------------------------ ADA


def test_adjust_p_hand_values():
    step = 32 * 4 / (500 * 1000)  # 2.56e-4
    assert augment.adjust_p(0.1, 0.7, 0.6, 32, 4, 500) == pytest.approx(0.100256, abs=1e-12)
    assert augment.adjust_p(0.1, 0.5, 0.6, 32, 4, 500) == pytest.approx(0.099744, abs=1e-12)
    assert augment.adjust_p(0.1, 0.6, 0.6, 32, 4, 500) == 0.1                      # sign(0) = 0
    assert augment.adjust_p(0.0001, -1.0, 0.6, 32, 4, 500) == 0.0                  # clamped at 0
    assert augment.adjust_p(1.0, 1.0, 0.6, 32, 4, 500) == pytest.approx(1 + step)  # no upper clamp
    assert augment.adjust_p(0.2, 0.9, 0.6, 16, 4, 100) == pytest.approx(0.20064)   # resume: ada_kimg = 100
    assert augment.adjust_p(0.2, float('nan'), 0.6, 16) == 0.2
    p = torch.tensor(0.5)
    q = augment.adjust_p(p, 0.9, 0.6, 64)
    assert isinstance(q, torch.Tensor) and float(q) == pytest.approx(0.5 + 64 * 4 / 500000)


def test_adaptive_p_updates_pipe_in_place():
    pipe = _pipe(0.0, xflip=1)
    ada = augment.AdaptiveP(batch_size=64, target=0.6, interval=4, ada_kimg=100)
    assert ada.due(8) and not ada.due(9)
    assert ada.update(pipe, 0.8) == pytest.approx(0.00256)
    assert ada.update(pipe, 0.8) == pytest.approx(0.00512)
    assert float(pipe.p) == pytest.approx(0.00512)
    for _ in range(5):
        ada.update(pipe, 0.1)
    assert float(pipe.p) == 0.0


# ---------------------------------------------------------------------------------------------- pickling


def test_pickle_roundtrip():
    pipe = _pipe(0.37, **augment.augpipe_specs['bgcfnc'], xint_max=0.2, imgfilter_bands=[1, 1, 0, 1])
    clone = pickle.loads(pickle.dumps(pipe))
    assert isinstance(clone, augment.AugmentPipe) and clone is not pipe
    assert float(clone.p) == pytest.approx(0.37) and clone.xint_max == 0.2 and clone.imgfilter_bands == [1, 1, 0, 1]
    assert clone.init_kwargs['imgfilter_bands'] == [1, 1, 0, 1]
    x = _images(c=3, h=24, w=24)
    torch.manual_seed(17)
    a = pipe(x)
    torch.manual_seed(17)
    b = clone(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
