"""ArcFace backbones (insightface ``arcface_torch``): IResNet and MobileFaceNet.

Module names and tensor shapes follow the official models exactly, so a released ``backbone.pth`` loads with
``strict=True``. The conv trunk may run in fp16 on CUDA; the embedding head always runs in float32, as upstream does,
because the 25088-wide ``fc`` and the final BatchNorm lose too much precision in half.
"""

import torch
from torch import nn

__all__ = ['ARCHITECTURES', 'IBasicBlock', 'IResNet', 'MobileFaceNet', 'get_model']

INPUT_SIZE = 112  # Both families end in a fixed 7x7 map, so only 112x112 crops fit.

_IRESNET_LAYERS = {
    'r18': (2, 2, 2, 2),
    'r34': (3, 4, 6, 3),
    'r50': (3, 4, 14, 3),
    'r100': (3, 13, 30, 3),
    'r200': (6, 26, 60, 6),
}
_MBF_CONFIGS = {
    'mbf': dict(blocks=(1, 4, 6, 2), scale=2),
    'mbf_large': dict(blocks=(2, 8, 12, 4), scale=4),
}
ARCHITECTURES = tuple(_IRESNET_LAYERS) + tuple(_MBF_CONFIGS)


def _check_input(x: torch.Tensor, name: str) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(
            f'{name} expects input of shape [N, 3, {INPUT_SIZE}, {INPUT_SIZE}] (aligned face crops), '
            f'got {list(x.shape)}'
        )


def _autocast(x: torch.Tensor, fp16: bool):
    # Half precision only pays off (and is only what upstream tested) on CUDA; elsewhere stay in float32.
    return torch.autocast(device_type=x.device.type, enabled=bool(fp16) and x.device.type == 'cuda')


# ---------------------------------------------------------------------------------------------------------------------
# IResNet


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual block: BN -> conv -> BN -> PReLU -> conv(stride) -> BN, plus the shortcut."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError('IBasicBlock only supports groups=1 and base_width=64')
        if dilation > 1:
            raise NotImplementedError('IBasicBlock does not support dilation > 1')
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


class IResNet(nn.Module):
    fc_scale = 7 * 7  # Spatial size after layer4 for a 112x112 input.

    def __init__(self, block, layers, dropout=0, num_features=512, zero_init_residual=False, groups=1,
                 width_per_group=64, replace_stride_with_dilation=None, fp16=False):
        super().__init__()
        self.fp16 = fp16
        self.inplanes = 64
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError(f'replace_stride_with_dilation should be None or a 3-element sequence, '
                             f'got {replace_stride_with_dilation}')
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-5)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=2)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.bn2 = nn.BatchNorm2d(512 * block.expansion, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * block.expansion * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        # The embedding BN keeps a fixed unit scale (only its shift and statistics are learned).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, IBasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion, eps=1e-5),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x):
        _check_input(x, type(self).__name__)
        with _autocast(x, self.fp16):
            x = self.prelu(self.bn1(self.conv1(x)))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = self.bn2(x)
            x = torch.flatten(x, 1)
            x = self.dropout(x)
        x = self.fc(x.float())
        return self.features(x)


def _iresnet(name, **kwargs):
    return IResNet(IBasicBlock, list(_IRESNET_LAYERS[name]), **kwargs)


def iresnet18(**kwargs):
    return _iresnet('r18', **kwargs)


def iresnet34(**kwargs):
    return _iresnet('r34', **kwargs)


def iresnet50(**kwargs):
    return _iresnet('r50', **kwargs)


def iresnet100(**kwargs):
    return _iresnet('r100', **kwargs)


def iresnet200(**kwargs):
    return _iresnet('r200', **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# MobileFaceNet


class Flatten(nn.Module):
    def forward(self, x):
        return x.view(x.size(0), -1)


class ConvBlock(nn.Module):
    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x):
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv + BN without activation (the projection end of a bottleneck)."""

    def __init__(self, in_c, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0), groups=1):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x):
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: expand to `groups` channels (1x1), depthwise conv, project to `out_c` (1x1)."""

    def __init__(self, in_c, out_c, residual=False, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1):
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups, kernel=(1, 1), stride=(1, 1), padding=(0, 0)),
            ConvBlock(groups, groups, kernel=kernel, stride=stride, padding=padding, groups=groups),
            LinearBlock(groups, out_c, kernel=(1, 1), stride=(1, 1), padding=(0, 0)),
        )

    def forward(self, x):
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    def __init__(self, c, num_block, groups, kernel=(3, 3), stride=(1, 1), padding=(1, 1)):
        super().__init__()
        self.layers = nn.Sequential(
            *[DepthWise(c, c, True, kernel, stride, padding, groups) for _ in range(num_block)]
        )

    def forward(self, x):
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv over the 7x7 map, then a bias-free linear embedding and BatchNorm1d."""

    def __init__(self, embedding_size):
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=(7, 7), stride=(1, 1), padding=(0, 0), groups=512),
            Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )

    def forward(self, x):
        return self.layers(x)


class MobileFaceNet(nn.Module):
    def __init__(self, fp16=False, num_features=512, blocks=(1, 4, 6, 2), scale=2):
        super().__init__()
        self.fp16 = fp16
        self.scale = scale
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList()
        self.layers.append(ConvBlock(3, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1)))
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1)))
        self.layers.extend([
            DepthWise(c1, c1, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=128),
            Residual(c1, blocks[1], groups=128, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
            DepthWise(c1, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=256),
            Residual(c2, blocks[2], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
            DepthWise(c2, c2, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=512),
            Residual(c2, blocks[3], groups=256, kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
        ])
        self.conv_sep = ConvBlock(c2, 512, kernel=(1, 1), stride=(1, 1), padding=(0, 0))
        self.features = GDC(num_features)
        self._initialize_weights()

    def _initialize_weights(self):
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        _check_input(x, type(self).__name__)
        with _autocast(x, self.fp16):
            for layer in self.layers:
                x = layer(x)
        x = self.conv_sep(x.float())
        return self.features(x)


def get_mbf(fp16=False, num_features=512, blocks=(1, 4, 6, 2), scale=2):
    return MobileFaceNet(fp16=fp16, num_features=num_features, blocks=blocks, scale=scale)


def get_mbf_large(fp16=False, num_features=512, blocks=(2, 8, 12, 4), scale=4):
    return MobileFaceNet(fp16=fp16, num_features=num_features, blocks=blocks, scale=scale)


# ---------------------------------------------------------------------------------------------------------------------


def get_model(name: str, **kwargs) -> nn.Module:
    """Build a backbone by its insightface name ('r18' .. 'r200', 'mbf', 'mbf_large').

    IResNet takes all IResNet keyword arguments; MobileFaceNet only `fp16` and `num_features`, like upstream.
    """
    if name in _IRESNET_LAYERS:
        return _iresnet(name, **kwargs)
    if name in _MBF_CONFIGS:
        return MobileFaceNet(fp16=kwargs.get('fp16', False), num_features=kwargs.get('num_features', 512),
                             **_MBF_CONFIGS[name])
    raise ValueError(f'unknown backbone {name!r}; known: {", ".join(ARCHITECTURES)}')
