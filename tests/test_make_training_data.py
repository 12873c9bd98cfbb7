"""make_training_data.py as a user runs it, on a tiny random dual-branch generator: the files and their shapes,
determinism per seed, that the stored z regenerates the stored image exactly (so the annotated image and its later
features belong together), truncation towards w_avg or a given average latent, and one-line errors with exit code 2.
Also the helpers of interpreter.latents it relies on."""

import copy
import io
import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

import make_training_data
from conftest import REPO, assert_proc_error
from interpreter import latents
from interpreter.config import ConfigError, load_config
from interpreter.generator_layout import feature_channels
from training import legacy, networks

RES, Z_DIM, W_DIM = 16, 16, 16


def _tiny_generator(seed):
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=Z_DIM, w_dim=W_DIM, c_dim=0, img_resolution=RES, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=256, channel_max=16))
    with torch.no_grad():
        # Fresh networks have zero noise strength and a zero w_avg, which would hide noise and truncation bugs.
        for name, p in G.named_parameters():
            if name.endswith('noise_strength'):
                p.fill_(0.5)
        G.mapping.w_avg.copy_(torch.randn(W_DIM))
    return G.eval().requires_grad_(False)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('mtd')
    G, G_ema = _tiny_generator(0), _tiny_generator(1)
    D = networks.Discriminator(c_dim=0, img_resolution=RES, img_channels=3, channel_base=256, channel_max=16)
    pkl = root / 'net.pkl'
    legacy.save_network_pkl(pkl, dict(G=G, D=D, G_ema=G_ema))
    exp = root / 'exp'
    exp.mkdir()
    config = dict(exp_dir=str(exp), batch_size=64, category=None, dim=[RES, RES, 0], number_class=4, max_training=8,
                  stylegan_ver='2', annotation_data_from_w=False, annotation_mask_path='', testing_path='',
                  average_latent='', annotation_image_latent_path='', stylegan_checkpoint=str(pkl), model_num=1,
                  upsample_mode='bilinear', upsample_threshold='8', expand_to_dimensions=G.num_ws)
    config['dim'][2] = sum(feature_channels(G))
    del config['category']
    cfg_path = exp / 'generate.json'
    cfg_path.write_text(json.dumps(config, indent=1))
    return dict(root=root, pkl=pkl, G=G, G_ema=G_ema, config=config, cfg_path=cfg_path)


