"""The networks rebuilt from the upstream kwargs, loaded strictly with the upstream weights, reproduce every stored
output of shared/parity (official StyleGAN2-ADA G and D, and BiOcularGAN's dual-branch G), on the reference ops and
on the CPU fast path (polyphase upsampling convolutions, in-place bias_act, cheap demodulation)."""

import json

import pytest
import torch

from conftest import assert_close_to_scale, load_parity, shared_dir
from torch_utils import custom_ops
from training import networks

FWD = 1e-5   # model outputs: max|a - ref| <= 1e-5 * max|ref|
GRAD = 1e-4  # gradients


@pytest.fixture(autouse=True, params=['fast', 'reference'])
def ops_path(request):
    with custom_ops.reference_ops(request.param == 'reference'):
        yield request.param


def _t(arrays, key, grad=False):
    return torch.from_numpy(arrays[key].copy()).requires_grad_(grad)


def _state(arrays):
    return {k[len('state/'):]: torch.from_numpy(v.copy()) for k, v in arrays.items() if k.startswith('state/')}


def _build(meta, arrays, kwargs_key='kwargs'):
    cls = meta['class']
    kwargs = dict(meta[kwargs_key])
    if cls.endswith('Generator'):
        synthesis_kwargs = dict(kwargs.pop('synthesis_kwargs'))
        synthesis_kwargs.pop('save_intermediate_results', None)  # BiOcularGAN's switch; features are on request here
        dual = cls.startswith('training_scripts_DB_SG2')
        model = networks.Generator(**kwargs, synthesis_kwargs=synthesis_kwargs, nir_channels=1 if dual else 0)
    else:
        model = networks.Discriminator(**kwargs)
    model.load_state_dict(_state(arrays), strict=True)
    return model.eval().requires_grad_(False)


def _hook_outputs(modules):
    outputs = {}
    handles = [m.register_forward_hook(lambda mod, inp, out, name=name: outputs.__setitem__(name, out))
               for name, m in modules.items()]
    return outputs, handles


@pytest.mark.parametrize('name', ['generator_small', 'generator_small_cond'])
def test_official_generator_matches_upstream(name):
    arrays, meta = load_parity(name)
    G = _build(meta, arrays)
    Gc = _build(meta, arrays, 'kwargs_clamp')
    z = _t(arrays, 'z')
    c = _t(arrays, 'c') if 'c' in arrays else None
    check = lambda out, key: assert_close_to_scale(out, arrays[key], FWD, name=key)  # noqa: E731

    fcs, handles = _hook_outputs({'map/fc0': G.mapping.fc0, 'map/fc1': G.mapping.fc1})
    check(G.mapping(z, c), 'ws_psi1')
    for h in handles:
        h.remove()
    check(fcs['map/fc0'], 'map/fc0')
    check(fcs['map/fc1'], 'map/fc1')
    check(G.mapping(z, c, truncation_psi=0.7), 'ws_psi07')
    check(G.mapping(z, c, truncation_psi=0.7, truncation_cutoff=2), 'ws_psi07_cut2')

    blocks = {f'blk/b{r}': getattr(G.synthesis, f'b{r}') for r in G.synthesis.block_resolutions}
    outs, handles = _hook_outputs(blocks)
    img, nir = G(z, c, noise_mode='const')
    for h in handles:
        h.remove()
    assert nir is None  # single-branch configuration
    check(img, 'img_psi1_const')
    if 'blk/b4/x' in arrays:
        for key, out in outs.items():
            check(out[0], f'{key}/x')
            check(out[1], f'{key}/img')

    check(G(z, c, truncation_psi=0.7, noise_mode='const')[0], 'img_psi07_const')
    check(G(z, c, truncation_psi=0.7, truncation_cutoff=2, noise_mode='const')[0], 'img_psi07_cut2_const')
    check(G(z, c, noise_mode='none')[0], 'img_psi1_none')
    check(G(z, c, truncation_psi=0.7, noise_mode='none')[0], 'img_psi07_none')
    ws = _t(arrays, 'ws_psi1')
    check(G.synthesis(ws, noise_mode='const', fused_modconv=True)[0], 'synth_psi1_const_fusedT')
    check(G.synthesis(ws, noise_mode='const', fused_modconv=False)[0], 'synth_psi1_const_fusedF')
    check(G.synthesis(_t(arrays, 'ws_mix'), noise_mode='const')[0], 'img_mix_const')
    ws_rand = _t(arrays, 'ws_rand')
    check(G.synthesis(ws_rand, noise_mode='const')[0], 'img_wsrand_const')
    check(G.synthesis(ws_rand, noise_mode='const', fused_modconv=False)[0], 'img_wsrand_const_fusedF')
    check(G.synthesis(ws_rand, noise_mode='none')[0], 'img_wsrand_none')
    check(Gc(z, c, noise_mode='const')[0], 'img_psi1_const_clamp')

    if c is not None:
        check(G.mapping.embed(c), 'embed_out')
        check(networks.normalize_2nd_moment(G.mapping.embed(c)), 'embed_norm')
        check(torch.cat([networks.normalize_2nd_moment(z), networks.normalize_2nd_moment(G.mapping.embed(c))], 1),
              'mapping_in')
        check(G.mapping(z, _t(arrays, 'c_soft')), 'ws_psi1_csoft')
        check(G(z, _t(arrays, 'c_soft'), noise_mode='const')[0], 'img_psi1_const_csoft')

    R = _t(arrays, 'R')
    for key, start in [('grad_ws', 'ws_psi1'), ('grad_wsrand', 'ws_rand')]:
        w = _t(arrays, start, grad=True)
        g, = torch.autograd.grad((G.synthesis(w, noise_mode='const')[0] * R).sum(), [w])
        assert_close_to_scale(g, arrays[key], GRAD, name=key)
    zz = _t(arrays, 'z', grad=True)
    g, = torch.autograd.grad((G(zz, c, noise_mode='const')[0] * R).sum(), [zz])
    assert_close_to_scale(g, arrays['grad_z'], GRAD, name='grad_z')


