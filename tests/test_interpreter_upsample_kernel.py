"""interpreter.upsample_kernel: the C kernel behind the fast mask generator on CPU, against float64 references
built from PyTorch's own interpolation, and the fallback to the PyTorch path when it cannot be built."""

import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from interpreter import ensemble, feature_maps, projection
from interpreter import upsample_kernel as uk
from torch_utils import c_kernel, custom_ops

HAVE_CC = shutil.which('cc') is not None or shutil.which('gcc') is not None
needs_kernel = pytest.mark.skipif(not HAVE_CC, reason='no C compiler on this machine')


@pytest.fixture(scope='module')
def lib():
    if not HAVE_CC:
        pytest.skip('no C compiler on this machine')
    if custom_ops.reference_ops_forced():
        pytest.skip(f'{custom_ops.FORCE_REF_ENV} is set: the kernel is switched off')
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a failed build on a machine with a compiler is a failure here
        library = uk.get()
    assert library is not None
    return library


def upsampled_sum_reference(P_list, out_res, mode, rows):
    """float64: sum_k interpolate(P_k) for output rows ``rows``, pixel-major [len(rows) * R, h]."""
    total = 0
    for P in P_list:
        chw = P.double().permute(2, 0, 1)[None]
        if mode == 'bilinear':
            up = F.interpolate(chw, size=(out_res, out_res), mode='bilinear', align_corners=False)
        else:
            up = F.interpolate(chw, size=(out_res, out_res), mode='nearest')
        total = total + up[0].permute(1, 2, 0)[rows]
    return total.reshape(-1, P_list[0].shape[-1])


CASES = [  # resolutions of the maps, output resolution, hidden width
    ([4, 8, 16, 32, 64, 128], 256, 128),  # paper256's low resolutions: the 8-accumulator path
    ([3, 5, 7, 16, 24], 72, 11),  # non-integer ratios; 11 = one 8-wide block + a scalar tail
    ([64, 12], 48, 72),  # a downsampling (64 -> 48) and a 64 + 8 channel split
    ([2], 9, 1),  # one channel: scalar code only
    ([8, 8, 4], 16, 136),  # repeated resolutions; 136 = 2 x 64 + 8
]


@needs_kernel
@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
@pytest.mark.parametrize('res,out_res,hidden', CASES)
def test_band_accumulator_matches_pytorch_interpolation(lib, mode, res, out_res, hidden):
    g = torch.Generator().manual_seed(len(res) * 31 + hidden)
    P_list = [torch.randn([r, r, hidden], generator=g) for r in res]
    sources = [(P, feature_maps.source_taps(r, out_res, mode, np.float32)) for P, r in zip(P_list, res)]
    acc = uk.BandAccumulator(lib, sources, out_res, hidden, threads=2)
    bias = torch.randn([hidden], generator=g)
    scale = sum(P.abs().max().item() for P in P_list)
    for y0, rows in [(0, out_res), (0, 1), (out_res - 3, 3), (out_res // 2, min(5, out_res - out_res // 2))]:
        ref = upsampled_sum_reference(P_list, out_res, mode, slice(y0, y0 + rows))
        prior = torch.randn([rows * out_res, hidden], generator=g)
        # accumulate onto what the band holds
        band = prior.clone()
        acc(band, y0, rows)
        assert (band.double() - (prior.double() + ref)).abs().max().item() <= 1e-5 * (scale + 4)
        # overwrite, with bias and ReLU
        band = prior.clone()
        acc(band, y0, rows, bias=bias, accumulate=False, relu=True)
        expected = (ref + bias.double()).clamp(min=0)
        assert (band.double() - expected).abs().max().item() <= 1e-5 * (scale + 4)
        assert (band >= 0).all()


@needs_kernel
def test_band_accumulator_thread_count_does_not_change_the_result(lib):
    g = torch.Generator().manual_seed(3)
    res, out_res, hidden = [4, 16, 32], 64, 24
    P_list = [torch.randn([r, r, hidden], generator=g) for r in res]
    sources = [(P, feature_maps.source_taps(r, 64, 'bilinear', np.float32)) for P, r in zip(P_list, res)]
    outs = []
    for threads in (1, 2, 3):
        band = torch.zeros([7 * out_res, hidden])
        uk.BandAccumulator(lib, sources, out_res, hidden, threads=threads)(band, 10, 7)
        outs.append(band)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])  # rows are independent