def run_cli(*args):
    env = dict(os.environ, OMP_NUM_THREADS='2', MKL_NUM_THREADS='2')  # the thread count of the test process
    return subprocess.run([sys.executable, 'make_training_data.py', *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def run_a(setup):
    out = setup['root'] / 'a'
    proc = run_cli('--exp', setup['cfg_path'], '--sv_path', out, '--num_sample', 3, '--seed', 5, '--png',
                   '--device', 'cpu')
    assert proc.returncode == 0, proc.stderr
    return out


# ------------------------------------------------------------------------------------------------ the CLI


def test_outputs_and_shapes(setup, run_a):
    G = setup['G_ema']
    names = sorted(files_of(run_a))
    images = [f'images_to_annotate/image_{i}{s}.png' for i in range(3) for s in ('', '_NIR')]
    assert names == sorted(images + ['avg_latent_stylegan.npy', 'generate.json', 'latent_stylegan.npy',
                                     'make_training_data_settings.json', 'w_stylegan.npy'])
    assert not [p for p in os.listdir(run_a) if p.startswith('.')]  # no staging folder left behind
    z = np.load(run_a / 'latent_stylegan.npy')
    assert z.dtype == np.float64 and z.shape == (3, Z_DIM)
    ws = np.load(run_a / 'w_stylegan.npy')
    assert ws.dtype == np.float32 and ws.shape == (3, G.num_ws, W_DIM)
    avg = np.load(run_a / 'avg_latent_stylegan.npy')
    assert avg.dtype == np.float32 and avg.shape == (G.num_ws, W_DIM)
    assert np.array_equal(avg, np.broadcast_to(G.mapping.w_avg.numpy(), avg.shape))  # G_ema's w_avg
    rgb = PIL.Image.open(run_a / 'images_to_annotate' / 'image_0.png')
    nir = PIL.Image.open(run_a / 'images_to_annotate' / 'image_0_NIR.png')
    assert (rgb.mode, rgb.size, nir.mode, nir.size) == ('RGB', (RES, RES), 'L', (RES, RES))
    assert (run_a / 'generate.json').read_bytes() == setup['cfg_path'].read_bytes()
    settings = json.loads((run_a / 'make_training_data_settings.json').read_text())
    assert settings['seed'] == 5 and settings['generator_key'] == 'G_ema' and settings['noise_mode'] == 'const'
    # The z are the seed's documented stream: row i is what np.random.seed(5); randn(1, z_dim) gives at step i.
    np.random.seed(5)
    assert np.array_equal(z, np.concatenate([np.random.randn(1, Z_DIM) for _ in range(3)]))


def test_stored_latents_regenerate_the_stored_images_exactly(setup, run_a):
    G, G_ema = setup['G'], setup['G_ema']
    z = np.load(run_a / 'latent_stylegan.npy')
    ws_saved = np.load(run_a / 'w_stylegan.npy')
    for i in range(3):
        rgb = np.asarray(PIL.Image.open(run_a / 'images_to_annotate' / f'image_{i}.png'))
        nir = np.asarray(PIL.Image.open(run_a / 'images_to_annotate' / f'image_{i}_NIR.png'))
        with torch.no_grad():
            ws = G_ema.mapping(torch.from_numpy(z[i:i + 1]).float(), None, truncation_psi=0.7, truncation_cutoff=7)
            img, nir_t = G_ema.synthesis(ws, noise_mode='const')
            # The upstream conversion, written out independently of interpreter.latents.
            want_rgb = (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
            want_nir = (nir_t * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0, 0].numpy()
            assert np.array_equal(ws_saved[i], ws[0].numpy())
            assert np.array_equal(rgb, want_rgb) and np.array_equal(nir, want_nir)
            # The checks above would notice a change of noise, generator or truncation:
            other = (G_ema.synthesis(ws, noise_mode='none')[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8)
            assert not np.array_equal(other[0].permute(1, 2, 0).numpy(), rgb)
            ws_g = G.mapping(torch.from_numpy(z[i:i + 1]).float(), None, truncation_psi=0.7, truncation_cutoff=7)
            assert not torch.allclose(ws_g, ws)
            assert not torch.allclose(G_ema.mapping(torch.from_numpy(z[i:i + 1]).float(), None), ws)
        # The features the interpreter will compute come from these very ws: same image from the features path.
        img2, _, feats = latents.synthesize(G_ema, torch.from_numpy(ws_saved[i:i + 1]), return_features=True)
        assert np.array_equal(latents.to_uint8_image(img2[0]), rgb)
        assert [f.shape[1] for f in feats] == feature_channels(G_ema)


def test_same_seed_same_bytes_other_seed_other_files(setup, run_a):
    again = setup['root'] / 'a_again'
    proc = run_cli('--exp', setup['cfg_path'], '--sv_path', again, '--num_sample', 3, '--seed', 5, '--png')
    assert proc.returncode == 0, proc.stderr
    assert files_of(again) == files_of(run_a)
    other = setup['root'] / 'b'
    proc = run_cli('--exp', setup['cfg_path'], '--sv_path', other, '--num_sample', 2, '--seed', 6)  # JPEG
    assert proc.returncode == 0, proc.stderr
    files_a, files_b = files_of(run_a), files_of(other)
    assert sorted(n for n in files_b if n.startswith('images_to_annotate/')) == [
        f'images_to_annotate/image_{i}{s}.jpg' for i in range(2) for s in ('', '_NIR')]
    for name in ('latent_stylegan.npy', 'w_stylegan.npy'):
        assert not np.array_equal(np.load(other / name), np.load(run_a / name)[:2])
    png = PIL.Image.open(run_a / 'images_to_annotate' / 'image_0.png')
    assert files_b['images_to_annotate/image_0.jpg'] != _as_jpeg(png)
    assert files_b['avg_latent_stylegan.npy'] == files_a['avg_latent_stylegan.npy']  # does not depend on the seed


def _as_jpeg(image):
    buf = io.BytesIO()
    image.save(buf, 'JPEG')  # PIL's defaults, as the originals
    return buf.getvalue()


def run_main(capsys, *args):
    """The CLI in this process (for the cases beyond the subprocess runs above): (exit code, stderr)."""
    capsys.readouterr()
    code = make_training_data.main([str(a) for a in args])
    return code, capsys.readouterr().err


def test_jpeg_is_the_png_image_encoded(setup, run_a, tmp_path, capsys):
    code, err = run_main(capsys, '--exp', setup['cfg_path'], '--sv_path', tmp_path, '--num_sample', 1, '--seed', 5)
    assert code == 0, err
    for name in ('image_0', 'image_0_NIR'):
        png = PIL.Image.open(run_a / 'images_to_annotate' / f'{name}.png')
        assert (tmp_path / 'images_to_annotate' / f'{name}.jpg').read_bytes() == _as_jpeg(png)


def test_average_latent_file_and_overwrite(setup, tmp_path, capsys):
    G_ema = setup['G_ema']
    exp = tmp_path / 'exp'
    exp.mkdir()
    avg = np.random.RandomState(0).randn(G_ema.num_ws, W_DIM).astype(np.float32)
    np.save(exp / 'my_avg.npy', avg)
    config = dict(setup['config'], exp_dir=str(exp), average_latent='my_avg.npy', truncation_psi=0.5,
                  truncation_cutoff=3)
    (exp / 'generate.json').write_text(json.dumps(config))
    code, err = run_main(capsys, '--exp', exp / 'generate.json', '--sv_path', exp, '--num_sample', 2, '--seed', 1,
                         '--png')
    assert code == 0, err
    assert np.array_equal(np.load(exp / 'avg_latent_stylegan.npy'), avg)
    z = np.load(exp / 'latent_stylegan.npy')
    with torch.no_grad():
        w = G_ema.mapping(torch.from_numpy(z).float(), None).numpy()
    want = w.copy()
    want[:, :3] = avg[:3] + 0.5 * (w[:, :3] - avg[:3])
    assert np.allclose(np.load(exp / 'w_stylegan.npy'), want, atol=1e-6)
    # A second run does not clobber the first unless asked to.
    before = files_of(exp)
    code, err = run_main(capsys, '--exp', exp / 'generate.json', '--sv_path', exp, '--num_sample', 1, '--seed', 2)
    assert code == 2 and len(err.strip().splitlines()) == 1 and 'already exists' in err and '--overwrite' in err
    assert files_of(exp) == before
    code, err = run_main(capsys, '--exp', exp / 'generate.json', '--sv_path', exp, '--num_sample', 1, '--seed', 2,
                         '--overwrite')
    assert code == 0, err
    images = sorted(p.name for p in (exp / 'images_to_annotate').iterdir())
    assert images == ['image_0.jpg', 'image_0_NIR.jpg']  # the earlier run's images are gone, not mixed in
    assert np.load(exp / 'latent_stylegan.npy').shape == (1, Z_DIM)
    assert (exp / 'generate.json').read_bytes() == before['generate.json']  # the config itself is left alone
    assert not [p for p in os.listdir(exp) if p.startswith('.')]


def test_bad_input_one_line_exit_2(setup, tmp_path, capsys):
    bad = tmp_path / 'bad.json'
    bad.write_text('{"exp_dir": "x", "dim": [16, 16, 8],')
    proc = run_cli('--exp', bad, '--sv_path', tmp_path / 'out1')
    assert_proc_error(proc, str(bad), 'not valid JSON')
    config = dict(setup['config'], stylegan_checkpoint=str(tmp_path / 'nowhere.pkl'))
    (tmp_path / 'missing.json').write_text(json.dumps(config))
    proc = run_cli('--exp', tmp_path / 'missing.json', '--sv_path', tmp_path / 'out2')
    assert_proc_error(proc, 'stylegan_checkpoint', 'nowhere.pkl not found')

    not_a_pickle = tmp_path / 'junk.pkl'
    not_a_pickle.write_bytes(b'junk')
    config = dict(setup['config'], category='eyes_256')  # the tiny generator makes 16x16 images
    (tmp_path / 'res.json').write_text(json.dumps(config))
    cases = [(['--network', not_a_pickle], ['junk.pkl']),
             (['--exp', tmp_path / 'res.json'], ['res.json', 'resolution', '16x16']),
             (['--expand_to_dimensions', 99], ['expand_to_dimensions', '99']),
             (['--device', 'tpu'], ['--device']),
             (['--num_sample', 0], ['num_sample'])]
    for i, (extra, fragments) in enumerate(cases):
        args = ['--exp', setup['cfg_path'], '--sv_path', tmp_path / f'out{i + 3}'] + extra
        code, err = run_main(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith('error: '), (extra, err)
        assert all(str(f) in lines[0] for f in fragments), (fragments, lines[0])
    assert not any((tmp_path / f'out{i}').exists() and any((tmp_path / f'out{i}').iterdir()) for i in range(1, 8))


# -------------------------------------------------------------------------------------- interpreter.latents


def test_sample_latents_depends_only_on_seed_and_index(setup):
    G = setup['G']
    a = latents.sample_latents(G, 5, 7)
    assert a.dtype == np.float64 and a.shape == (5, Z_DIM)
    assert np.array_equal(latents.sample_latents(G, 2, 7), a[:2])
    assert not np.array_equal(latents.sample_latents(G, 2, 8), a[:2])


def test_z_to_ws_truncation(setup):
    G = setup['G_ema']
    z = latents.sample_latents(G, 4, 0)
    with torch.no_grad():
        w = G.mapping(torch.from_numpy(z).float(), None).numpy()
    w_avg = G.mapping.w_avg.numpy()
    ws = latents.z_to_ws(G, z, psi=0.7, cutoff=7, device='cpu').numpy()
    n = min(7, G.num_ws)
    assert np.allclose(ws[:, :n], w_avg + 0.7 * (w[:, :n] - w_avg), atol=1e-6)
    assert np.array_equal(ws[:, n:], w[:, n:])
    ws_all = latents.z_to_ws(G, z, psi=0.5, cutoff=None).numpy()
    assert np.allclose(ws_all, w_avg + 0.5 * (w - w_avg), atol=1e-6)
    avg = np.random.RandomState(1).randn(G.num_ws, W_DIM).astype(np.float32)
    ws_avg = latents.z_to_ws(G, z, psi=0.7, cutoff=2, average=torch.from_numpy(avg)).numpy()
    assert np.allclose(ws_avg[:, :2], avg[:2] + 0.7 * (w[:, :2] - avg[:2]), atol=1e-6)
    assert np.array_equal(ws_avg[:, 2:], w[:, 2:])
    ws_vec = latents.z_to_ws(G, z, psi=0.7, cutoff=2, average=torch.from_numpy(avg[0])).numpy()
    assert np.allclose(ws_vec[:, :2], avg[0] + 0.7 * (w[:, :2] - avg[0]), atol=1e-6)
    before = G.mapping.w_avg.clone()
    G_train = copy.deepcopy(G).train()
    latents.z_to_ws(G_train, z)  # never updates the tracked average, even in training mode
    assert torch.equal(G_train.mapping.w_avg, before)


def test_load_average_latent_shapes(setup, tmp_path):
    G = setup['G']
    good = np.ones([1, G.num_ws, W_DIM], np.float32)  # the originals' make_mean_latent shape
    np.save(tmp_path / 'a.npy', good)
    assert latents.load_average_latent(tmp_path / 'a.npy', G).shape == (G.num_ws, W_DIM)
    np.save(tmp_path / 'b.npy', np.ones([W_DIM + 1]))
    with pytest.raises(ConfigError) as info:
        latents.load_average_latent(tmp_path / 'b.npy', G)
    assert 'b.npy' in str(info.value) and 'average_latent' in str(info.value)


def test_to_uint8_image():
    x = torch.linspace(-1.3, 1.3, 3 * 4 * 5).reshape(3, 4, 5)
    out = latents.to_uint8_image(x)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    upstream = (x * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(out, upstream)
    inside = (x.abs() <= 1).permute(1, 2, 0).numpy()
    exact = ((x.double() + 1) * 127.5).permute(1, 2, 0).numpy()
    assert np.all(np.abs(out[inside] - exact[inside]) <= 0.5 + 1e-9)  # the nearest level, not a truncation
    assert latents.to_uint8_image(torch.tensor([[[-1.0, 0.0, 1.0]]])).tolist() == [[0, 128, 255]]
    assert latents.to_uint8_image(x[:1]).shape == (4, 5)
    assert latents.to_uint8_image(x[None]).shape == (1, 4, 5, 3)
    assert latents.to_uint8_image(x[None, :1]).shape == (1, 4, 5)


def test_check_generator(setup, tmp_path):
    G = setup['G_ema']
    cfg = load_config(setup['cfg_path'])
    cfg.check_generator(G, features=True)
    cfg.dim = (RES, RES, cfg.dim[2] + 1)
    with pytest.raises(ConfigError, match='dim'):
        cfg.check_generator(G, features=True)
    cfg.expand_to_dimensions = G.num_ws + 1
    with pytest.raises(ConfigError, match='expand_to_dimensions'):
        cfg.check_generator(G)
