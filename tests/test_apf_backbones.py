"""apf backbones and checkpoints: insightface state-dict layout, forward contract, safe loading, clear errors."""

import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from apf import backbones
from apf.backbones import ARCHITECTURES, get_model
from apf.checkpoint import ApfError, load_backbone, save_backbone
from conftest import assert_close_to_scale


@pytest.fixture(autouse=True)
def _one_thread(_deterministic_threads):
    # Many small convolutions: with other jobs on the 2 cores, two intra-op threads are up to 20x slower than one.
    # Results are only compared within this process, so the thread count does not affect any expectation.
    torch.set_num_threads(1)
    yield


# ---------------------------------------------------------------------------------------------------------------------
# Expected state-dict layout, written out from the insightface definitions (independent of apf.backbones).

IRESNET_LAYERS = {
    'r18': [2, 2, 2, 2],
    'r34': [3, 4, 6, 3],
    'r50': [3, 4, 14, 3],
    'r100': [3, 13, 30, 3],
    'r200': [6, 26, 60, 6],
}
MBF = {'mbf': ((1, 4, 6, 2), 2), 'mbf_large': ((2, 8, 12, 4), 4)}


def _bn(prefix, c):
    return {f'{prefix}.weight': (c,), f'{prefix}.bias': (c,), f'{prefix}.running_mean': (c,),
            f'{prefix}.running_var': (c,), f'{prefix}.num_batches_tracked': ()}


def expected_iresnet(layers, num_features=512):
    e = {'conv1.weight': (64, 3, 3, 3), **_bn('bn1', 64), 'prelu.weight': (64,)}
    inplanes = 64
    for li, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for b in range(n):
            p = f'layer{li}.{b}'
            c_in = inplanes if b == 0 else planes
            e.update(_bn(f'{p}.bn1', c_in))
            e[f'{p}.conv1.weight'] = (planes, c_in, 3, 3)
            e.update(_bn(f'{p}.bn2', planes))
            e[f'{p}.prelu.weight'] = (planes,)
            e[f'{p}.conv2.weight'] = (planes, planes, 3, 3)
            e.update(_bn(f'{p}.bn3', planes))
            if b == 0:  # Every layer starts with a stride-2 block, hence a projection shortcut.
                e[f'{p}.downsample.0.weight'] = (planes, inplanes, 1, 1)
                e.update(_bn(f'{p}.downsample.1', planes))
        inplanes = planes
    e.update(_bn('bn2', 512))
    e['fc.weight'] = (num_features, 512 * 7 * 7)
    e['fc.bias'] = (num_features,)
    e.update(_bn('features', num_features))
    return e


