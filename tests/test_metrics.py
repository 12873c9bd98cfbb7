"""Metrics: the formulas against independent references, feature statistics and their cache, the per-modality
end-to-end path with a tiny TorchScript detector, a tiny generator and a tiny paired dataset, detector errors, the
multi-process split, and the calc_metrics.py command line. Nothing is downloaded."""

import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

import dnnlib
from conftest import REPO
from metrics import (
    frechet_inception_distance,
    inception_score,
    kernel_inception_distance,
    metric_main,
    metric_utils,
    precision_recall,
)
from training import legacy, networks

TINY_G = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=128, channel_max=16))
NUM_FEATURES = 12
LOADER = dict(num_workers=0)  # in-process, so that __getitem__ calls can be counted

# ------------------------------------------------------------------------------------------ test doubles


class TinyPairs(torch.utils.data.Dataset):
    """Stand-in for training.dataset.PairedImageDataset: deterministic random uint8 RGB+NIR pairs at 16x16."""

    calls = 0  # __getitem__ calls over all instances

    def __init__(self, path, resolution=None, use_labels=False, max_size=None, xflip=False, random_seed=0, size=32):
        rnd = np.random.RandomState(int(str(path).rsplit('seed', 1)[-1] or 0))
        self.rgb = rnd.randint(0, 256, size=[size, 3, 16, 16]).astype(np.uint8)
        self.nir = np.clip(rnd.normal(90, 20, size=[size, 1, 16, 16]), 0, 255).astype(np.uint8)
        self.labels = np.eye(2, dtype=np.float32)[np.arange(size) % 2]
        self.has_labels = bool(use_labels)
        self.name = 'tinypairs'
        self.resolution = 16
        self.size = size if max_size is None else min(size, max_size)

    @property
    def label_dim(self):
        return 2 if self.has_labels else 0

    def get_label(self, idx):
        return self.labels[idx] if self.has_labels else np.zeros([0], np.float32)

    def __len__(self):
        return self.size

    def __getitem__(self, idx):
        type(self).calls += 1
        return self.rgb[idx], self.nir[idx], self.get_label(idx)


class TinyDetector(torch.nn.Module):
    """A fixed linear projection of 4x4 average-pooled pixels; softmax of it for no_output_bias (IS)."""

    def __init__(self):
        super().__init__()
        self.register_buffer('proj', torch.randn([3 * 4 * 4, NUM_FEATURES], generator=torch.Generator().manual_seed(5)))

    def forward(self, x, return_features: bool = False, no_output_bias: bool = False):
        x = F.adaptive_avg_pool2d(x.to(torch.float32) / 255, 4).flatten(1)
        features = x @ self.proj
        if return_features:
            return features
        return torch.softmax(features, dim=1)


class ReplayG(torch.nn.Module):
    """Returns the dataset's own pairs in order, encoded so that the metric's uint8 conversion restores them."""

    def __init__(self, dataset):
        super().__init__()
        self.z_dim, self.c_dim, self.img_resolution, self.img_channels, self.nir_channels = 8, 0, 16, 3, 1
        self.rgb = torch.from_numpy(dataset.rgb.astype(np.float32))
        self.nir = torch.from_numpy(dataset.nir.astype(np.float32))
        self.pos = 0

    calls = 0  # forward calls over all copies (the metric works on a deep copy)

    def forward(self, z, c, **kwargs):
        type(self).calls += 1
        idx = (torch.arange(z.shape[0]) + self.pos) % self.rgb.shape[0]
        self.pos += z.shape[0]
        return (self.rgb[idx] + 0.5 - 128) / 127.5, (self.nir[idx] + 0.5 - 128) / 127.5


DATASET = dict(class_name=f'{__name__}.TinyPairs', path='tiny-seed0')