@needs_kernel
def test_band_accumulator_rejects_bad_arguments(lib):
    P = torch.zeros([4, 4, 8])
    acc = uk.BandAccumulator(lib, [(P, feature_maps.source_taps(4, 16, 'bilinear', np.float32))], 16, 8)
    with pytest.raises(RuntimeError, match='rejected'):
        acc(torch.zeros([2 * 16, 8]), 15, 2)  # rows past the image
    with pytest.raises(ValueError, match='band'):
        acc(torch.zeros([2 * 16, 8], dtype=torch.float64), 0, 2)
    with pytest.raises(ValueError, match='bias'):
        acc(torch.zeros([2 * 16, 8]), 0, 2, bias=torch.zeros(7))
    with pytest.raises(ValueError, match='contiguous float32'):
        uk.BandAccumulator(lib, [(P.double(), feature_maps.source_taps(4, 16, 'bilinear', np.float32))], 16, 8)
    with pytest.raises(ValueError, match='taps'):
        uk.BandAccumulator(lib, [(P, feature_maps.source_taps(4, 15, 'bilinear', np.float32))], 16, 8)


@needs_kernel
def test_transpose_into(lib):
    g = torch.Generator().manual_seed(4)
    src = torch.randn([37, 13, 11], generator=g)  # C = 37 (not a tile multiple), N = 143
    dst = torch.full([143, 50], 7.0)
    uk.transpose_into(lib, src, dst, 5, threads=2)
    assert torch.equal(dst[:, 5:42], src.reshape(37, -1).t())
    assert (dst[:, :5] == 7).all() and (dst[:, 42:] == 7).all()  # the other columns are untouched
    with pytest.raises(ValueError):
        uk.transpose_into(lib, src, dst, 20)  # columns past the end


# ------------------------------------------------------------------------------ the plan with and without kernel


PAPER256_LOW = [(c, r) for r, c in {4: 512, 8: 512, 16: 512, 32: 512}.items() for _ in range(2)]


@needs_kernel
@pytest.mark.parametrize('mode', ['bilinear', 'nearest'])
def test_projection_with_and_without_kernel_match_float64_dense(lib, mode):
    layout = [(3, 4), (5, 4), (2, 8), (4, 16), (3, 32), (2, 32), (6, 64), (4, 64)]
    g = torch.Generator().manual_seed(8)
    maps = [torch.randn([c, r, r], generator=g) for c, r in layout]
    weight = torch.randn([20, feature_maps.total_channels(layout)], generator=g)
    bias = torch.randn([20], generator=g)
    ref = (feature_maps.dense_features([m.double() for m in maps], 64, mode, torch.float64) @ weight.double().T
           + bias.double()).T.reshape(20, 64, 64)
    tol = 1e-5 * ref.abs().max().item()
    for use_kernel in (True, False):
        for band_rows in (1, 7, 64):
            out = projection.first_layer_projection(maps, weight, bias, 64, mode, band_rows=band_rows,
                                                    use_kernel=use_kernel)
            assert (out.double() - ref).abs().max().item() <= tol, (use_kernel, band_rows)


