"""The Semantic Mask Generator end to end on a tiny generator: masks made by a fixed rule from its generated NIR
images, 8 annotated samples, an ensemble trained on them must label held-out samples well (learnability); then
dataset generation through the CLI, its resumption, sharding and uncertainty filtering."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO, assert_proc_error
from interpreter import config as config_module
from interpreter import ensemble, generate, train
from interpreter import latents as latents_module
from training import legacy, networks

RES = 32
# Bars, measured with this untrained generator: pixel accuracy on the annotated samples ~0.86, held-out mean IoU
# ~0.48. A random generator's features generalise across samples far less than a trained one's, so the held-out bar
# sits above chance (~0.33 for three balanced classes, ~0.12 for always guessing one class) rather than high.
TRAIN_ACC_BAR = 0.75
IOU_BAR = 0.4


def _nir_rule(nir, thresholds):
    """The 'annotator': three classes from two fixed NIR levels."""
    return (nir > thresholds[0]).astype(np.uint8) + (nir > thresholds[1]).astype(np.uint8)


def _nir_images(G, z, cfg):
    ws = latents_module.z_to_ws(G, z, psi=cfg.truncation_psi, cutoff=cfg.truncation_cutoff, device='cpu')
    _, nir = latents_module.synthesize(G, ws, noise_mode=cfg.noise_mode)
    return nir[:, 0].numpy()


def _mean_iou(pred, truth, num_class):
    ious = []
    for c in range(num_class):
        union = np.logical_or(pred == c, truth == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, truth == c).sum() / union)
    return float(np.mean(ious))


@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp('interpreter')
    torch.manual_seed(0)
    G = networks.Generator(z_dim=16, w_dim=16, c_dim=0, img_resolution=RES, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=512, channel_max=32))
    G.eval().requires_grad_(False)
    with torch.no_grad():  # an unmodulated NIR head makes the NIR a fixed function of the features, as in a
        for name, param in G.named_parameters():  # trained generator whose features carry the semantics
            if '.tonir.affine.weight' in name:
                param.zero_()
    D = networks.Discriminator(c_dim=0, img_resolution=RES, img_channels=3, channel_base=512, channel_max=32)
    legacy.save_network_pkl(root / 'G.pkl', dict(G=G, D=D, G_ema=G))
    channels = sum(f.shape[1] for f in G.synthesis(G.mapping(torch.zeros(1, 16)), return_features=True)[2])
    exp = root / 'exp'
    (exp / 'annotations').mkdir(parents=True)
    cfg_dict = dict(exp_dir=str(exp), dim=[RES, RES, channels], stylegan_checkpoint=str(root / 'G.pkl'),
                    stylegan_ver='2', number_class=3, max_training=8, model_num=2, batch_size=64,
                    upsample_mode='bilinear', annotation_mask_path='annotations',
                    annotation_image_latent_path='annotations/latent_stylegan.npy', max_epochs=6,
                    early_stop_epoch=2, log_every=100000, checkpoint_every=0, uncertainty_portion=0.25)
    cfg_path = exp / 'train_datagan.json'
    cfg_path.write_text(json.dumps(cfg_dict))
    cfg = config_module.load_config(str(cfg_path), check_files=False)  # the annotation files come next

    z = np.random.RandomState(1).randn(8, 16)
    nir = _nir_images(G, z, cfg)
    thresholds = np.quantile(nir, [0.35, 0.7])
    np.save(exp / 'annotations' / 'latent_stylegan.npy', z)
    for i, img in enumerate(nir):
        np.save(exp / 'annotations' / f'image_mask{i}.npy', _nir_rule(img, thresholds))
    return dict(root=root, exp=exp, cfg_path=cfg_path, cfg=cfg, G=G, thresholds=thresholds)


def test_trained_ensemble_labels_held_out_samples(experiment):
    cfg = experiment['cfg']
    paths = train.train_ensemble(cfg, device='cpu', progress=False, log=lambda *_: None)
    assert len(paths) == 2 and all(p.endswith(f'model_{k}.pth') for k, p in enumerate(paths))
    assert (experiment['exp'] / 'train_data.jpg').is_file()

    from interpreter import classifier
    models = classifier.load_ensemble(cfg.exp_dir, cfg.model_num)
    G = experiment['G']
    z = np.random.RandomState(99).randn(6, 16)  # not among the annotated samples
    truth = _nir_rule(_nir_images(G, z, cfg), experiment['thresholds'])
    fast = ensemble.EnsemblePredictor(models, out_res=RES, mode='bilinear', fast=True)
    dense = ensemble.EnsemblePredictor(models, out_res=RES, mode='bilinear', fast=False)
    annotated = np.load(experiment['exp'] / 'annotations' / 'latent_stylegan.npy')
    accuracy = []
    for i in range(len(annotated)):
        ws = latents_module.z_to_ws(G, annotated[i:i + 1], psi=cfg.truncation_psi, cutoff=cfg.truncation_cutoff)
        feats = [f[0] for f in latents_module.synthesize(G, ws, noise_mode='const', return_features=True)[2]]
        mask = np.load(experiment['exp'] / 'annotations' / f'image_mask{i}.npy')
        labels = np.asarray(fast(feats).labels)
        accuracy.append((labels == mask).mean())
    assert np.mean(accuracy) > TRAIN_ACC_BAR, f'accuracy on the annotated samples {np.mean(accuracy):.3f}'
    ious = []
    for i in range(len(z)):
        ws = latents_module.z_to_ws(G, z[i:i + 1], psi=cfg.truncation_psi, cutoff=cfg.truncation_cutoff)
        feats = [f[0] for f in latents_module.synthesize(G, ws, noise_mode='const', return_features=True)[2]]
        result = fast(feats)
        reference = dense(feats)
        assert (np.asarray(result.labels) == np.asarray(reference.labels)).mean() >= 0.999
        assert result.score == pytest.approx(reference.score, rel=1e-3, abs=1e-6)
        ious.append(_mean_iou(np.asarray(result.labels), truth[i], 3))
    assert np.mean(ious) > IOU_BAR, f'held-out mean IoU {np.mean(ious):.3f}'

    # A second run keeps the trained models (resumable at model granularity).
    before = [open(p, 'rb').read() for p in paths]
    train.train_ensemble(cfg, device='cpu', progress=False, log=lambda *_: None)
    assert [open(p, 'rb').read() for p in paths] == before


def _generate(experiment, *args, launcher=(sys.executable,), env=None):
    cmd = [*launcher, 'train_interpreter.py', '--exp', str(experiment['cfg_path']), '--generate_data', 'True',
           '--device', 'cpu'] + list(args)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def test_generation_resumes_shards_and_filters(experiment):
    if not (experiment['exp'] / 'models' / 'model_1.pth').is_file():
        train.train_ensemble(experiment['cfg'], device='cpu', progress=False, log=lambda *_: None)
    out = experiment['root'] / 'samples'
    first = _generate(experiment, '--num_sample', '3', '--out', str(out))
    assert first.returncode == 0, first.stderr[-2000:]
    second = _generate(experiment, '--num_sample', '4', '--out', str(out))  # samples 0..2 exist: only 3 is new
    assert second.returncode == 0, second.stderr[-2000:]
    assert '3 of the 4 samples are already' in second.stdout
    shard = _generate(experiment, '--num_sample', '2', '--start_step', '4', '--out', str(out))
    assert shard.returncode == 0, shard.stderr[-2000:]

    entries = {}
    for path in out.glob('metadata-*.jsonl'):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            entries[entry['index']] = entry
    assert sorted(entries) == [0, 1, 2, 3, 4, 5]
    for i, entry in entries.items():
        for key in ('rgb', 'nir', 'mask', 'mask_color'):
            assert (out / entry[key]).is_file()
        assert np.allclose(entry['z'], generate.sample_z(experiment['cfg'].seed, i, 16)[0])
    mask = np.asarray(__import__('PIL.Image', fromlist=['Image']).open(out / entries[5]['mask']))
    assert mask.shape == (RES, RES) and mask.max() <= 2
    kept = [json.loads(x)['index'] for x in (out / 'kept.jsonl').read_text().splitlines()]
    rejected = [json.loads(x)['index'] for x in (out / 'rejected.jsonl').read_text().splitlines()]
    assert len(rejected) == int(6 * 0.25) and sorted(kept + rejected) == list(range(6))
    worst = max(entries.values(), key=lambda e: e['uncertainty_score'])['index']
    assert worst in rejected


def test_uncertainty_selection_follows_datasetgan():
    scores = np.arange(100)[::-1].astype(float)  # sample k has score 99 - k
    kept, rejected = generate.select_by_uncertainty(scores, portion=0.1)
    assert rejected == list(range(10))  # the 10 highest scores
    kept, rejected = generate.select_by_uncertainty(scores, portion=0.5, skip_lowest=30)
    # DatasetGAN: sorted ascending, keep sorted[30 : -50 + 30] -> ranks 30..79 of the ascending order.
    order = np.argsort(scores)
    assert kept == sorted(order[30:80].tolist())


def test_bad_annotation_set_is_reported(experiment, tmp_path):
    cfg = config_module.load_config(str(experiment['cfg_path']),
                                    overrides=dict(annotation_mask_path=str(tmp_path)))
    with pytest.raises(train.AnnotationSetError, match='image_mask0.npy: annotation mask not found'):
        train.AnnotatedSet(cfg, experiment['G'], 'cpu', progress=False)
    result = subprocess.run([sys.executable, 'train_interpreter.py', '--exp', str(tmp_path / 'none.json')],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ several processes

TORCHRUN = (sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc-per-node=2')
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS='1')  # two ranks on two cores


def _tree(folder):
    """Every file below ``folder``: relative path -> bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def one_process_samples(experiment):
    if not (experiment['exp'] / 'models' / 'model_1.pth').is_file():
        train.train_ensemble(experiment['cfg'], device='cpu', progress=False, log=lambda *_: None)
    out = experiment['root'] / 'one_process'
    result = _generate(experiment, '--num_sample', '9', '--out', str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    return _tree(out)


@pytest.mark.parametrize('how', ['gpus', 'torchrun'])
def test_two_processes_generate_the_same_files_as_one(experiment, one_process_samples, tmp_path, how):
    out = tmp_path / 'samples'
    if how == 'gpus':
        result = _generate(experiment, '--num_sample', '9', '--out', str(out), '--gpus', '2', env=ONE_THREAD)
    else:
        result = _generate(experiment, '--num_sample', '9', '--out', str(out), launcher=TORCHRUN, env=ONE_THREAD)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'merged the metadata of 2 ranks into metadata-000000-000008.jsonl' in result.stdout
    got = _tree(out)
    assert sorted(got) == sorted(one_process_samples)  # no rank files, no temporaries
    for name, data in one_process_samples.items():
        assert got[name] == data, f'{name} differs'


def test_a_killed_rank_leaves_finished_samples_and_a_rerun_completes_them(experiment, one_process_samples,
                                                                           tmp_path):
    out = tmp_path / 'samples'
    env = dict(ONE_THREAD, FAULT_RANK='1', FAULT_MODE='kill', FAULT_AFTER='2')
    killed = subprocess.run([*TORCHRUN, 'tests/fault_injection.py', 'train_interpreter.py', '--exp',
                             str(experiment['cfg_path']), '--generate_data', 'True', '--device', 'cpu',
                             '--num_sample', '9', '--out', str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env=env)
    assert killed.returncode != 0
    done = generate.finished_samples(str(out))
    assert len([i for i in done if i % 2 == 1]) == 2 and len(done) < 9  # rank 1 made 2 samples, then died
    for entry in done.values():  # what is listed is complete and final
        for key in ('rgb', 'nir', 'mask', 'mask_color'):
            assert (out / entry[key]).read_bytes() == one_process_samples[entry[key]]
    rerun = _generate(experiment, '--num_sample', '9', '--out', str(out), '--gpus', '2', env=ONE_THREAD)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f'{len(done)} of the 9 samples are already' in rerun.stdout
    got = _tree(out)
    assert sorted(got) == sorted(one_process_samples)
    for name, data in one_process_samples.items():
        assert got[name] == data, f'{name} differs'


def test_bad_model_file_under_two_processes_is_one_line(experiment, one_process_samples, tmp_path):
    bad = tmp_path / 'bad'
    (bad / 'models').mkdir(parents=True)
    (bad / 'models' / 'model_0.pth').write_bytes((experiment['exp'] / 'models' / 'model_0.pth').read_bytes())
    (bad / 'models' / 'model_1.pth').write_bytes(b'not a checkpoint')
    result = _generate(experiment, '--num_sample', '4', '--resume', str(bad), '--gpus', '2', env=ONE_THREAD)
    assert_proc_error(result, 'model_1.pth', 'rank ')
    assert not (bad / 'samples').exists()  # the models are read before anything is written