@pytest.fixture(scope='module')
def detector_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp('detectors')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        scripted = torch.jit.script(TinyDetector().eval())
    for name in ('inception-2015-12-05.pt', 'vgg16.pt'):
        scripted.save(str(folder / name))
    return str(folder)


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / 'dnnlib-cache'
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(root))
    for name in ('BIGAN_DETECTOR_DIR', 'BIGAN_INCEPTION_URL', 'BIGAN_VGG16_URL'):
        monkeypatch.delenv(name, raising=False)
    return root


@pytest.fixture(scope='module')
def tiny_G():
    torch.manual_seed(0)
    return networks.Generator(**TINY_G).eval()


def _stats_files(cache_root):
    folder = cache_root / 'gan-metrics'
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------ formulas


def _reference_fid(x, y):
    """FID from raw samples with the symmetric form Tr((S1^1/2 S2 S1^1/2)^1/2), all float64."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    root1 = scipy.linalg.sqrtm(s1).real
    cross = scipy.linalg.sqrtm(root1 @ s2 @ root1).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(cross))


def test_frechet_distance_matches_float64_reference():
    rnd = np.random.RandomState(1)
    x = rnd.randn(200, 16) @ rnd.randn(16, 16) * 0.5 + 0.3
    y = rnd.randn(200, 16) @ rnd.randn(16, 16) * 0.7 - 0.1
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    fid = frechet_inception_distance.frechet_distance(mu1, s1, mu2, s2)
    assert fid == pytest.approx(_reference_fid(x, y), rel=1e-8)
    assert frechet_inception_distance.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_diagonal_closed_form():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()  # = 5 + 4 + 1 + 0
    assert frechet_inception_distance.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    assert expected == pytest.approx(10.0)


def _reference_mmd(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written as explicit pair sums."""
    m, d = x.shape
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_matches_direct_formula():
    rnd = np.random.RandomState(2)
    real, gen = rnd.randn(24, 6), rnd.randn(24, 6) + 0.4
    kid = kernel_inception_distance.kernel_inception_distance(real, gen, num_subsets=1, max_subset_size=24)
    assert kid == pytest.approx(_reference_mmd(gen, real), rel=1e-10)


def test_kid_subsets_follow_upstream_sampling():
    rnd = np.random.RandomState(3)
    real, gen = rnd.randn(30, 5), rnd.randn(40, 5) * 1.3
    kid = kernel_inception_distance.kernel_inception_distance(real, gen, num_subsets=3, max_subset_size=10,
                                                              rng=np.random.RandomState(7))
    draw = np.random.RandomState(7)
    expected = []
    for _ in range(3):  # generated rows are drawn first, then real rows, each without replacement
        x = gen[draw.choice(40, 10, replace=False)]
        y = real[draw.choice(30, 10, replace=False)]
        expected.append(_reference_mmd(x, y))
    assert kid == pytest.approx(np.mean(expected), rel=1e-10)


def test_kid_near_zero_for_same_distribution_positive_when_shifted():
    rnd = np.random.RandomState(4)
    a, b = rnd.randn(300, 8), rnd.randn(300, 8)
    same = kernel_inception_distance.kernel_inception_distance(a, b, num_subsets=5, max_subset_size=300)
    identical = kernel_inception_distance.kernel_inception_distance(a, a, num_subsets=1, max_subset_size=300)
    shifted = kernel_inception_distance.kernel_inception_distance(a, b + 1.0, num_subsets=5, max_subset_size=300)
    assert shifted > 0.1
    assert abs(same) < 0.02 * shifted and abs(identical) < 0.02 * shifted


def _reference_pr(real, gen, k):
    def radii(points):
        d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    def coverage(probes, manifold):
        d = np.sqrt(((probes[:, None, :] - manifold[None, :, :]) ** 2).sum(-1))
        return float((d <= radii(manifold)[None, :]).any(axis=1).mean())

    return coverage(gen, real), coverage(real, gen)


