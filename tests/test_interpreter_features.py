"""interpreter.feature_maps, feature_store, projection and ensemble: the dense reference, the native-resolution
gather and store, the first-layer projection and the fast ensemble against the dense reference, plus the vote,
uncertainty and score formulas.

The dense path (upsample every map, concatenate, run every model on every pixel) is the reference throughout.
"""

import feature_reference
import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn as nn
import torch.nn.functional as F

from interpreter import ensemble, feature_maps, feature_store, projection
from training import networks

PAPER256_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}
PAPER256 = [(c, r) for r, c in PAPER256_CHANNELS.items() for _ in range(2)]  # [x0_r, x_r] per block

SMALL_LAYOUTS = [
    ([(3, 4), (5, 4), (2, 8), (4, 16), (3, 32), (2, 32)], 32),  # generator-like, out_res = top resolution
    ([(3, 4), (2, 8), (4, 16)], 64),  # every map upsampled (no map at the output resolution)
    ([(3, 5), (2, 7), (4, 16), (2, 24)], 72),  # non-power-of-two ratios; 24 -> 72 is an odd integer factor (3)
    ([(6, 64), (3, 32), (2, 12)], 48),  # 64 -> 48 is a downsampling
    ([(2, 16), (3, 8), (2, 16)], 16),  # equal resolutions that are not adjacent
]


def generator(seed=0):
    torch.manual_seed(seed)
    return networks.Generator(z_dim=16, w_dim=16, c_dim=0, img_resolution=32, img_channels=3,
                              mapping_kwargs=dict(num_layers=2),
                              synthesis_kwargs=dict(channel_base=512, channel_max=32)).eval()


def generator_features(G, seed):
    z = torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ws = G.mapping(z, None)
        img, nir, feats = G.synthesis(ws, noise_mode='const', return_features=True)
    return feats


@pytest.fixture(scope='module')
def tiny_G():
    return generator(0)


def random_maps(layout, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn([c, r, r], generator=g, dtype=dtype) * scale for c, r in layout]


def border_and_random_pixels(out_res, n=300, seed=0):
    """Corners, edges and random interior pixels (flat indices)."""
    last = out_res - 1
    edges = []
    for t in (0, 1, out_res // 2, last - 1, last):
        edges += [(0, t), (last, t), (t, 0), (t, last)]
    fixed = torch.tensor([y * out_res + x for y, x in edges])
    rand = torch.randint(0, out_res * out_res, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.cat([fixed, rand])


def classifier(dim, num_class, hidden=(16, 8), seed=0, dtype=torch.float32, first_std=None):
    """A stand-in with the layout of the originals' pixel classifier: Linear, ReLU, BN, Linear, ReLU, BN, Linear,
    with non-trivial BatchNorm running statistics (eval mode). Linear weights ~ N(0, 1/fan_in) (the first layer's
    std is ``first_std`` when given)."""
    g = torch.Generator().manual_seed(seed)
    h1, h2 = hidden
    layers = nn.Sequential(nn.Linear(dim, h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2), nn.ReLU(),
                           nn.BatchNorm1d(h2), nn.Linear(h2, num_class))
    with torch.no_grad():
        for mod in layers:
            if isinstance(mod, nn.Linear):
                std = first_std if first_std is not None and mod is layers[0] else mod.in_features ** -0.5
                mod.weight.copy_(torch.randn(mod.weight.shape, generator=g) * std)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
            elif isinstance(mod, nn.BatchNorm1d):
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) * 0.5)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.weight.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.num_features, generator=g) * 0.2)
    return layers.to(dtype).eval()