def _conv_block(e, p, c_in, c_out, k, groups=1, act=True):
    e[f'{p}.layers.0.weight'] = (c_out, c_in // groups, k, k)
    e.update(_bn(f'{p}.layers.1', c_out))
    if act:
        e[f'{p}.layers.2.weight'] = (c_out,)


def _depthwise(e, p, c_in, c_out, g):
    _conv_block(e, f'{p}.layers.0', c_in, g, 1)
    _conv_block(e, f'{p}.layers.1', g, g, 3, groups=g)
    _conv_block(e, f'{p}.layers.2', g, c_out, 1, act=False)


def _residual(e, p, c, n, g):
    for i in range(n):
        _depthwise(e, f'{p}.layers.{i}', c, c, g)


def expected_mbf(blocks, scale, num_features=512):
    e = {}
    c1, c2 = 64 * scale, 128 * scale
    _conv_block(e, 'layers.0', 3, c1, 3)
    if blocks[0] == 1:
        _conv_block(e, 'layers.1', c1, c1, 3, groups=64)
    else:
        _residual(e, 'layers.1', c1, blocks[0], 128)
    _depthwise(e, 'layers.2', c1, c1, 128)
    _residual(e, 'layers.3', c1, blocks[1], 128)
    _depthwise(e, 'layers.4', c1, c2, 256)
    _residual(e, 'layers.5', c2, blocks[2], 256)
    _depthwise(e, 'layers.6', c2, c2, 512)
    _residual(e, 'layers.7', c2, blocks[3], 256)
    _conv_block(e, 'conv_sep', c2, 512, 1)
    _conv_block(e, 'features.layers.0', 512, 512, 7, groups=512, act=False)
    e['features.layers.2.weight'] = (num_features, 512)
    e.update(_bn('features.layers.3', num_features))
    return e


def expected_layout(arch, num_features=512):
    if arch in IRESNET_LAYERS:
        return expected_iresnet(IRESNET_LAYERS[arch], num_features)
    return expected_mbf(*MBF[arch], num_features)


def _layout(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _assert_same_layout(got, want):
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    assert not missing and not extra, f'missing {missing[:5]}, unexpected {extra[:5]}'
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f'shape mismatches (got, want): {dict(list(wrong.items())[:5])}'


@pytest.mark.parametrize('arch', ['r18', 'r34', 'r50', 'r100', 'r200', 'mbf', 'mbf_large'])
def test_state_dict_layout_matches_insightface(arch):
    with torch.device('meta'):  # Names and shapes only: skip allocating and initialising the weights.
        model = get_model(arch)
    _assert_same_layout(_layout(model), expected_layout(arch))


def test_architectures_cover_all_names():
    assert set(ARCHITECTURES) == set(IRESNET_LAYERS) | set(MBF)


def test_r100_reference_counts():
    with torch.device('meta'):
        model = get_model('r100')
    assert len(model.state_dict()) == 925
    assert sum(p.numel() for p in model.parameters()) == 65_156_160
    assert model.features.weight.requires_grad is False


def test_num_features_changes_only_the_head():
    with torch.device('meta'):
        r18, mbf = get_model('r18', num_features=128), get_model('mbf', num_features=128)
    _assert_same_layout(_layout(r18), expected_layout('r18', 128))
    _assert_same_layout(_layout(mbf), expected_layout('mbf', 128))


def test_unknown_arch_lists_known_names():
    with pytest.raises(ValueError, match='r100.*mbf'):
        get_model('r101')


def test_iresnet_constructors_and_init():
    model = backbones.iresnet18(zero_init_residual=True)
    _assert_same_layout(_layout(model), expected_layout('r18'))
    assert torch.all(model.layer2[1].bn2.weight == 0)  # zero_init_residual
    assert torch.all(model.layer2[1].bn1.weight == 1) and torch.all(model.layer2[1].bn1.bias == 0)
    assert torch.all(model.features.weight == 1) and not model.features.weight.requires_grad
    std = model.layer3[0].conv1.weight.std().item()
    assert 0.09 < std < 0.11  # N(0, 0.1)


# ---------------------------------------------------------------------------------------------------------------------
# Forward


def _randomize_bn_stats(model, seed=0):
    """Give every BatchNorm non-trivial statistics so a lost buffer changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope='module')
def r18():
    torch.manual_seed(0)
    return _randomize_bn_stats(get_model('r18'), 1)


@pytest.fixture(scope='module')
def mbf():
    torch.manual_seed(0)
    return _randomize_bn_stats(get_model('mbf'), 2)


@pytest.fixture(scope='module')
def faces():
    return torch.randn(2, 3, 112, 112, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize('arch', ['r18', 'mbf'])
@pytest.mark.parametrize('num_features', [512, 128])
def test_forward_shape(arch, num_features, faces):
    torch.manual_seed(0)
    model = get_model(arch, num_features=num_features).eval()
    with torch.no_grad():
        out = model(faces)
    assert out.shape == (2, num_features) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('shape', [(1, 3, 96, 96), (1, 1, 112, 112), (3, 112, 112)])
def test_forward_rejects_wrong_input(r18, mbf, shape):
    for model in (r18, mbf):
        with pytest.raises(ValueError, match=r'\[N, 3, 112, 112\]'):
            model(torch.zeros(shape))


@pytest.mark.parametrize('which', ['r18', 'mbf'])
def test_fp16_on_cpu_stays_float32(which, r18, mbf, faces):
    ref = r18 if which == 'r18' else mbf
    half = get_model(which, fp16=True)
    half.load_state_dict(ref.state_dict())
    half.eval()
    dtypes = []
    trunk = half.layer4 if which == 'r18' else half.layers[-1]
    hook = trunk.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    try:
        with torch.no_grad():
            out_half, out_ref = half(faces), ref(faces)
    finally:
        hook.remove()
    assert dtypes == [torch.float32]
    assert out_half.dtype == torch.float32
    assert torch.equal(out_half, out_ref)


# Functional forwards written from the insightface definitions: they pin down what names and shapes cannot (where the
# stride sits, pre-activation order, residual adds, the 7x7 GDC), and use only the state dict.


def _bn_f(sd, p, x):
    return F.batch_norm(x, sd[f'{p}.running_mean'], sd[f'{p}.running_var'], sd[f'{p}.weight'], sd[f'{p}.bias'],
                        training=False, eps=1e-5)


def _conv_f(sd, p, x, stride=1, padding=None):
    w = sd[p]
    groups = x.shape[1] // w.shape[1]
    return F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2 if padding is None else padding, groups=groups)


def reference_iresnet(sd, layers, x):
    x = F.prelu(_bn_f(sd, 'bn1', _conv_f(sd, 'conv1.weight', x)), sd['prelu.weight'])
    for li, n in enumerate(layers, start=1):
        for b in range(n):
            p, stride = f'layer{li}.{b}', 2 if b == 0 else 1
            out = _conv_f(sd, f'{p}.conv1.weight', _bn_f(sd, f'{p}.bn1', x))
            out = F.prelu(_bn_f(sd, f'{p}.bn2', out), sd[f'{p}.prelu.weight'])
            out = _bn_f(sd, f'{p}.bn3', _conv_f(sd, f'{p}.conv2.weight', out, stride=stride))
            if b == 0:
                x = _bn_f(sd, f'{p}.downsample.1', _conv_f(sd, f'{p}.downsample.0.weight', x, stride=2))
            x = out + x
    x = _bn_f(sd, 'bn2', x).flatten(1)
    return _bn_f(sd, 'features', F.linear(x, sd['fc.weight'], sd['fc.bias']))


def _cb_f(sd, p, x, stride=1, padding=None, act=True):
    x = _bn_f(sd, f'{p}.layers.1', _conv_f(sd, f'{p}.layers.0.weight', x, stride, padding))
    return F.prelu(x, sd[f'{p}.layers.2.weight']) if act else x


def _dw_f(sd, p, x, stride, residual):
    out = _cb_f(sd, f'{p}.layers.0', x)
    out = _cb_f(sd, f'{p}.layers.1', out, stride=stride)
    out = _cb_f(sd, f'{p}.layers.2', out, act=False)
    return x + out if residual else out


def reference_mbf(sd, blocks, x):
    x = _cb_f(sd, 'layers.0', x, stride=2)
    for i, n in zip((1, 3, 5, 7), blocks):
        if i == 1 and n == 1:
            x = _cb_f(sd, 'layers.1', x)
        else:
            for b in range(n):
                x = _dw_f(sd, f'layers.{i}.layers.{b}', x, 1, True)
        if i < 7:
            x = _dw_f(sd, f'layers.{i + 1}', x, 2, False)
    x = _cb_f(sd, 'conv_sep', x)
    x = _cb_f(sd, 'features.layers.0', x, padding=0, act=False)
    assert x.shape[-2:] == (1, 1)  # The GDC's 7x7 kernel consumes the whole map.
    x = F.linear(x.flatten(1), sd['features.layers.2.weight'])
    return _bn_f(sd, 'features.layers.3', x)


@pytest.mark.parametrize('which', ['r18', 'mbf'])
def test_forward_matches_reference(which, r18, mbf, faces):
    model = r18 if which == 'r18' else mbf
    sd = model.state_dict()
    with torch.no_grad():
        want = reference_iresnet(sd, IRESNET_LAYERS['r18'], faces) if which == 'r18' else \
            reference_mbf(sd, MBF['mbf'][0], faces)
        got = model(faces)
    assert_close_to_scale(got, want.numpy(), rel=1e-4, name=which)


def test_mbf_large_forward_matches_reference(faces):
    torch.manual_seed(0)
    model = _randomize_bn_stats(get_model('mbf_large'), 4)
    with torch.no_grad():
        want = reference_mbf(model.state_dict(), MBF['mbf_large'][0], faces[:1])
        assert_close_to_scale(model(faces[:1]), want.numpy(), rel=1e-4, name='mbf_large')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_fp16_on_cuda_runs_trunk_in_half():
    model = get_model('r18', fp16=True).cuda().eval()
    dtypes = []
    model.layer4.register_forward_hook(lambda mod, inp, out: dtypes.append(out.dtype))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112, device='cuda'))
    assert dtypes == [torch.float16] and out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: round trips


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize('which, wrap', [
    ('r18', 'plain'), ('r18', 'state_dict_backbone'),
    ('mbf', 'plain'), ('mbf', 'state_dict_backbone'), ('mbf', 'module_prefix'), ('mbf', 'model'),
])
def test_round_trip(tmp_path, which, wrap, r18, mbf, faces):
    model = r18 if which == 'r18' else mbf
    path = tmp_path / 'backbone.pth'
    if wrap == 'plain':
        save_backbone(model, path)
        stored = torch.load(path, map_location='cpu', weights_only=True)
        assert type(stored) is dict and stored.keys() == model.state_dict().keys()
        assert not [p for p in os.listdir(tmp_path) if '.tmp-' in p]
    else:
        sd = model.state_dict()
        if wrap == 'state_dict_backbone':  # Shaped like an insightface training checkpoint.
            obj = {'epoch': 3, 'global_step': 1000, 'state_dict_backbone': sd,
                   'state_dict_softmax_fc': {'weight': torch.zeros(4, 512)}}
        elif wrap == 'module_prefix':
            obj = {f'module.{k}': v for k, v in sd.items()}
        else:
            obj = {'model': {f'module.{k}': v for k, v in sd.items()}, 'note': 'x'}
        torch.save(obj, path)
    loaded = load_backbone(path, arch=which)
    _assert_same_state(loaded, model)
    with torch.no_grad():
        assert torch.equal(loaded(faces), model(faces))


def test_loaded_model_is_frozen_and_in_eval(tmp_path, r18):
    path = tmp_path / 'w.pth'
    save_backbone(r18, path)
    model = load_backbone(str(path), arch='r18')
    assert not model.training and not any(m.training for m in model.modules())
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.features.weight.requires_grad


def test_fresh_model_has_untrainable_feature_scale():
    model = get_model('r18')
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert 'features.weight' not in trainable and 'features.bias' in trainable and 'fc.weight' in trainable


def test_missing_bn_counters_are_tolerated(tmp_path, mbf, faces):
    path = tmp_path / 'old.pth'  # Saved before PyTorch 0.4.1 added BatchNorm's num_batches_tracked.
    torch.save({k: v for k, v in mbf.state_dict().items() if not k.endswith('num_batches_tracked')}, path)
    model = load_backbone(path, arch='mbf')
    with torch.no_grad():
        assert torch.equal(model(faces), mbf(faces))


def test_other_num_features_loads_when_asked(tmp_path):
    path = tmp_path / 'w128.pth'
    save_backbone(get_model('mbf', num_features=128), path)
    assert load_backbone(path, arch='mbf', num_features=128).features.layers[3].weight.shape == (128,)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints: errors


def _one_line_about(err, path):
    msg = str(err.value)
    assert '\n' not in msg, msg
    assert str(path) in msg, msg
    return msg


def test_r18_weights_as_r34(tmp_path, r18):
    path = tmp_path / 'weights.pth'
    save_backbone(r18, path)
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='r34')
    msg = _one_line_about(err, path)
    # BatchNorm step counters are tolerated when absent (see test_missing_bn_counters_are_tolerated), so not counted.
    n_missing = len({k for k in set(expected_layout('r34')) - set(expected_layout('r18'))
                     if not k.endswith('num_batches_tracked')})
    assert 'r34' in msg and f'{n_missing} missing keys' in msg and 'unexpected' not in msg
    assert 'layer1.2.' in msg  # the first missing key is named


def test_mbf_weights_as_r18(tmp_path, mbf):
    path = tmp_path / 'mbf.pth'
    save_backbone(mbf, path)
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='r18')
    msg = _one_line_about(err, path)
    assert 'missing keys' in msg and 'unexpected keys' in msg and 'r18' in msg


def test_shape_mismatch(tmp_path):
    path = tmp_path / 'r18_128.pth'
    save_backbone(get_model('r18', num_features=128), path)
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='r18')
    msg = _one_line_about(err, path)
    assert 'shape' in msg and 'fc.weight' in msg
    assert '[128, 25088]' in msg and '[512, 25088]' in msg


@pytest.mark.parametrize('seed', range(4))
def test_corrupt_file(tmp_path, seed):
    path = tmp_path / 'noise.pth'
    path.write_bytes(random.Random(seed).randbytes(4096))
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='r18')
    assert 'corrupt' in _one_line_about(err, path)


def test_truncated_file(tmp_path, mbf):
    path = tmp_path / 'truncated.pth'
    save_backbone(mbf, path)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='mbf')
    assert 'corrupt' in _one_line_about(err, path)


def test_missing_file(tmp_path):
    path = tmp_path / 'absent.pth'
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='r18')
    assert 'not found' in _one_line_about(err, path)


@pytest.mark.parametrize('obj', [[torch.zeros(1)], {'epoch': 1, 'lr': 0.1}, {}], ids=['list', 'no_tensors', 'empty'])
def test_not_a_state_dict(tmp_path, obj):
    path = tmp_path / 'odd.pth'
    torch.save(obj, path)
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='r18')
    _one_line_about(err, path)


def test_unknown_arch_is_apf_error(tmp_path):
    with pytest.raises(ApfError, match='r101.*known.*r100'):
        load_backbone(tmp_path / 'x.pth', arch='r101')


def _write_marker(path):
    Path(path).write_text('code ran')
    return {}


class _Trap:
    """Unpickling this calls _write_marker: it stands for any payload that would execute code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return _write_marker, (self.marker,)


def test_pickled_code_never_runs(tmp_path):
    marker = tmp_path / 'marker.txt'
    path = tmp_path / 'evil.pth'
    torch.save({'conv1.weight': torch.zeros(64, 3, 3, 3), 'payload': _Trap(marker)}, path)
    with pytest.raises(ApfError) as err:
        load_backbone(path, arch='r18')
    msg = _one_line_about(err, path)
    assert 'code' in msg and '_write_marker' in msg and 'corrupt' not in msg
    assert not marker.exists()
    # Control: an unsafe load does run the payload, so the check above would notice if load_backbone did.
    torch.load(path, map_location='cpu', weights_only=False)
    assert marker.exists()
