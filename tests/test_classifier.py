"""interpreter.classifier: the authors' checkpoint loads and computes what its tensors say, the >= 32-class layout,
save/load round trips in the originals' DataParallel format, the initialisation, and one-line errors."""

import os

import pytest
import torch

from conftest import shared_dir
from interpreter.classifier import PixelClassifier, load_classifier, load_ensemble, save_classifier
from training.legacy import CheckpointError

MODEL_0 = shared_dir() / 'data' / 'crosseyed_example' / 'models' / 'model_0.pth'


@pytest.fixture(scope='module')
def model_0():
    if not MODEL_0.is_file():
        if os.environ.get('BIGAN_REQUIRE_SHARED'):
            pytest.fail(f'{MODEL_0} not found')
        pytest.skip(f'{MODEL_0} not found (set BIGAN_SHARED)')
    return MODEL_0


def reference_forward(sd, x, prefix='module.layers.'):
    """The eval-mode MLP written out from the raw tensors (float64): Linear, ReLU, BatchNorm with running stats."""
    t = {k[len(prefix):]: v.double() for k, v in sd.items() if not k.endswith('num_batches_tracked')}

    def linear(h, i):
        return h @ t[f'{i}.weight'].T + t[f'{i}.bias']

    def batchnorm(h, i, eps=1e-5):
        scale = t[f'{i}.weight'] / torch.sqrt(t[f'{i}.running_var'] + eps)
        return (h - t[f'{i}.running_mean']) * scale + t[f'{i}.bias']

    h = batchnorm(torch.relu(linear(x.double(), 0)), 2)
    h = batchnorm(torch.relu(linear(h, 3)), 5)
    return linear(h, 6)


