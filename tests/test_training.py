"""Training: the dual-branch loss against direct computations, and the loop end to end on the built-in demo eyes
(grids, snapshots that load and generate both modalities, exact continuation after an interruption, two gloo
processes, and one-line errors for bad options)."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from training import legacy, networks
from training import loss as loss_module
from training import training_loop as tl

RES = 16
TINY_G = dict(z_dim=16, w_dim=16, c_dim=0, img_resolution=RES, img_channels=3, mapping_kwargs=dict(num_layers=2),
              synthesis_kwargs=dict(channel_base=256, channel_max=16))
TINY_D = dict(c_dim=0, img_resolution=RES, channel_base=256, channel_max=16, epilogue_kwargs=dict(mbstd_group_size=2))


def _nets(seed=0):
    torch.manual_seed(seed)
    G = networks.Generator(**TINY_G).train()
    D = networks.Discriminator(**TINY_D, img_channels=3).train()
    D_NIR = networks.Discriminator(**TINY_D, img_channels=1).train()
    return G, D, D_NIR


def _grads(module):
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in module.parameters()]


# ---------------------------------------------------------------------------------------------- optimiser

def test_default_optimiser_steps_bitwise_as_the_per_tensor_adam(demo_eyes):
    # The cfg's Adam runs foreach (fewer calls on the CPU); it must stay the upstream per-tensor update bit for bit.
    from training import options
    _desc, c = options.setup_training_options(data=str(demo_eyes), cfg='tiny', metrics=[], workers=0, device='cpu')
    kwargs = dict(c.G_opt_kwargs)
    assert kwargs.pop('class_name') == 'torch.optim.Adam' and kwargs.pop('foreach') is True
    kwargs['betas'] = [float(b) for b in kwargs['betas']]
    G = _nets()[0]
    runs = []
    for foreach in (True, False):
        params = [p.detach().clone().requires_grad_(True) for p in G.parameters()]
        opt = torch.optim.Adam(params, foreach=foreach, **kwargs)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*runs))


# --------------------------------------------------------------------------------------------------- loss

@pytest.mark.parametrize('nir_weight', [1.0, 0.25])
def test_generator_loss_is_rgb_plus_weighted_nir(nir_weight):
    G, D, D_NIR = _nets()
    loss = loss_module.StyleGAN2Loss('cpu', G.mapping, G.synthesis, D, D_NIR, style_mixing_prob=0,
                                     nir_weight=nir_weight)
    z = torch.randn(4, 16)
    c = torch.zeros(4, 0)
    G.requires_grad_(True)
    torch.manual_seed(7)
    loss.accumulate_gradients('Gmain', None, None, None, z, c, sync=True, gain=3)
    ours = _grads(G)

    G.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same noise draws as above
    img, nir = G.synthesis(G.mapping(z, c))
    expected = (F.softplus(-D(img, c)) + nir_weight * F.softplus(-D_NIR(nir, c))).mean() * 3
    expected.backward()
    for a, b in zip(ours, _grads(G)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('nir_r1', [True, False])
def test_r1_reaches_d_nir_unless_disabled(nir_r1):
    G, D, D_NIR = _nets()
    loss = loss_module.StyleGAN2Loss('cpu', G.mapping, G.synthesis, D, D_NIR, r1_gamma=2.0, nir_r1=nir_r1)
    real, real_nir = torch.randn(4, 3, RES, RES), torch.randn(4, 1, RES, RES)
    c = torch.zeros(4, 0)
    D.requires_grad_(True)
    D_NIR.requires_grad_(True)
    loss.accumulate_gradients('Dreg', real, real_nir, c, torch.randn(4, 16), c, sync=True, gain=1)

    # Direct R1 for D_NIR: gamma/2 * mean over samples of |dD/dx|^2, differentiated w.r.t. D_NIR's weights.
    D_ref = networks.Discriminator(**TINY_D, img_channels=1)
    D_ref.load_state_dict(D_NIR.state_dict())
    x = real_nir.clone().requires_grad_(True)
    g, = torch.autograd.grad(D_ref(x, c).sum(), [x], create_graph=True)
    (g.square().sum([1, 2, 3]).mean() * 1.0).backward()
    ours = _grads(D_NIR)
    if nir_r1:
        for a, b in zip(ours, _grads(D_ref)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    else:
        assert all(torch.count_nonzero(a) == 0 for a in ours)
    assert any(torch.count_nonzero(a) > 0 for a in _grads(D))  # the RGB D always gets its R1


def test_path_length_uses_the_sum_of_rgb_and_nir_gradients():
    G, D, D_NIR = _nets()
    loss = loss_module.StyleGAN2Loss('cpu', G.mapping, G.synthesis, D, D_NIR, style_mixing_prob=0, pl_decay=0.5)
    z = torch.randn(4, 16)
    c = torch.zeros(4, 0)
    G.requires_grad_(True)
    torch.manual_seed(3)
    loss.accumulate_gradients('Greg', None, None, None, z, c, sync=True, gain=1)

    torch.manual_seed(3)  # replay: mapping, synthesis noise, then the two path-length noises
    ws = G.mapping(z[:2], c[:2])
    img, nir = G.synthesis(ws)
    n_rgb = torch.randn_like(img) / RES
    n_nir = torch.randn_like(nir) / RES
    g_rgb, = torch.autograd.grad((img * n_rgb).sum(), [ws], retain_graph=True)
    g_nir, = torch.autograd.grad((nir * n_nir).sum(), [ws])
    lengths = (g_rgb + g_nir).square().sum(2).mean(1).sqrt()
    torch.testing.assert_close(loss.pl_mean, 0.5 * lengths.mean().detach())  # lerp(0, mean, 0.5)


# ----------------------------------------------------------------------------------------- end to end

@pytest.fixture(scope='module')
def demo_eyes(tmp_path_factory):
    dest = tmp_path_factory.mktemp('data') / 'demo_eyes'
    result = subprocess.run([sys.executable, 'dataset_tool.py', 'demo', '--dest', str(dest), '--count', '24',
                             '--resolution', str(RES), '--seed', '1'], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return dest


def _train(args, outdir, timeout=600):
    cmd = [sys.executable, 'train_db_stylegan2.py', f'--outdir={outdir}', '--workers=0', '--device=cpu'] + args
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_cli_trains_tiny_and_snapshot_generates_both_modalities(demo_eyes, tmp_path):
    no_detector = tmp_path / 'no_detector'
    no_detector.mkdir()
    outdir = tmp_path / 'runs'
    result = _train([f'--data={demo_eyes}', '--cfg=tiny', '--kimg=1', '--tick=0.25', '--snap=2',
                     '--metrics=fid50k_full', f'--detector-dir={no_detector}', '--batch=8'], outdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'Skipping metric fid50k_full' in result.stdout  # no detector: say so and keep training
    (run_dir,) = [p for p in outdir.iterdir() if p.is_dir()]
    names = set(os.listdir(run_dir))
    for name in ['training_options.json', 'log.txt', 'stats.jsonl', 'reals.png', 'reals_nir.png', 'fakes_init.png',
                 'fakes_init_nir.png', 'fakes000001.png', 'fakes000001_nir.png', 'network-snapshot-000001.pkl',
                 'training-state-000001.pt']:
        assert name in names, name
    ticks = [json.loads(line) for line in (run_dir / 'stats.jsonl').read_text().splitlines()]
    assert len(ticks) == 5 and 'Loss/D/loss_nir' in ticks[-1] and 'Loss/r1_penalty_nir' in ticks[-1]
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['G_kwargs']['synthesis_kwargs']['channel_max'] == 32 and options['total_kimg'] == 1

    with open(run_dir / 'network-snapshot-000001.pkl', 'rb') as f:
        data = legacy.load_network_pkl(f)
    assert data['initialised_fresh'] == []
    assert data['D_NIR'].img_channels == 1
    rgb, nir = data['G_ema'](torch.randn(2, data['G_ema'].z_dim), None, noise_mode='const')
    assert rgb.shape == (2, 3, RES, RES) and nir.shape == (2, 1, RES, RES)
    assert torch.isfinite(rgb).all() and torch.isfinite(nir).all()


def _loop_kwargs(demo_eyes):
    return dict(
        training_set_kwargs=dict(class_name='training.dataset.PairedImageDataset', path=str(demo_eyes), xflip=True),
        data_loader_kwargs=dict(num_workers=0),
        G_kwargs=dict(class_name='training.networks.Generator', **{k: v for k, v in TINY_G.items()
                                                                  if k not in ('c_dim', 'img_resolution',
                                                                               'img_channels')}),
        D_kwargs=dict(class_name='training.networks.Discriminator', channel_base=256, channel_max=16,
                      epilogue_kwargs=dict(mbstd_group_size=2)),
        G_opt_kwargs=dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8),
        D_opt_kwargs=dict(class_name='torch.optim.Adam', lr=0.0025, betas=[0, 0.99], eps=1e-8),
        augment_kwargs=dict(class_name='training.augment.AugmentPipe', xflip=1, rotate90=1, xint=1, scale=1,
                            rotate=1, aniso=1, xfrac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1),
        ada_target=0.6, ada_interval=2, ada_kimg=1,
        loss_kwargs=dict(class_name='training.loss.StyleGAN2Loss', r1_gamma=1), batch_size=4, batch_gpu=2,
        total_kimg=0.044, kimg_per_tick=0.008, image_snapshot_ticks=None, network_snapshot_ticks=1, ema_kimg=0.01,
        ema_rampup=0.05, G_reg_interval=2, D_reg_interval=3, random_seed=5)


def test_interrupted_run_continues_to_the_same_weights(demo_eyes, tmp_path):
    full_dir, part_dir, cont_dir = tmp_path / 'full', tmp_path / 'part', tmp_path / 'cont'
    for d in (full_dir, part_dir, cont_dir):
        d.mkdir()
    full = tl.training_loop(run_dir=str(full_dir), **_loop_kwargs(demo_eyes))

    ticks = {'n': 0}

    def abort_after_three_ticks():
        ticks['n'] += 1
        return ticks['n'] >= 3

    part = tl.training_loop(run_dir=str(part_dir), abort_fn=abort_after_three_ticks, **_loop_kwargs(demo_eyes))
    assert 0 < part['cur_nimg'] < full['cur_nimg']
    snapshot = tl.latest_snapshot(str(part_dir))
    cont = tl.training_loop(run_dir=str(cont_dir), resume_pkl=snapshot, resume_state=tl.state_path_for(snapshot),
                            **_loop_kwargs(demo_eyes))
    assert cont['cur_nimg'] == full['cur_nimg']
    for key in ('G', 'G_ema', 'D', 'D_NIR'):
        a, b = full[key].state_dict(), cont[key].state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), f'{key}.{name} differs after the continuation'
    # The augmentation probability moved during training and was restored too.
    with open(tl.latest_snapshot(str(full_dir)), 'rb') as f:
        p_full = pickle.load(f)['augment_pipe'].p
    with open(tl.latest_snapshot(str(cont_dir)), 'rb') as f:
        p_cont = pickle.load(f)['augment_pipe'].p
    assert float(p_full) > 0 and torch.equal(p_full, p_cont)


def test_transfer_from_an_official_single_branch_pickle(demo_eyes, tmp_path):
    from test_legacy import _upstream_pickle

    torch.manual_seed(11)
    source_G = networks.Generator(**dict(TINY_G, img_resolution=RES), nir_channels=0).eval()
    source_D = networks.Discriminator(**TINY_D, img_channels=3).eval()
    g_kwargs = {k: v for k, v in TINY_G.items()}
    d_kwargs = dict(TINY_D, img_channels=3)
    pkl = tmp_path / 'official.pkl'
    pkl.write_bytes(_upstream_pickle(source_G, g_kwargs, source_D, d_kwargs, module_src=''))
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    kwargs = _loop_kwargs(demo_eyes)
    kwargs.update(augment_kwargs=None, total_kimg=0.004, G_opt_kwargs=dict(kwargs['G_opt_kwargs'], lr=0),
                  D_opt_kwargs=dict(kwargs['D_opt_kwargs'], lr=0))  # lr 0: the weights stay as loaded
    out = tl.training_loop(run_dir=str(run_dir), resume_pkl=str(pkl), **kwargs)
    src = dict(source_G.state_dict())
    for name, tensor in out['G'].state_dict().items():
        if '.tonir.' in name:
            assert name not in src
        elif not name.endswith('w_avg'):  # w_avg keeps tracking during training
            assert torch.equal(tensor, src[name]), name
    for name, tensor in out['D'].state_dict().items():
        assert torch.equal(tensor, source_D.state_dict()[name]), name
    assert out['G'].synthesis.b16.tonir.weight.abs().sum() > 0  # a fresh, seeded NIR head


def test_cli_continues_a_run_directory(demo_eyes, tmp_path):
    first = _train([f'--data={demo_eyes}', '--cfg=tiny', '--kimg=1', '--tick=0.5', '--snap=1', '--metrics=none',
                    '--batch=8', '--aug=noaug'], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    second = _train([f'--resume={run_dir}', '--kimg=2'], tmp_path)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert 'Continuing the saved run at kimg 1.0' in second.stdout
    cont_dir = [p for p in tmp_path.iterdir() if p.is_dir() and p != run_dir][0]
    assert cont_dir.name.endswith('-continued') and (cont_dir / 'network-snapshot-000002.pkl').is_file()


def test_two_gloo_processes_train_and_stay_consistent(demo_eyes, tmp_path):
    result = _train([f'--data={demo_eyes}', '--cfg=tiny', '--kimg=1', '--tick=0.5', '--snap=1', '--metrics=none',
                     '--batch=8', '--gpus=2'], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    # Snapshots run check_ddp_consistency on every rank; reaching the last snapshot means the ranks agreed.
    assert (run_dir / 'network-snapshot-000001.pkl').is_file()
    log = (run_dir / 'log.txt').read_text()
    assert 'Exiting...' in log and 'Traceback' not in log


@pytest.mark.parametrize('args, message', [
    (['--data=/nonexistent/eyes'], '/nonexistent/eyes'),
    (['--aug=fixed'], '--aug=fixed requires specifying --p'),
    (['--gpus=3'], '--gpus must be a power of two'),
    (['--resume=/nonexistent/run'], '/nonexistent/run'),
])
def test_cli_bad_options_exit_2_with_one_line(demo_eyes, tmp_path, args, message):
    if not any(a.startswith('--data') for a in args):
        args = [f'--data={demo_eyes}'] + args
    result = _train(args + ['--cfg=tiny', '--dry-run'], tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_snapshot_grid_layout_matches_upstream_rule():
    class Stub:
        image_shape = [3, 256, 256]
        has_labels = False

        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full([3, 256, 256], i, np.uint8), np.full([1, 256, 256], i, np.uint8), np.zeros([0])

    (gw, gh), images, nirs, _ = tl.setup_snapshot_image_grid(Stub())
    assert (gw, gh) == (30, 16)  # 7680 // 256 and 4320 // 256
    assert images.shape == (480, 3, 256, 256) and nirs.shape == (480, 1, 256, 256)
    assert np.array_equal(images[:, 0, 0, 0], nirs[:, 0, 0, 0])  # RGB and NIR of the same pairs