class Wrapped(nn.Module):
    """A model that keeps its Sequential as ``.layers``, like the project's PixelClassifier."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        return self.layers(x)


# ------------------------------------------------------------------------------------------------ upsampling


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
def test_upsample_size_equals_scale_factor_for_power_of_two_ratios(mode):
    g = torch.Generator().manual_seed(0)
    for res in (4, 8, 32, 64):
        x = torch.randn([1, 3, res, res], generator=g)
        for out in (res * 2, res * 8, 256):
            kwargs = dict(align_corners=False) if mode == 'bilinear' else {}
            original = nn.Upsample(scale_factor=out / res, mode=mode, **kwargs)(x)
            ours = feature_maps.upsample_to(x, out, mode)
            assert ours.shape == original.shape
            assert torch.equal(ours, original), (res, out)
    assert feature_maps.upsample_to(x[0], 64, mode).shape == (3, 64, 64)  # CHW in, CHW out
    with pytest.raises(ValueError):
        feature_maps.upsample_to(x, 64, 'bicubic')


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
@pytest.mark.parametrize('in_res,out_res', [(4, 256), (5, 12), (7, 7), (24, 72), (64, 48), (3, 10), (16, 17)])
def test_source_taps_reproduce_interpolate(mode, in_res, out_res):
    x = torch.randn([1, 2, in_res, in_res], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    u = torch.from_numpy(feature_maps.interp_matrix(in_res, out_res, mode, np.float64))
    ours = torch.einsum('yi,ncij,xj->ncyx', u, x, u)
    ref = feature_maps.upsample_to(x, out_res, mode)
    assert torch.allclose(ours, ref, rtol=0, atol=1e-12)
    i0, i1, w0, w1 = feature_maps.source_taps(in_res, out_res, mode)
    assert i0.min() >= 0 and i1.max() <= in_res - 1 and np.allclose(w0 + w1, 1)


def test_dense_features_order_and_rows():
    layout = [(3, 4), (2, 8), (4, 16)]
    maps = random_maps(layout)
    dense = feature_maps.dense_features(maps, 16)
    assert dense.shape == (256, 9) and dense.dtype == torch.float32
    assert feature_maps.feature_layout(maps) == layout
    assert feature_maps.total_channels(maps) == 9 == feature_maps.total_channels(layout)
    col = 0
    for f in maps:
        up = feature_maps.upsample_to(f, 16)
        for y, x in [(0, 0), (3, 11), (15, 15), (9, 0)]:
            assert torch.equal(dense[y * 16 + x, col:col + f.shape[0]], up[:, y, x])
        col += f.shape[0]
    # [1, C, r, r] maps (the generator's output) are the same sample
    assert torch.equal(feature_maps.dense_features([f[None] for f in maps], 16), dense)
    with pytest.raises(ValueError):
        feature_maps.dense_features([torch.zeros(2, 3, 4, 4)], 8)  # two samples
    with pytest.raises(ValueError):
        feature_maps.dense_features([torch.zeros(3, 4, 5)], 8)  # not square


# ---------------------------------------------------------------------------------------------------- gather


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
@pytest.mark.parametrize('layout,out_res', SMALL_LAYOUTS)
def test_gather_equals_dense_rows(mode, layout, out_res):
    maps = random_maps(layout, seed=3, dtype=torch.float64)
    dense = feature_maps.dense_features(maps, out_res, mode, dtype=torch.float64)
    pixels = border_and_random_pixels(out_res)
    rows = feature_reference.gather_features(maps, pixels, out_res, mode, dtype=torch.float64)
    assert rows.shape == (len(pixels), feature_maps.total_channels(layout))
    assert torch.allclose(rows, dense[pixels], rtol=0, atol=1e-12)
    # float32 agrees to float rounding
    maps32 = [m.float() for m in maps]
    rows32 = feature_reference.gather_features(maps32, pixels, out_res, mode)
    ref32 = feature_maps.dense_features(maps32, out_res, mode)[pixels]
    assert (rows32 - ref32).abs().max().item() <= 1e-6 * ref32.abs().max().item()


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
@pytest.mark.parametrize('out_res', [32, 64, 16])
def test_gather_on_generator_features(tiny_G, mode, out_res):
    feats = generator_features(tiny_G, seed=4)
    assert len(feats) == 8 and all(f.shape[0] == 1 for f in feats)
    dense = feature_maps.dense_features(feats, out_res, mode)
    pixels = border_and_random_pixels(out_res, n=400, seed=2)
    rows = feature_reference.gather_features(feats, pixels, out_res, mode)
    scale = dense.abs().max().item()
    assert (rows - dense[pixels]).abs().max().item() <= 1e-6 * scale


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
def test_native_store_gathers_dense_rows(tiny_G, mode):
    samples = [generator_features(tiny_G, seed=s) for s in range(3)]
    out_res = 32
    dense = [feature_maps.dense_features(f, out_res, mode) for f in samples]
    scale = max(d.abs().max().item() for d in dense)
    for capacity in (None, 3, 2):  # joined on first gather / preallocated / outgrown preallocation
        store = feature_store.NativeFeatureStore(out_res=out_res, mode=mode, capacity=capacity)
        for f in samples:
            store.add(f)
        assert len(store) == 3 and store.total_channels == dense[0].shape[1]
        sample = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(0))
        pixel = torch.randint(0, out_res * out_res, (500,), generator=torch.Generator().manual_seed(1))
        expected = torch.stack([dense[s][p] for s, p in zip(sample.tolist(), pixel.tolist())])
        got = store.gather(sample, pixel)
        assert got.dtype == torch.float32 and (got - expected).abs().max().item() <= 1e-6 * scale
        assert torch.equal(store.gather_flat(sample * out_res * out_res + pixel), got)
        edge = border_and_random_pixels(out_res, n=0)
        assert (store.gather(2, edge) - dense[2][edge]).abs().max().item() <= 1e-6 * scale
    # A later add after gathering is joined too.
    store.add(samples[0])
    assert (store.gather(3, edge) - dense[0][edge]).abs().max().item() <= 1e-6 * scale
    with pytest.raises(IndexError):
        store.gather(4, edge)
    with pytest.raises(IndexError):
        store.gather(0, torch.tensor([out_res * out_res]))
    with pytest.raises(ValueError):
        store.add(samples[0][:-1])  # another layout


def test_native_store_float16_and_size():
    layout = [(3, 4), (5, 4), (2, 8), (4, 16), (3, 32), (2, 32)]
    samples = [random_maps(layout, seed=s, scale=50.0) for s in range(2)]
    store32 = feature_store.NativeFeatureStore.from_samples(samples, out_res=32)
    store16 = feature_store.NativeFeatureStore.from_samples(samples, out_res=32, dtype=torch.float16)
    values = sum(c * r * r for c, r in layout)
    assert store32.nbytes == 2 * values * 4 == feature_store.NativeFeatureStore.bytes_for(layout, 2)
    assert store16.nbytes == 2 * values * 2 == feature_store.NativeFeatureStore.bytes_for(layout, 2, torch.float16)
    pixels = border_and_random_pixels(32)
    exact = store32.gather(1, pixels)
    half = store16.gather(1, pixels)
    assert half.dtype == torch.float32
    # each gathered value is within 2^-11 of the largest magnitude among the stored values it blends
    bound = 2.0 ** -11 * exact.abs().max().item()
    err = (half - exact).abs().max().item()
    assert 0 < err <= bound
    # paper256 at 8 samples: ~0.5 GB in float32 (16.07 M values per sample), not 2.6e9 values
    assert feature_maps.total_channels(PAPER256) == 4992
    assert feature_store.NativeFeatureStore.bytes_for(PAPER256, 8) == 8 * 16_072_704 * 4
    assert 0.5e9 < feature_store.NativeFeatureStore.bytes_for(PAPER256, 8) < 0.52e9


# --------------------------------------------------------------------------------------- first-layer projection


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
@pytest.mark.parametrize('layout,out_res', SMALL_LAYOUTS)
def test_first_layer_projection_equals_linear_on_dense(mode, layout, out_res):
    dim = feature_maps.total_channels(layout)
    g = torch.Generator().manual_seed(5)
    maps = random_maps(layout, seed=6, dtype=torch.float64)
    weight = torch.randn([11, dim], generator=g, dtype=torch.float64)
    bias = torch.randn([11], generator=g, dtype=torch.float64)
    ref = (feature_maps.dense_features(maps, out_res, mode, torch.float64) @ weight.T
           + bias).T.reshape(11, out_res, out_res)
    for band_rows in (1, 5, out_res):  # bands that do and do not divide the output
        out = projection.first_layer_projection(maps, weight, bias, out_res, mode, band_rows=band_rows)
        assert out.shape == (11, out_res, out_res) and out.dtype == torch.float64
        assert (out - ref).abs().max().item() <= 1e-10 * ref.abs().max().item()
    no_bias = projection.first_layer_projection(maps, weight, None, out_res, mode)
    assert (no_bias + bias[:, None, None] - ref).abs().max().item() <= 1e-10 * ref.abs().max().item()
    # float32: float rounding only
    maps32, w32, b32 = [m.float() for m in maps], weight.float(), bias.float()
    ref32 = (feature_maps.dense_features(maps32, out_res, mode) @ w32.T + b32).T.reshape(11, out_res, out_res)
    out32 = projection.first_layer_projection(maps32, w32, b32, out_res, mode)
    assert (out32 - ref32).abs().max().item() <= 1e-5 * ref32.abs().max().item()


def test_first_layer_projection_generator_features(tiny_G):
    feats = generator_features(tiny_G, seed=7)
    layer = nn.Linear(feature_maps.total_channels(feats), 24)
    for out_res in (32, 64):
        with torch.no_grad():
            ref = layer(feature_maps.dense_features(feats, out_res)).T.reshape(24, out_res, out_res)
            out = projection.first_layer_projection(feats, layer.weight, layer.bias, out_res)
        assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    with pytest.raises(ValueError):
        projection.first_layer_projection(feats, layer.weight[:, :-1], None, 32)  # D does not match


# ------------------------------------------------------------------------------------------------ the ensemble


def compare_fast_dense(models, maps, out_res, mode='bilinear', prob_atol=1e-5, **kwargs):
    dense = ensemble.EnsemblePredictor(models, out_res, mode, fast=False, keep_mean_prob=True,
                                       keep_model_probs=True)(maps)
    fast = ensemble.EnsemblePredictor(models, out_res, mode, fast=True, keep_mean_prob=True, keep_model_probs=True,
                                      **kwargs)(maps)
    assert fast.labels.shape == (out_res, out_res) and fast.labels.dtype == torch.int64
    assert fast.js.shape == (out_res, out_res) and fast.js.dtype == torch.float32
    assert fast.model_probs.shape == dense.model_probs.shape == (len(models), out_res, out_res,
                                                                 dense.mean_prob.shape[-1])
    assert (fast.model_probs - dense.model_probs).abs().max().item() <= prob_atol
    assert (fast.mean_prob - dense.mean_prob).abs().max().item() <= prob_atol
    assert (fast.js - dense.js).abs().max().item() <= 20 * prob_atol
    assert abs(fast.score - dense.score) <= 20 * prob_atol * max(1.0, abs(dense.score))
    agree = (fast.labels == dense.labels).float().mean().item()
    return fast, dense, agree


@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
@pytest.mark.parametrize('gen_seed', [0, 1])
def test_fast_ensemble_matches_dense_on_tiny_generators(mode, gen_seed):
    G = generator(gen_seed)
    for sample, out_res in [(0, 32), (1, 64), (2, 16)]:
        feats = generator_features(G, seed=10 * gen_seed + sample)
        dim = feature_maps.total_channels(feats)
        models = [classifier(dim, 5, seed=100 * gen_seed + k) for k in range(5)]
        models[1] = Wrapped(models[1])  # .layers is used
        for kwargs in (dict(), dict(models_per_pass=3, chunk=100), dict(models_per_pass=1, chunk=1)):
            fast, dense, agree = compare_fast_dense(models, feats, out_res, mode, **kwargs)
            assert agree == 1.0, (out_res, kwargs, agree)
            assert len(torch.unique(dense.labels)) > 1  # a non-trivial segmentation


def test_statistics_do_not_depend_on_passes_or_reduction_chunks(monkeypatch):
    """The logits are reduced pass by pass, in chunks of pixels: any grouping gives the same results."""
    layout = [(3, 4), (2, 8), (4, 16)]
    maps = random_maps(layout, seed=13, dtype=torch.float64)
    models = [classifier(9, 5, seed=k, dtype=torch.float64) for k in range(5)]
    kwargs = dict(keep_mean_prob=True, keep_model_probs=True, chunk=48)
    reference = ensemble.EnsemblePredictor(models, 16, fast=False, **kwargs)(maps)
    monkeypatch.setattr(ensemble, '_STATS_CHUNK', 7)  # 256 pixels in 37 chunks, the last one short
    for fast, per_pass in ((True, 1), (True, 2), (True, 5), (False, None)):
        other = ensemble.EnsemblePredictor(models, 16, fast=fast, models_per_pass=per_pass, **kwargs)(maps)
        assert torch.equal(other.labels, reference.labels)
        assert (other.model_probs - reference.model_probs).abs().max().item() <= 1e-12
        assert (other.mean_prob - reference.mean_prob).abs().max().item() <= 1e-12
        assert (other.js - reference.js).abs().max().item() <= 1e-6
        assert abs(other.score - reference.score) <= 1e-9


def test_fast_ensemble_float64_is_exact_to_rounding():
    layout = [(3, 4), (5, 4), (2, 8), (4, 16), (3, 24), (2, 24), (4, 48)]
    maps = random_maps(layout, seed=8, dtype=torch.float64)
    models = [classifier(feature_maps.total_channels(layout), 4, seed=k, dtype=torch.float64) for k in range(3)]
    fast, dense, agree = compare_fast_dense(models, maps, 48, prob_atol=1e-12, models_per_pass=2, chunk=200)
    assert agree == 1.0


def test_fast_ensemble_runs_any_sequential():
    """Modules the fast path cannot fold (here GELU, a bias-free Linear, BatchNorm without running stats) run as
    themselves; a model that is a single Linear works too."""
    layout = [(4, 4), (3, 8), (2, 16)]
    maps = random_maps(layout, seed=9)
    dim = feature_maps.total_channels(layout)
    torch.manual_seed(0)
    odd = nn.Sequential(nn.Linear(dim, 12), nn.GELU(), nn.Linear(12, 6, bias=False), nn.Tanh(), nn.Linear(6, 3))
    no_stats = nn.Sequential(nn.Linear(dim, 8), nn.ReLU(), nn.BatchNorm1d(8, track_running_stats=False),
                             nn.Linear(8, 3))
    single = nn.Sequential(nn.Linear(dim, 3))
    dropout = nn.Sequential(nn.Linear(dim, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    fast, dense, agree = compare_fast_dense([odd, no_stats, single, dropout, classifier(dim, 3)], maps, 16)
    assert agree == 1.0
    with pytest.raises(TypeError):
        ensemble.EnsemblePredictor([nn.Sequential(nn.ReLU(), nn.Linear(dim, 3))], 16)
    with pytest.raises(ValueError):
        ensemble.EnsemblePredictor([classifier(dim, 3)], 16)(maps[:-1])  # D does not match
    with pytest.raises(ValueError):
        ensemble.EnsemblePredictor([classifier(dim, 3)], 16, mode='area')


def test_fast_ensemble_matches_dense_on_paper256_layout():
    """The real layout (14 maps, 4992 channels) at 256x256 with two classifiers of the originals' shape
    (4992 -> 128 -> 32 -> 4, first-layer weights N(0, 0.02) as their init). The dense reference needs a 1.3 GB
    matrix once (two models, not ten, to keep the test at a few seconds)."""
    maps = random_maps(PAPER256, seed=11)
    assert feature_maps.total_channels(maps) == 4992
    models = [classifier(4992, 4, hidden=(128, 32), seed=k, first_std=0.02) for k in range(2)]
    fast, dense, agree = compare_fast_dense(models, maps, 256, prob_atol=2e-5)
    assert agree >= 0.999, agree
    assert len(torch.unique(dense.labels)) == 4


# ------------------------------------------------------------------------------------- vote, js and score


def label_models(label_maps, num_class):
    """Models whose argmax is the given label map: the features hold one logit block per model (one-hot x 5), and
    model m's only layer copies block m."""
    M, R, _ = label_maps.shape
    feats = F.one_hot(label_maps, num_class).permute(0, 3, 1, 2).reshape(M * num_class, R, R).float() * 5
    models = []
    for m in range(M):
        lin = nn.Linear(M * num_class, num_class)
        with torch.no_grad():
            lin.weight.zero_()
            lin.weight[:, m * num_class:(m + 1) * num_class] = torch.eye(num_class)
            lin.bias.zero_()
        models.append(nn.Sequential(lin))
    return [feats], models