def test_dual_branch_generator_matches_biocular_gan():
    arrays, meta = load_parity('db_generator_small')
    assert any('.toseg.' in k for k in arrays), 'the vectors carry BiOcularGAN names; they must load into tonir'
    G = _build(meta, arrays)
    z = _t(arrays, 'z')
    check = lambda out, key: assert_close_to_scale(out, arrays[key], FWD, name=key)  # noqa: E731

    check(G.mapping(z), 'ws_psi1')
    check(G.mapping(z, truncation_psi=0.7), 'ws_psi07')
    check(G.mapping(z, truncation_psi=0.7, truncation_cutoff=2), 'ws_psi07_cut2')
    for suffix, kwargs in [('psi1_const', dict(noise_mode='const')),
                           ('psi07_const', dict(truncation_psi=0.7, noise_mode='const')),
                           ('psi1_none', dict(noise_mode='none'))]:
        rgb, nir = G(z, None, **kwargs)
        check(rgb, f'rgb_{suffix}')
        check(nir, f'nir_{suffix}')

    ws = _t(arrays, 'ws_psi1')
    rgb, nir, feats = G.synthesis(ws, noise_mode='const', fused_modconv=True, return_features=True)
    check(rgb, 'synth_fusedT_rgb')
    check(nir, 'synth_fusedT_nir')
    assert len(feats) == len(meta['feat_shapes'])
    for i, f in enumerate(feats):
        check(f, f'feat_{i:02d}')
    # Asking for the features must not change the images.
    rgb_plain, nir_plain = G.synthesis(ws, noise_mode='const', fused_modconv=True)
    assert torch.equal(rgb, rgb_plain) and torch.equal(nir, nir_plain)

    rgb, nir = G.synthesis(ws, noise_mode='const', fused_modconv=False)
    check(rgb, 'synth_fusedF_rgb')
    check(nir, 'synth_fusedF_nir')
    rgb, nir = G.synthesis(_t(arrays, 'ws_mix'), noise_mode='const')
    check(rgb, 'mix_rgb_const')
    check(nir, 'mix_nir_const')
    ws_rand = _t(arrays, 'ws_rand')
    for suffix, kwargs in [('const', {}), ('const_fusedF', dict(fused_modconv=False))]:
        rgb, nir = G.synthesis(ws_rand, noise_mode='const', **kwargs)
        check(rgb, f'wsrand_rgb_{suffix}')
        check(nir, f'wsrand_nir_{suffix}')

    R_rgb, R_nir = _t(arrays, 'R_rgb'), _t(arrays, 'R_nir')
    w = _t(arrays, 'ws_psi1', grad=True)
    rgb, nir = G.synthesis(w, noise_mode='const')
    g_rgb, = torch.autograd.grad((rgb * R_rgb).sum(), [w], retain_graph=True)
    g_nir, = torch.autograd.grad((nir * R_nir).sum(), [w])
    assert_close_to_scale(g_rgb, arrays['grad_ws_rgb'], GRAD, name='grad_ws_rgb')
    assert_close_to_scale(g_nir, arrays['grad_ws_nir'], GRAD, name='grad_ws_nir')
    w = _t(arrays, 'ws_rand', grad=True)
    g, = torch.autograd.grad((G.synthesis(w, noise_mode='const')[0] * R_rgb).sum(), [w])
    assert_close_to_scale(g, arrays['grad_wsrand_rgb'], GRAD, name='grad_wsrand_rgb')
    zz = _t(arrays, 'z', grad=True)
    g, = torch.autograd.grad((G(zz, None, noise_mode='const')[0] * R_rgb).sum(), [zz])
    assert_close_to_scale(g, arrays['grad_z_rgb'], GRAD, name='grad_z_rgb')