@needs_kernel
def test_predictor_uses_the_kernel_where_it_can(lib):
    layout = [(6, 4), (4, 8), (3, 16)]
    maps = [torch.randn([c, r, r]) for c, r in layout]
    model = torch.nn.Sequential(torch.nn.Linear(13, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    auto = ensemble.EnsemblePredictor([model], 16)
    auto(maps)
    assert auto._plan.kernel is not None
    assert len(auto._passes) == 1 and len(auto._passes[0][0].members) == 1  # one model: one pass
    off = ensemble.EnsemblePredictor([model], 16, use_kernel=False)
    off(maps)
    assert off._plan.kernel is None
    with custom_ops.reference_ops():  # BIGAN_REF_OPS / reference_ops() turn it off too
        forced = ensemble.EnsemblePredictor([model], 16)
        forced(maps)
        assert forced._plan.kernel is None
        with pytest.raises(RuntimeError, match='not available'):
            ensemble.EnsemblePredictor([model], 16, use_kernel=True)(maps)
    with pytest.raises(ValueError, match='float32'):
        ensemble.EnsemblePredictor([model.double()], 16, use_kernel=True)([m.double() for m in maps])
    # models per pass by default: 2 with the kernel, 1 without
    models = [torch.nn.Sequential(torch.nn.Linear(13, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)) for _ in range(3)]
    with_kernel = ensemble.EnsemblePredictor(models, 16)
    with_kernel(maps)
    assert [len(p[0].members) for p in with_kernel._passes] == [2, 1]
    without = ensemble.EnsemblePredictor(models, 16, use_kernel=False)
    without(maps)
    assert [len(p[0].members) for p in without._passes] == [1, 1, 1]
    a, b = with_kernel(maps), without(maps)
    assert torch.equal(a.labels, b.labels) and abs(a.score - b.score) <= 1e-5


# ---------------------------------------------------------------------------------------- building and fallback


def forget_build(monkeypatch):
    monkeypatch.setattr(uk.KERNEL, '_tried', False)
    monkeypatch.setattr(uk.KERNEL, '_lib', None)


def fresh_state(monkeypatch, tmp_path):
    forget_build(monkeypatch)
    monkeypatch.setenv('TORCH_EXTENSIONS_DIR', str(tmp_path))
    monkeypatch.delenv(custom_ops.FORCE_REF_ENV, raising=False)


def test_without_a_compiler_the_predictor_falls_back_with_one_warning(monkeypatch, tmp_path):
    fresh_state(monkeypatch, tmp_path)
    monkeypatch.setenv('CC', str(tmp_path / 'no-such-compiler'))
    with pytest.warns(RuntimeWarning, match='no C compiler'):
        assert uk.get() is None
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert uk.get() is None  # remembered: no second warning, no second attempt
    layout = [(6, 4), (4, 8), (3, 16)]
    maps = [torch.randn([c, r, r]) for c, r in layout]
    model = torch.nn.Sequential(torch.nn.Linear(13, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    fast = ensemble.EnsemblePredictor([model], 16)
    out = fast(maps)
    assert fast._plan.kernel is None
    dense = ensemble.EnsemblePredictor([model], 16, fast=False)(maps)
    assert torch.equal(out.labels, dense.labels)


def test_a_failing_build_falls_back(monkeypatch, tmp_path):
    fresh_state(monkeypatch, tmp_path)
    fake = tmp_path / 'fakecc'
    fake.write_text('#!/bin/sh\n[ "$1" = "--version" ] && { echo fakecc 1.0; exit 0; }\necho "error: broken" >&2\n'
                    'exit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv('CC', str(fake))
    with pytest.warns(RuntimeWarning, match='failed: error: broken'):
        assert uk.get() is None
    assert not list(tmp_path.rglob('*.so'))  # nothing half-written
    assert not list(tmp_path.rglob('*.tmp'))


@needs_kernel
def test_build_is_cached_by_source_compiler_and_cpu(monkeypatch, tmp_path):
    fresh_state(monkeypatch, tmp_path)
    assert uk.get() is not None
    built = list(tmp_path.rglob('upsample_accumulate.so'))
    assert len(built) == 1
    mtime = built[0].stat().st_mtime_ns
    # a second process (fresh state) reuses the build instead of compiling again
    forget_build(monkeypatch)
    calls = []
    real_run = c_kernel.subprocess.run

    def spy(cmd, *args, **kwargs):
        calls.append(cmd)
        return real_run(cmd, *args, **kwargs)
    monkeypatch.setattr(c_kernel.subprocess, 'run', spy)
    assert uk.get() is not None
    assert all('--version' in c for c in calls)  # only the compiler's version was asked for
    assert built[0].stat().st_mtime_ns == mtime
    # another CPU signature is another build folder
    forget_build(monkeypatch)
    monkeypatch.setattr(c_kernel, 'cpu_signature', lambda: 'some other cpu')
    assert uk.get() is not None
    assert len(list(tmp_path.rglob('upsample_accumulate.so'))) == 2


@needs_kernel
def test_an_unwritable_cache_builds_privately(monkeypatch, tmp_path):
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('')
    fresh_state(monkeypatch, blocker / 'cache')  # makedirs under a file fails
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        library = uk.get()
    assert library is not None and library.bigan_kernel_abi() == uk.ABI
    band = torch.zeros([16, 1])
    taps = feature_maps.source_taps(2, 16, 'bilinear', np.float32)
    acc = uk.BandAccumulator(library, [(torch.ones([2, 2, 1]), taps)], 16, 1)
    acc(band, 0, 1)
    assert torch.allclose(band, torch.ones_like(band))  # the private build works