def test_authors_checkpoint_matches_its_tensors(model_0):
    sd = torch.load(model_0, map_location='cpu', weights_only=True)['model_state_dict']
    model = load_classifier(model_0)
    assert (model.numpy_class, model.dim) == (4, 4992)
    assert not model.training  # loaded for inference
    x = torch.randn(64, 4992, generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        out = model(x)
    ref = reference_forward(sd, x)
    assert out.shape == (64, 4)
    err = (out.double() - ref).abs().max().item()
    assert err <= 1e-5 * ref.abs().max().item(), err
    # The running statistics matter: the same input through a fresh BatchNorm would give something else.
    assert not torch.allclose(sd['module.layers.2.running_var'], torch.ones(128))
    # Explicit shapes are checked; mismatches name the file and the key of the config.
    load_classifier(model_0, numpy_class=4, dim=4992)
    with pytest.raises(CheckpointError) as info:
        load_classifier(model_0, numpy_class=5)
    assert 'model_0.pth' in str(info.value) and 'number_class' in str(info.value) and '\n' not in str(info.value)
    with pytest.raises(CheckpointError) as info:
        load_classifier(model_0, dim=6016)
    assert 'model_0.pth' in str(info.value) and '4992' in str(info.value)


def test_layouts():
    small = PixelClassifier(31, 10)
    assert [tuple(p.shape) for p in small.layers[0].parameters()] == [(128, 10), (128,)]
    assert small.layers[3].weight.shape == (32, 128) and small.layers[6].weight.shape == (31, 32)
    big = PixelClassifier(32, 10)
    assert big.layers[0].weight.shape == (256, 10) and big.layers[2].num_features == 256
    assert big.layers[3].weight.shape == (128, 256) and big.layers[5].num_features == 128
    assert big.layers[6].weight.shape == (32, 128)
    assert [type(m).__name__ for m in big.layers] == ['Linear', 'ReLU', 'BatchNorm1d', 'Linear', 'ReLU',
                                                       'BatchNorm1d', 'Linear']
    assert sorted({k.split('.')[1] for k in big.state_dict()}) == ['0', '2', '3', '5', '6']


@pytest.mark.parametrize('numpy_class', [3, 34])
def test_save_load_round_trip(tmp_path, numpy_class):
    torch.manual_seed(1)
    model = PixelClassifier(numpy_class, 40)
    model.init_weights()
    model.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            model(torch.randn(50, 40) * 2 + 1)
    model.eval()
    path = tmp_path / 'model_0.pth'
    save_classifier(path, torch.nn.DataParallel(model))  # wrapped or not: the same file
    raw = torch.load(path, map_location='cpu', weights_only=True)
    assert list(raw) == ['model_state_dict']
    assert sorted(raw['model_state_dict']) == sorted(f'module.{k}' for k in model.state_dict())
    assert not any(name.endswith('.tmp') or '.tmp-' in name for name in os.listdir(tmp_path))
    loaded = load_classifier(path)
    assert (loaded.numpy_class, loaded.dim) == (numpy_class, 40)
    x = torch.randn(20, 40)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert torch.allclose(loaded(x).double(), reference_forward(raw['model_state_dict'], x), atol=1e-5)
    # The originals' way of loading: a DataParallel-wrapped classifier with strict key matching.
    wrapped = torch.nn.DataParallel(PixelClassifier(numpy_class, 40))
    wrapped.load_state_dict(raw['model_state_dict'])
    # Plain "layers.*" keys (saved without the wrapper) load too.
    torch.save({'model_state_dict': model.state_dict()}, tmp_path / 'plain.pth')
    with torch.no_grad():
        assert torch.equal(load_classifier(tmp_path / 'plain.pth').eval()(x), model(x))


def test_init_weights_statistics():
    model = PixelClassifier(4, 4992)
    model.init_weights(generator=torch.Generator().manual_seed(0))
    w = model.layers[0].weight
    assert abs(w.std().item() - 0.02) < 0.0005 and abs(w.mean().item()) < 0.0005
    for idx in (0, 3, 6):
        assert torch.count_nonzero(model.layers[idx].bias) == 0
    for idx in (2, 5):  # BatchNorm1d keeps PyTorch's defaults
        bn = model.layers[idx]
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.count_nonzero(bn.bias) == 0
    a = PixelClassifier(4, 30)
    b = PixelClassifier(4, 30)
    a.init_weights(generator=torch.Generator().manual_seed(5))
    b.init_weights(generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError):
        a.init_weights('uniform')


def test_bad_checkpoints_give_one_line_errors(tmp_path):
    save_classifier(tmp_path / 'good.pth', PixelClassifier(4, 16))
    good = (tmp_path / 'good.pth').read_bytes()
    (tmp_path / 'corrupt.pth').write_bytes(good[:len(good) // 2])  # a truncated download
    (tmp_path / 'text.pth').write_text('hello')
    torch.save({'model_state_dict': {'module.layers.0.weight': torch.zeros(3)}}, tmp_path / 'vector.pth')
    sd = PixelClassifier(4, 16).state_dict()
    sd['layers.3.weight'] = torch.zeros(31, 128)  # wrong inner shape
    torch.save({'model_state_dict': sd}, tmp_path / 'shapes.pth')
    sd = PixelClassifier(4, 16).state_dict()
    sd['layers.0.weight'] = torch.zeros(256, 16)  # 256 hidden units with 4 classes: not the original layout
    sd['layers.0.bias'] = torch.zeros(256)
    torch.save({'model_state_dict': sd}, tmp_path / 'layout.pth')
    torch.save({'model_state_dict': {'net.0.weight': torch.zeros(2, 2)}}, tmp_path / 'foreign.pth')
    torch.save([1, 2, 3], tmp_path / 'list.pth')
    expected = {'corrupt.pth': 'not a readable', 'text.pth': 'not a readable', 'vector.pth': 'not a matrix',
                'shapes.pth': 'layers.3.weight',
                'layout.pth': '256 rows', 'foreign.pth': "'net.0.weight'", 'list.pth': 'model_state_dict',
                'missing.pth': 'file not found'}
    for name, fragment in expected.items():
        with pytest.raises(CheckpointError) as info:
            load_classifier(tmp_path / name)
        message = str(info.value)
        assert '\n' not in message and str(tmp_path / name) in message and fragment in message, message


def test_pickled_code_is_never_run(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ('echo should-not-run > ' + str(tmp_path / 'ran'),))

    torch.save({'model_state_dict': Boom()}, tmp_path / 'evil.pth')
    with pytest.raises(CheckpointError):
        load_classifier(tmp_path / 'evil.pth')
    assert not (tmp_path / 'ran').exists()


def test_load_ensemble(tmp_path):
    (tmp_path / 'models').mkdir()
    models = []
    for k in range(3):
        torch.manual_seed(k)
        m = PixelClassifier(5, 12)
        m.init_weights()
        save_classifier(tmp_path / 'models' / f'model_{k}.pth', m)
        models.append(m.eval())
    loaded = load_ensemble(tmp_path, 3)
    x = torch.randn(7, 12)
    with torch.no_grad():
        for a, b in zip(loaded, models):
            assert torch.equal(a(x), b(x))
    with pytest.raises(CheckpointError) as info:
        load_ensemble(tmp_path, 4)
    assert 'model_3.pth' in str(info.value) and 'file not found' in str(info.value)
    save_classifier(tmp_path / 'models' / 'model_2.pth', PixelClassifier(6, 12))  # a member that disagrees
    with pytest.raises(CheckpointError) as info:
        load_ensemble(tmp_path, 3)
    assert 'model_2.pth' in str(info.value) and '6 classes' in str(info.value)