def test_precision_recall_brute_force_identical_and_disjoint():
    rnd = np.random.RandomState(5)
    real = rnd.randn(60, 7).astype(np.float32)
    gen = (rnd.randn(50, 7) * 1.5 + 0.7).astype(np.float32)
    expected = _reference_pr(real.astype(np.float64), gen.astype(np.float64), k=3)
    assert 0 < expected[0] < 1 and 0 < expected[1] < 1
    got = precision_recall.precision_recall(torch.from_numpy(real), torch.from_numpy(gen), nhood_size=3)
    assert got == pytest.approx(expected, abs=1e-6)  # exact counts; the mean is float32
    # Small row/column batches merge the running k-NN radii and coverage flags to the same numbers.
    got_batched = precision_recall.precision_recall(torch.from_numpy(real), torch.from_numpy(gen), nhood_size=3,
                                                    row_batch_size=7, col_batch_size=5)
    assert got_batched == got
    assert precision_recall.precision_recall(torch.from_numpy(real), torch.from_numpy(real)) == (1.0, 1.0)
    far = torch.from_numpy(real) + 1000
    assert precision_recall.precision_recall(torch.from_numpy(real), far, col_batch_size=16) == (0.0, 0.0)


def test_inception_score_known_values():
    probs = np.eye(5)[np.arange(50) % 5]  # confident and spread over 5 classes in every split
    mean, std = inception_score.inception_score(probs, num_splits=10)
    assert mean == pytest.approx(5.0) and std == pytest.approx(0.0, abs=1e-12)
    mean, _ = inception_score.inception_score(np.full([40, 7], 1 / 7), num_splits=4)
    assert mean == pytest.approx(1.0)


def test_feature_stats_mean_cov_truncation_and_file_roundtrip(tmp_path):
    rnd = np.random.RandomState(6)
    x = rnd.randn(50, 4).astype(np.float32)
    stats = metric_utils.FeatureStats(capture_all=True, capture_mean_cov=True, max_items=45)
    for start in range(0, 50, 8):
        stats.append(x[start:start + 8])
    assert stats.is_full() and stats.num_items == 45
    np.testing.assert_array_equal(stats.get_all(), x[:45])
    mean, cov = stats.get_mean_cov()
    x64 = x[:45].astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x64, rowvar=False, bias=True), rtol=1e-9, atol=1e-12)
    stats.save(tmp_path / 's.npz')
    loaded = metric_utils.FeatureStats.load(tmp_path / 's.npz')
    np.testing.assert_array_equal(loaded.get_all(), stats.get_all())
    np.testing.assert_array_equal(loaded.get_mean_cov()[1], cov)
    assert loaded.max_items == 45 and loaded.num_items == 45
    assert os.listdir(tmp_path) == ['s.npz']  # no temporary left behind


def test_uint8_conversion_and_channel_repeat():
    x = torch.tensor([-1.0, -0.9999, 0.0, 1.0, 2.0]).reshape(1, 1, 1, 5)
    assert metric_utils.to_uint8(x).flatten().tolist() == [0, 0, 128, 255, 255]
    grey = torch.arange(4, dtype=torch.uint8).reshape(1, 1, 2, 2)
    rgb = metric_utils.to_three_channels(grey)
    assert rgb.shape == (1, 3, 2, 2) and all(torch.equal(rgb[:, i], grey[:, 0]) for i in range(3))


# ------------------------------------------------------------------------------------------ end to end


def _calc(metric, G, detector_dir, **kwargs):
    kwargs = dict(dict(dataset_kwargs=DATASET, device='cpu', detector_dir=detector_dir, num_gen=32, seed=1,
                       data_loader_kwargs=LOADER), **kwargs)
    return metric_main.calc_metric(metric, G=G, **kwargs)