@pytest.mark.parametrize('name', ['discriminator_small', 'discriminator_small_cond', 'discriminator_small_nir'])
def test_discriminator_matches_upstream(name):
    arrays, meta = load_parity(name)
    D = _build(meta, arrays)
    Dc = _build(meta, arrays, 'kwargs_clamp')
    c = _t(arrays, 'c') if 'c' in arrays else None
    c8 = _t(arrays, 'c8') if 'c8' in arrays else None
    check = lambda out, key: assert_close_to_scale(out, arrays[key], FWD, name=key)  # noqa: E731

    modules = {f'blk/b{r}/x': getattr(D, f'b{r}') for r in D.block_resolutions}
    modules.update({'epi/mbstd': D.b4.mbstd, 'epi/conv': D.b4.conv, 'epi/fc': D.b4.fc, 'epi/out': D.b4.out})
    outs, handles = _hook_outputs(modules)
    check(D(_t(arrays, 'img'), c), 'logits')
    for h in handles:
        h.remove()
    for key, out in outs.items():
        if key in arrays:
            check(out[0] if key.startswith('blk/') else out, key)
    check(D(_t(arrays, 'img8'), c8), 'logits8')
    check(Dc(_t(arrays, 'img'), c), 'logits_clamp')
    if 'cmap' in arrays:
        check(D.mapping(None, c), 'cmap')
    for img_key, labels, key in [('img', c, 'r1_grad'), ('img8', c8, 'r1_grad8')]:
        img = _t(arrays, img_key, grad=True)
        g, = torch.autograd.grad(D(img, labels).sum(), [img])
        assert_close_to_scale(g, arrays[key], GRAD, name=key)


def _paper256():
    path = shared_dir() / 'parity' / 'state_dict_names_paper256.json'
    if not path.is_file():
        load_parity('state_dict_names_paper256')  # skips or fails with the standard message
    return json.loads(path.read_text())


def _entries(module):
    params = {id(p) for p in module.parameters()}
    out = []
    for name, tensor in module.state_dict(keep_vars=True).items():
        out.append({'name': name, 'shape': list(tensor.shape), 'kind': 'param' if id(tensor) in params else 'buffer'})
    return out


@pytest.mark.parametrize('key', ['official_G', 'dual_branch_G', 'official_D', 'dual_branch_D_NIR'])
def test_state_dict_names_at_paper256(key):
    spec = _paper256()[key]
    kwargs = dict(spec['kwargs'])
    torch.manual_seed(0)
    if key.endswith('_G'):
        model = networks.Generator(**kwargs, nir_channels=1 if key.startswith('dual') else 0)
        assert model.num_ws == spec['num_ws']
    else:
        model = networks.Discriminator(**kwargs)
    expected = [dict(e, name=e['name'].replace('.toseg.', '.tonir.')) for e in spec['entries']]
    assert _entries(model) == expected
    assert sum(p.numel() for p in model.parameters()) == spec['num_param_scalars']


@pytest.mark.parametrize('activation', ['linear', 'lrelu'])
def test_dense_layer_scales_the_input_on_the_fast_path(activation, ops_path):
    """A batch smaller than the output count scales the input by the weight gain instead of the weight on the fast
    path: the same outputs and gradients as the weight scaled (float64, to rounding), on both paths."""
    torch.manual_seed(0)
    layer = networks.FullyConnectedLayer(64, 32, activation=activation, lr_multiplier=0.01, bias_init=0.5).double()
    x = torch.randn(3, 64, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    w, b = layer.weight * layer.weight_gain, layer.bias * layer.bias_gain
    want = x @ w.t() + b
    want = want if activation == 'linear' else torch.nn.functional.leaky_relu(want, 0.2) * 2 ** 0.5
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, layer.weight], g)
    ref = torch.autograd.grad(want, [x, layer.weight], g)
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
