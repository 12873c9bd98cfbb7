"""segmentation.models: output shapes for every arch, input channel count and size (odd ones included), rebuilding
from ``model.config``, the DeepLab backbone's output stride and ResNet layout, and one-line ModelErrors."""

import importlib.util

import pytest
import torch

from segmentation.models import ARCHS, ModelError, build_model, count_parameters

CONFIGS = {
    'unet': dict(arch='unet', width=4),
    'deeplabv3_resnet18': dict(arch='deeplabv3_resnet18', width=4),
    'deeplabv3_resnet50-os8': dict(arch='deeplabv3_resnet50', width=8, output_stride=8),
    'deeplabv3_resnet50-os16': dict(arch='deeplabv3_resnet50', width=8, output_stride=16),
}
SIZES = [32, 64, 128, 256, 512]


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _forward(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize('size', SIZES)
@pytest.mark.parametrize('name', list(CONFIGS))
def test_output_shape_per_size(name, size):
    in_channels = (1, 3, 4)[SIZES.index(size) % 3]
    torch.manual_seed(0)
    model = build_model(in_channels=in_channels, num_classes=5, **CONFIGS[name])
    n = 2 if size <= 128 else 1
    out = _forward(model, torch.randn(n, in_channels, size, size))
    assert out.shape == (n, 5, size, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize('in_channels', [1, 3, 4])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_in_channels(name, in_channels):
    model = build_model(in_channels=in_channels, num_classes=3, **CONFIGS[name])
    assert _forward(model, torch.randn(2, in_channels, 32, 32)).shape == (2, 3, 32, 32)
    with pytest.raises(RuntimeError):  # the channel count is part of the network, not adapted at run time
        _forward(model, torch.randn(1, in_channels + 1, 32, 32))


@pytest.mark.parametrize('hw', [(33, 33), (47, 35), (16, 50)])
@pytest.mark.parametrize('name', list(CONFIGS))
def test_odd_sizes(name, hw):
    model = build_model(in_channels=4, num_classes=4, **CONFIGS[name])
    assert _forward(model, torch.randn(1, 4, *hw)).shape == (1, 4, *hw)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_train_mode_backward_reaches_every_parameter(name):
    model = build_model(in_channels=4, num_classes=3, **CONFIGS[name]).train()
    logits = model(torch.randn(2, 4, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 32, 32))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


@pytest.mark.parametrize('name', list(CONFIGS))
def test_rebuild_from_config(name):
    torch.manual_seed(0)
    model = build_model(in_channels=4, num_classes=4, **CONFIGS[name])
    cfg = dict(model.config)
    assert set(cfg) == {'arch', 'in_channels', 'num_classes', 'width', 'output_stride', 'depth'}
    assert cfg['in_channels'] == 4 and cfg['num_classes'] == 4 and cfg['width'] == CONFIGS[name]['width']
    torch.manual_seed(1)
    again = build_model(**cfg)
    assert again.config == cfg
    a, b = model.state_dict(), again.state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and a[k].dtype == b[k].dtype for k in a)
    again.load_state_dict(a)  # strict: every key fits
    x = torch.randn(1, 4, 40, 40)
    assert torch.equal(_forward(model, x), _forward(again, x))


def test_config_records_the_resolved_defaults():
    unet = build_model('unet', 3, 2, output_stride=8)
    assert unet.config == {'arch': 'unet', 'in_channels': 3, 'num_classes': 2, 'width': 32, 'output_stride': None,
                           'depth': 4}
    deeplab = build_model('deeplabv3_resnet18', 3, 2, width=8, output_stride=None, depth=3)
    assert deeplab.config == {'arch': 'deeplabv3_resnet18', 'in_channels': 3, 'num_classes': 2, 'width': 8,
                              'output_stride': 16, 'depth': None}


@pytest.mark.parametrize('size', [64, 128])
@pytest.mark.parametrize('arch, width', [('deeplabv3_resnet18', 4), ('deeplabv3_resnet50', 8)])
@pytest.mark.parametrize('stride', [8, 16])
def test_backbone_output_stride(arch, width, stride, size):
    model = build_model(arch, 3, 2, width=width, output_stride=stride).eval()
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, size, size))
    assert features.shape[-2:] == (size // stride, size // stride)
    assert features.shape[1] == width * 8 * (4 if arch.endswith('50') else 1)


@pytest.mark.parametrize('arch, expected', [
    # torchvision's resnet18 / resnet50 parameter counts (11,689,512 / 25,557,032) less the 1000-class fc layer.
    ('deeplabv3_resnet18', 11_689_512 - 513_000),
    ('deeplabv3_resnet50', 25_557_032 - 2_049_000),
])
def test_full_width_backbone_is_the_standard_resnet(arch, expected):
    model = build_model(arch, 3, 2)  # width 64: the standard ResNet
    assert count_parameters(model.backbone) == expected
    keys = model.backbone.state_dict()
    for key in ('conv1.weight', 'bn1.running_mean', 'layer1.0.conv1.weight', 'layer2.0.downsample.0.weight',
                'layer4.1.bn2.weight'):
        assert key in keys
    assert keys['conv1.weight'].shape == (64, 3, 7, 7)


def test_unet_too_small_input_is_a_model_error():
    model = build_model('unet', 1, 2, width=2, depth=4)
    with pytest.raises(ModelError, match='at least 16'):
        _forward(model, torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize('kwargs, fragment', [
    (dict(arch='resnet'), 'unknown arch'),
    (dict(arch='deeplabv3_resnet18', output_stride=32), 'output_stride'),
    (dict(arch='deeplabv3_resnet50', output_stride=4), 'output_stride'),
    (dict(arch='unet', width=0), 'width'),
    (dict(arch='unet', depth=9), 'depth'),
    (dict(arch='unet', num_classes=1), 'num_classes'),
    (dict(arch='deeplabv3_resnet18', in_channels=0), 'in_channels'),
    (dict(arch='unet', width=2.5), 'width'),
])
def test_model_errors(kwargs, fragment):
    args = dict(in_channels=3, num_classes=3)
    args.update(kwargs)
    with pytest.raises(ModelError) as info:
        build_model(**args)
    message = str(info.value)
    assert fragment in message and '\n' not in message
    assert isinstance(info.value, ValueError)


def test_archs_listed():
    assert set(ARCHS) >= {'unet', 'deeplabv3_resnet18', 'deeplabv3_resnet34', 'deeplabv3_resnet50',
                          'deeplabv3_resnet50_tv'}


def test_torchvision_arch_without_torchvision_is_a_one_line_model_error():
    if importlib.util.find_spec('torchvision') is not None:
        try:
            import torchvision  # noqa: F401
        except Exception:
            pass
        else:
            pytest.skip('torchvision imports here')
    with pytest.raises(ModelError) as info:
        build_model('deeplabv3_resnet50_tv', 4, 4)
    message = str(info.value)
    assert '\n' not in message and 'torchvision' in message and 'deeplabv3_resnet50' in message