def test_fid_per_modality_with_cached_dataset_statistics(tiny_G, detector_dir, cache_root):
    TinyPairs.calls = 0
    first = _calc('fid50k_full', tiny_G, detector_dir)
    assert set(first.results) == {'fid50k_full', 'fid50k_full_nir'}
    rgb, nir = first.results.fid50k_full, first.results.fid50k_full_nir
    assert math.isfinite(rgb) and math.isfinite(nir) and rgb > 0 and nir > 0
    assert abs(rgb - nir) > 1e-3 * max(rgb, nir)
    assert first.metric == 'fid50k_full' and first.num_gpus == 1 and isinstance(first.total_time_str, str)
    assert TinyPairs.calls == 32  # one pass reads both halves of every pair
    files = _stats_files(cache_root)
    assert len(files) == 2 and any('-rgb-' in f for f in files) and any('-nir-' in f for f in files)
    assert all(f.startswith('tinypairs-inception-2015-12-05-') and f.endswith('.npz') for f in files)

    second = _calc('fid50k_full', tiny_G, detector_dir)  # same seed: same latents, cached real statistics
    assert TinyPairs.calls == 32
    assert second.results == pytest.approx(first.results, rel=1e-6)

    _calc('fid50k_full', tiny_G, detector_dir, cache=False)
    assert TinyPairs.calls == 64 and len(_stats_files(cache_root)) == 2
    _calc('fid50k_full', tiny_G, detector_dir, max_real=16)  # a different real count is a different key
    assert TinyPairs.calls == 80 and len(_stats_files(cache_root)) == 4


def test_fid_of_real_images_against_themselves_is_zero(detector_dir, cache_root):
    replay = ReplayG(TinyPairs('tiny-seed0'))
    ReplayG.calls = 0
    result = _calc('fid50k_full', replay, detector_dir, cache=False)
    assert ReplayG.calls == 8  # 32 pairs in sub-batches of 4; each call gives both modalities
    assert result.results.fid50k_full == pytest.approx(0, abs=1e-6)
    assert result.results.fid50k_full_nir == pytest.approx(0, abs=1e-6)
    other = _calc('fid50k_full', replay, detector_dir, cache=False, dataset_kwargs=dict(DATASET, path='tiny-seed9'))
    assert other.results.fid50k_full > 1e-3 and other.results.fid50k_full_nir > 1e-3


def test_kid_pr_is_end_to_end_with_conditional_generator(detector_dir, cache_root, monkeypatch):
    torch.manual_seed(1)
    G = networks.Generator(**dict(TINY_G, c_dim=2)).eval()
    monkeypatch.setenv('BIGAN_DETECTOR_DIR', detector_dir)  # found through the environment this time
    labelled = dict(DATASET, use_labels=True)
    with pytest.raises(ValueError, match='use_labels'):
        _calc('kid50k_full', G, None)
    kid = _calc('kid50k_full', G, None, dataset_kwargs=labelled)
    pr = _calc('pr50k3_full', G, None, dataset_kwargs=labelled)
    is50k = _calc('is50k', G, None, dataset_kwargs=labelled)
    assert set(kid.results) == {'kid50k_full', 'kid50k_full_nir'}
    assert set(pr.results) == {'pr50k3_full_precision', 'pr50k3_full_recall', 'pr50k3_full_precision_nir',
                               'pr50k3_full_recall_nir'}
    assert set(is50k.results) == {'is50k_mean', 'is50k_std', 'is50k_mean_nir', 'is50k_std_nir'}
    for result in (kid, pr, is50k):
        assert all(math.isfinite(v) for v in result.results.values())
    assert all(0 <= v <= 1 for v in pr.results.values())
    assert is50k.results.is50k_mean >= 1
    names = _stats_files(cache_root)
    assert any(n.startswith('tinypairs-vgg16-') for n in names) and any('inception' in n for n in names)


def test_single_branch_generator_reports_rgb_only(detector_dir, cache_root):
    torch.manual_seed(2)
    G = networks.Generator(**TINY_G, nir_channels=0).eval()
    result = _calc('fid10k_full', G, detector_dir)
    assert set(result.results) == {'fid10k_full'}