@pytest.mark.parametrize('fast', [True, False])
def test_majority_vote_breaks_ties_like_scipy_mode(fast):
    R = 8
    g = torch.Generator().manual_seed(0)
    label_maps = torch.randint(0, 4, (4, R, R), generator=g)
    # hand-made rows: 2-2 ties, a 3-way vote, all different (4-way tie), unanimous
    label_maps[:, 0, 0] = torch.tensor([3, 1, 3, 1])  # tie 1/3 -> 1
    label_maps[:, 0, 1] = torch.tensor([2, 0, 0, 2])  # tie 0/2 -> 0
    label_maps[:, 0, 2] = torch.tensor([3, 2, 1, 0])  # all differ -> 0
    label_maps[:, 0, 3] = torch.tensor([3, 3, 2, 3])  # majority 3
    label_maps[:, 0, 4] = torch.tensor([2, 3, 3, 2])  # tie 2/3 -> 2
    feats, models = label_models(label_maps, 4)
    result = ensemble.EnsemblePredictor(models, R, fast=fast)(feats)
    expected = scipy.stats.mode(label_maps.numpy(), axis=0, keepdims=False).mode
    assert np.array_equal(result.labels.numpy(), expected)
    assert result.labels[0, :5].tolist() == [1, 0, 0, 3, 2]


