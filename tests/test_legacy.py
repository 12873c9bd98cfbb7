"""Checkpoint loading: this project's snapshots, upstream persistent-class pickles (official StyleGAN2-ADA and
BiOcularGAN style) built here from the parity weights, and refusal of anything else, without executing code."""

import collections
import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import dnnlib
from conftest import REPO, assert_close_to_scale, load_parity
from torch_utils import persistence
from training import legacy, networks

TINY = dict(z_dim=8, w_dim=8, c_dim=0, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
            synthesis_kwargs=dict(channel_base=128, channel_max=16))
TINY_D = dict(c_dim=0, img_resolution=16, img_channels=3, channel_base=128, channel_max=16,
              epilogue_kwargs=dict(mbstd_group_size=2))


def _parity_generator(name):
    arrays, meta = load_parity(name)
    kwargs = dict(meta['kwargs'])
    synthesis_kwargs = dict(kwargs.pop('synthesis_kwargs'))
    synthesis_kwargs.pop('save_intermediate_results', None)
    dual = meta['class'].startswith('training_scripts_DB_SG2')
    G = networks.Generator(**kwargs, synthesis_kwargs=synthesis_kwargs, nir_channels=1 if dual else 0)
    G.load_state_dict({k[6:]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith('state/')})
    return G.eval(), arrays, meta


# ------------------------------------------------------------------ writing upstream-format pickles in tests