def test_report_metric_appends_json_lines(tmp_path, capsys):
    result = dnnlib.EasyDict(results=dnnlib.EasyDict(fid50k_full=1.5, fid50k_full_nir=2.5), metric='fid50k_full',
                             total_time=1.0, total_time_str='1s', num_gpus=1)
    for _ in range(2):
        metric_main.report_metric(result, run_dir=str(tmp_path), snapshot_pkl=str(tmp_path / 'network-snapshot-1.pkl'))
    lines = (tmp_path / 'metric-fid50k_full.jsonl').read_text().splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert record['results'] == {'fid50k_full': 1.5, 'fid50k_full_nir': 2.5}
    assert record['snapshot_pkl'] == 'network-snapshot-1.pkl' and 'timestamp' in record
    assert json.loads(capsys.readouterr().out.splitlines()[0])['metric'] == 'fid50k_full'
    assert metric_main.is_valid_metric('fid10k_full') and not metric_main.is_valid_metric('fid')
    assert {'fid50k_full', 'fid10k_full', 'fid50k', 'kid50k_full', 'kid50k', 'pr50k3_full', 'is50k'} <= set(
        metric_main.list_valid_metrics())
    with pytest.raises(ValueError, match='unknown metric'):
        metric_main.calc_metric('fid', G=None)


# ------------------------------------------------------------------------------------------ detector errors


def _assert_one_line(exc, *needles):
    text = str(exc)
    assert '\n' not in text
    for needle in needles:
        assert needle in text, f'{needle!r} not in {text!r}'


def test_missing_detector_file_names_file_and_place(tmp_path, cache_root, tiny_G):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(metric_utils.DetectorUnavailable) as info:
        _calc('fid50k_full', tiny_G, str(empty))
    _assert_one_line(info.value, 'inception-2015-12-05.pt', str(empty / 'inception-2015-12-05.pt'))
    assert isinstance(info.value, RuntimeError)

    with pytest.raises(metric_utils.DetectorUnavailable) as info:
        metric_utils.get_feature_detector(str(tmp_path / 'nowhere' / 'inception-2015-12-05.pt'))
    _assert_one_line(info.value, 'inception-2015-12-05.pt', str(tmp_path / 'nowhere'))

    bad = tmp_path / 'bad'
    bad.mkdir()
    (bad / 'vgg16.pt').write_bytes(b'not a torchscript archive')
    with pytest.raises(metric_utils.DetectorUnavailable) as info:
        metric_utils.get_feature_detector(metric_utils.VGG16_URL, detector_dir=str(bad))
    _assert_one_line(info.value, 'vgg16.pt')


def test_unreachable_detector_url_says_where_to_put_the_file(cache_root, monkeypatch, tiny_G):
    monkeypatch.setattr(dnnlib.util, '_RETRY_DELAY_S', 0.0)
    with pytest.raises(metric_utils.DetectorUnavailable) as info:
        metric_utils.get_feature_detector('http://127.0.0.1:9/x.pt')
    _assert_one_line(info.value, 'x.pt', str(cache_root / 'downloads'))
    monkeypatch.setenv('BIGAN_INCEPTION_URL', 'http://127.0.0.1:9/x.pt')
    with pytest.raises(metric_utils.DetectorUnavailable) as info:
        _calc('fid50k_full', tiny_G, None)
    _assert_one_line(info.value, 'inception-2015-12-05.pt', str(cache_root / 'downloads'))


# ------------------------------------------------------------------------------------------ several processes


def _distributed_worker(rank, init_file, detector_dir, out_dir):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    torch.set_num_threads(1)
    opts = metric_utils.MetricOptions(G=ReplayG(TinyPairs('tiny-seed0')), dataset_kwargs=DATASET, num_gpus=2,
                                      rank=rank, device='cpu', cache=False, detector_dir=detector_dir,
                                      data_loader_kwargs=LOADER)
    stats = metric_utils.compute_feature_stats_for_dataset(opts, metric_utils.INCEPTION_URL,
                                                           dict(return_features=True), capture_all=True, max_items=31)
    real = stats['rgb'].get_all()
    gen = np.random.RandomState(0).randn(23, NUM_FEATURES).astype(np.float32)
    pr = precision_recall.precision_recall(torch.from_numpy(real), torch.from_numpy(gen), row_batch_size=8,
                                           col_batch_size=4, num_gpus=2, rank=rank)
    np.savez(os.path.join(out_dir, f'rank{rank}.npz'), real=real, nir=stats['nir'].get_all(), pr=np.array(pr))
    torch.distributed.destroy_process_group()