@pytest.mark.parametrize('fast', [True, False])
def test_js_map_and_score_against_numpy(fast):
    layout = [(3, 4), (2, 8), (4, 16)]
    maps = random_maps(layout, seed=12, dtype=torch.float64, scale=3.0)
    models = [classifier(9, 5, seed=k, dtype=torch.float64) for k in range(4)]
    for top_fraction in (0.1, 0.25, 0.0):
        result = ensemble.EnsemblePredictor(models, 16, fast=fast, keep_mean_prob=True, keep_model_probs=True,
                                      top_fraction=top_fraction)(maps)
        x = feature_maps.dense_features(maps, 16, dtype=torch.float64)
        with torch.no_grad():
            p = np.stack([torch.softmax(m(x), 1).numpy() for m in models])  # [M, HW, C]
        mean = p.mean(0)
        entropy = lambda q: -(q * np.log(q)).sum(-1)  # noqa: E731
        js = entropy(mean) - entropy(p).mean(0)
        assert np.abs(result.js.numpy().reshape(-1) - js).max() <= 1e-6
        k = int(js.size * top_fraction)
        top = np.sort(js)[-k:] if k else js
        assert abs(result.score - top.mean()) <= 1e-6
        assert np.abs(result.mean_prob.numpy().reshape(-1, 5) - mean).max() <= 1e-12
        assert np.abs(result.model_probs.numpy().reshape(4, -1, 5) - p).max() <= 1e-12
        assert result.js.min() >= -1e-6  # the JS divergence is non-negative
    # identical models: no disagreement, no uncertainty
    same = ensemble.EnsemblePredictor([models[0]] * 3, 16, fast=fast)(maps)
    assert same.js.abs().max().item() <= 1e-6 and abs(same.score) <= 1e-6