class _UpstreamObject:
    """Pickles exactly like an upstream persistent object: _reconstruct_persistent_obj(meta)."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return persistence._reconstruct_persistent_obj, (self.meta,)


def _upstream(module, class_name, module_src, init_kwargs=None):
    children = collections.OrderedDict()
    for name, child in module._modules.items():
        if child is None:
            continue
        child_name = type(child).__name__
        if name == 'tonir':  # BiOcularGAN's NIR head
            name, child_name = 'toseg', 'ToSEGLayer'
        children[name] = _upstream(child, child_name, module_src)
    state = {'training': False, '_parameters': collections.OrderedDict(module._parameters),
             '_buffers': collections.OrderedDict(module._buffers), '_non_persistent_buffers_set': set(),
             '_modules': children, '_forward_hooks': collections.OrderedDict(), '_init_args': (),
             '_init_kwargs': dnnlib.EasyDict(init_kwargs or {})}
    if hasattr(module, 'weight_gain'):
        state['weight_gain'] = np.float64(module.weight_gain)  # upstream pickles numpy scalars
    return _UpstreamObject(dict(type='class', version=6, module_src=module_src, class_name=class_name, state=state))


def _planted_source(tmp_path):
    marker = tmp_path / 'source_was_executed'
    return marker, f'open({str(marker)!r}, "w").write("executed")\n'


def _upstream_pickle(G, g_kwargs, D, d_kwargs, module_src, D_NIR=None):
    data = dict(training_set_kwargs=dnnlib.EasyDict(path='x', resolution=32), G=_upstream(G, 'Generator', module_src,
                g_kwargs), D=_upstream(D, 'Discriminator', module_src, d_kwargs), augment_pipe=None)
    data['G_ema'] = _upstream(G, 'Generator', module_src, g_kwargs)
    if D_NIR is not None:
        data['D_NIR'] = _upstream(D_NIR, 'Discriminator', module_src, dict(d_kwargs, img_channels=1))
    return pickle.dumps(data)


def _small_d(img_channels=3):
    torch.manual_seed(1)
    return networks.Discriminator(**dict(TINY_D, img_resolution=32, img_channels=img_channels)).eval()


# -------------------------------------------------------------------------------------------------- tests

def test_official_pickle_loads_with_fresh_nir_parts_and_runs_no_code(tmp_path):
    G, arrays, meta = _parity_generator('generator_small')
    marker, source = _planted_source(tmp_path)
    blob = _upstream_pickle(G, meta['kwargs'], _small_d(), dict(TINY_D, img_resolution=32), source)

    data = legacy.load_network_pkl(io.BytesIO(blob))
    assert not marker.exists()
    rgb, nir = data['G_ema'](torch.from_numpy(arrays['z']), None, noise_mode='const')
    assert_close_to_scale(rgb, arrays['img_psi1_const'], 1e-5, name='img_psi1_const')
    assert nir.shape == (4, 1, 32, 32)
    assert sorted(data['initialised_fresh']) == ['D_NIR', 'G.tonir', 'G_ema.tonir']
    assert data['D_NIR'].img_channels == 1 and data['D_NIR'].img_resolution == 32
    assert isinstance(data['D'], networks.Discriminator) and data['augment_pipe'] is None
    assert not any(p.requires_grad for p in data['G'].parameters())

    # A plain pickle.load, as upstream users do, also goes through the safe stand-in.
    G_plain = pickle.loads(blob)['G_ema']
    assert isinstance(G_plain, networks.Generator) and not marker.exists()
    assert torch.equal(G_plain.synthesis.b32.torgb.weight, data['G_ema'].synthesis.b32.torgb.weight)


def test_biocular_gan_pickle_loads_toseg_into_the_nir_head(tmp_path):
    G, arrays, meta = _parity_generator('db_generator_small')
    marker, source = _planted_source(tmp_path)
    D, D_NIR = _small_d(3), _small_d(1)
    blob = _upstream_pickle(G, meta['kwargs'], D, dict(TINY_D, img_resolution=32), source, D_NIR=D_NIR)
    assert b'ToSEGLayer' in blob and b'toseg' in blob

    data = legacy.load_network_pkl(io.BytesIO(blob))
    assert not marker.exists()
    assert data['initialised_fresh'] == []
    rgb, nir = data['G_ema'](torch.from_numpy(arrays['z']), None, noise_mode='const')
    assert_close_to_scale(rgb, arrays['rgb_psi1_const'], 1e-5, name='rgb_psi1_const')
    assert_close_to_scale(nir, arrays['nir_psi1_const'], 1e-5, name='nir_psi1_const')
    img = torch.randn(2, 1, 32, 32)
    assert torch.equal(data['D_NIR'](img), D_NIR(img))


def test_own_snapshot_round_trip_and_plain_pickle_load(tmp_path):
    torch.manual_seed(0)
    G = networks.Generator(**TINY).eval().requires_grad_(False)
    D = networks.Discriminator(**TINY_D).eval().requires_grad_(False)
    D_NIR = networks.Discriminator(**dict(TINY_D, img_channels=1)).eval().requires_grad_(False)
    path = tmp_path / 'network-snapshot-000000.pkl'
    legacy.save_network_pkl(path, dict(training_set_kwargs=dict(path='data'), G=G, D=D, G_ema=G, D_NIR=D_NIR,
                                       augment_pipe=None))
    z = torch.randn(3, 8)
    ref_rgb, ref_nir = G(z, None, noise_mode='const')

    with open(path, 'rb') as f:
        G_plain = pickle.load(f)['G_ema']  # the upstream habit
    rgb, nir = G_plain(z, None, noise_mode='const')
    assert torch.equal(rgb, ref_rgb) and torch.equal(nir, ref_nir)
    assert not G_plain.training and not any(p.requires_grad for p in G_plain.parameters())

    with open(path, 'rb') as f:
        data = legacy.load_network_pkl(f)
    assert data['initialised_fresh'] == []
    assert torch.equal(data['G_ema'](z, None, noise_mode='const')[0], ref_rgb)
    assert data['training_set_kwargs'] == dict(path='data')
    assert G_plain.init_kwargs == TINY


def test_loading_a_snapshot_does_not_disturb_the_global_rng(tmp_path):
    torch.manual_seed(0)
    G = networks.Generator(**TINY)
    blob = pickle.dumps(G)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    pickle.loads(blob)
    assert torch.equal(torch.rand(4), expected)


def test_foreign_pickles_are_refused_without_running_them(tmp_path):
    marker = tmp_path / 'pwned'

    class Evil:
        def __reduce__(self):
            return subprocess.call, (['touch', str(marker)],)

    with pytest.raises(legacy.CheckpointError, match='refusing to load subprocess.call'):
        legacy.load_network_pkl(io.BytesIO(pickle.dumps({'G': Evil()})))
    assert not marker.exists()


def test_bad_pickles_give_one_line_errors_naming_the_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / 'snap.pkl'
    legacy.save_network_pkl(path, dict(G=networks.Generator(**TINY), D=networks.Discriminator(**TINY_D),
                                       G_ema=networks.Generator(**TINY)))
    truncated = tmp_path / 'truncated.pkl'
    truncated.write_bytes(path.read_bytes()[:5000])
    with open(truncated, 'rb') as f, pytest.raises(legacy.CheckpointError, match='truncated.pkl: not a readable'):
        legacy.load_network_pkl(f)

    not_dict = tmp_path / 'list.pkl'
    not_dict.write_bytes(pickle.dumps([1, 2, 3]))
    with open(not_dict, 'rb') as f, pytest.raises(legacy.CheckpointError, match='expected a dict'):
        legacy.load_network_pkl(f)

    no_d = tmp_path / 'no_d.pkl'
    legacy.save_network_pkl(no_d, dict(G=networks.Generator(**TINY), G_ema=networks.Generator(**TINY)))
    with open(no_d, 'rb') as f, pytest.raises(legacy.CheckpointError, match='has no D'):
        legacy.load_network_pkl(f)

    unknown = _UpstreamObject(dict(type='class', version=6, module_src='', class_name='StyleGAN3Generator',
                                   state={}))
    with pytest.raises(legacy.CheckpointError, match="unknown network class 'StyleGAN3Generator'"):
        legacy.load_network_pkl(io.BytesIO(pickle.dumps({'G': unknown})))
    old = _UpstreamObject(dict(type='class', version=4, module_src='', class_name='Generator', state={}))
    with pytest.raises(legacy.CheckpointError, match='persistence version 4'):
        legacy.load_network_pkl(io.BytesIO(pickle.dumps({'G': old})))
    with open(truncated, 'rb') as f, pytest.raises(legacy.CheckpointError) as info:
        legacy.load_network_pkl(f)
    assert '\n' not in str(info.value)


def test_converter_cli_writes_a_snapshot_or_fails_with_exit_code_2(tmp_path):
    G, arrays, meta = _parity_generator('generator_small')
    source = tmp_path / 'official.pkl'
    source.write_bytes(_upstream_pickle(G, meta['kwargs'], _small_d(), dict(TINY_D, img_resolution=32), ''))
    dest = tmp_path / 'converted.pkl'
    cmd = [sys.executable, '-m', 'training.legacy', '--source', str(source), '--dest', str(dest)]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'initialised fresh: G.tonir, G_ema.tonir, D_NIR' in result.stdout
    with open(dest, 'rb') as f:
        data = legacy.load_network_pkl(f)
    assert data['initialised_fresh'] == []  # the converted snapshot carries its NIR parts now
    rgb, _ = data['G_ema'](torch.from_numpy(arrays['z']), None, noise_mode='const')
    assert_close_to_scale(rgb, arrays['img_psi1_const'], 1e-5)

    bad = tmp_path / 'bad.pkl'
    bad.write_bytes(b'not a pickle at all')
    dest2 = tmp_path / 'never.pkl'
    result = subprocess.run([sys.executable, '-m', 'training.legacy', '--source', str(bad), '--dest', str(dest2)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert 'bad.pkl' in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not dest2.exists() and not list(tmp_path.glob('never.pkl*'))