def test_two_processes_match_one(tmp_path, detector_dir, cache_root):
    torch.multiprocessing.spawn(_distributed_worker, args=(str(tmp_path / 'init'), detector_dir, str(tmp_path)),
                                nprocs=2)
    opts = metric_utils.MetricOptions(dataset_kwargs=DATASET, device='cpu', cache=False, detector_dir=detector_dir,
                                      data_loader_kwargs=LOADER)
    stats = metric_utils.compute_feature_stats_for_dataset(opts, metric_utils.INCEPTION_URL,
                                                           dict(return_features=True), capture_all=True, max_items=31)
    gen = np.random.RandomState(0).randn(23, NUM_FEATURES).astype(np.float32)
    pr = precision_recall.precision_recall(stats['rgb'].get_all_torch(), torch.from_numpy(gen))
    for rank in range(2):
        got = np.load(tmp_path / f'rank{rank}.npz')
        assert got['real'].shape == (31, NUM_FEATURES)
        np.testing.assert_allclose(got['real'], stats['rgb'].get_all(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got['nir'], stats['nir'].get_all(), rtol=1e-6, atol=1e-6)
        assert tuple(got['pr']) == pytest.approx(pr, abs=1e-12)


# ------------------------------------------------------------------------------------------ command line


def _cli(args, capsys):
    import calc_metrics
    with pytest.raises(SystemExit) as info:
        calc_metrics.cli(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return info.value.code, captured.err.strip().splitlines()


def test_calc_metrics_missing_network_exits_2():
    proc = subprocess.run([sys.executable, str(REPO / 'calc_metrics.py'), '--network', 'no/such/network.pkl'],
                          capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and 'no/such/network.pkl' in lines[0]


def _tiny_pkl(tmp_path):
    G = networks.Generator(**TINY_G).eval()
    D = networks.Discriminator(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
                               epilogue_kwargs=dict(mbstd_group_size=2))
    pkl = tmp_path / 'network-snapshot-000000.pkl'
    legacy.save_network_pkl(str(pkl), dict(G=G, D=D, G_ema=G, training_set_kwargs=dict(DATASET)))
    return pkl


def test_calc_metrics_bad_input_one_line(tmp_path, capsys, detector_dir, cache_root):
    pkl = _tiny_pkl(tmp_path)
    for args, needle in [
        (['--network', str(pkl), '--metrics', 'fid50k_full,nope'], "unknown metric 'nope'"),
        (['--network', str(pkl), '--gpus', '0'], '--gpus'),
        (['--network', str(pkl), '--gpus', 'x'], '--gpus'),
        (['--metrics', 'fid50k_full'], '--network'),
        (['--network', str(pkl), '--data', str(tmp_path / 'missing')], 'missing'),
        (['--network', str(pkl), '--detector-dir', str(tmp_path)], 'inception-2015-12-05.pt'),
    ]:
        code, err = _cli(args, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith('error: ') and needle in err[0], (args, err)
    code, err = _cli(['--network', str(pkl), '--metrics', 'none', '--verbose', 'false'], capsys)
    assert code in (0, None) and err == []


def test_calc_metrics_under_torchrun_takes_its_world_size(tmp_path, capsys, cache_root, monkeypatch):
    pkl = _tiny_pkl(tmp_path)
    for name, value in dict(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1', LOCAL_WORLD_SIZE='1').items():
        monkeypatch.setenv(name, value)
    code, err = _cli(['--network', str(pkl), '--metrics', 'none', '--gpus', '2'], capsys)
    assert code == 2 and err == ["error: --gpus 2 disagrees with torchrun's world size 1; leave --gpus out"]
    code, err = _cli(['--network', str(pkl), '--metrics', 'none', '--verbose', 'false'], capsys)
    assert code in (0, None) and err == []
