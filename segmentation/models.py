"""Segmentation networks for the downstream task: a U-Net and DeepLabV3 on a ResNet backbone, written here.

``build_model(arch, in_channels, num_classes, ...)`` returns a module mapping float images ``[N, in_channels, H, W]``
to logits ``[N, num_classes, H, W]`` for any ``H, W >= 16`` (odd sizes included). ``model.config`` holds the resolved
arguments, so ``build_model(**model.config)`` rebuilds the same architecture, e.g. when loading a checkpoint.

* ``unet``: the classic U-Net; ``width`` channels at the first level (default 32), ``depth`` downsamplings
  (default 4), channels doubling per level up to ``16 * width``. ``output_stride`` does not apply (``None``).
* ``deeplabv3_resnet{18,34,50}``: DeepLabV3 (ASPP head) on a dilated ResNet; ``width`` is the stem channel count
  (default 64, the standard ResNet; 8 or 16 give tiny CPU models), ``output_stride`` 16 or 8. ``depth`` does not
  apply (``None``). ``model.backbone(x)`` returns the layer4 feature map. The backbone's state-dict keys follow
  torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``, ...), so ImageNet weights could be loaded into it.
* ``deeplabv3_resnet50_tv``: torchvision's own DeepLabV3-ResNet50 (random init, nothing downloaded), for comparison;
  it has the fixed width 64 and output stride 8, and needs an importable torchvision.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

ARCHS = ('unet', 'deeplabv3_resnet18', 'deeplabv3_resnet34', 'deeplabv3_resnet50', 'deeplabv3_resnet50_tv')
UNET_MAX_DEPTH = 8
DROPOUT = 0.5  # after the ASPP projection, as in the paper and torchvision


class ModelError(ValueError):
    """A bad architecture name or parameter, or a missing dependency; the message is one line."""


def _check_int(name, value, low, high=None):
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        allowed = f'>= {low}' if high is None else f'in {low}..{high}'
        raise ModelError(f'{name} must be an integer {allowed}, got {value!r}')
    return value


def _conv_bn_relu(cin, cout, kernel=3, dilation=1):
    conv = nn.Conv2d(cin, cout, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _init_weights(model):
    # He initialisation as in the ResNet paper; BatchNorm keeps its default weight 1, bias 0.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    # The classifier keeps PyTorch's default init (uniform, bound 1 / sqrt(fan_in)) and a zero bias: logits start small,
    # near the uniform prediction, without He's large random logits. Shrinking it further (std 0.01) starves the
    # features of gradient: a width-8 U-Net then predicts only background for hundreds of steps on a trivial task.
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    last.reset_parameters()
    if last.bias is not None:
        nn.init.zeros_(last.bias)


# ---------------------------------------------------------------------------------------------------------------------
# U-Net


class UNet(nn.Module):
    def __init__(self, in_channels, num_classes, width, depth):
        super().__init__()
        self.depth = depth
        chans = [min(width * 2 ** i, 16 * width) for i in range(depth + 1)]
        double = lambda cin, cout: nn.Sequential(_conv_bn_relu(cin, cout), _conv_bn_relu(cout, cout))  # noqa: E731
        self.down = nn.ModuleList([double(in_channels, chans[0])] +
                                  [double(chans[i - 1], chans[i]) for i in range(1, depth + 1)])
        # Decoder, deepest level first: a 1x1 conv halving the channels, then two convs on [skip, upsampled].
        self.reduce = nn.ModuleList([nn.Conv2d(chans[i], chans[i - 1], 1) for i in range(depth, 0, -1)])
        self.up = nn.ModuleList([double(2 * chans[i - 1], chans[i - 1]) for i in range(depth, 0, -1)])
        self.classifier = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x):
        if min(x.shape[-2:]) < 2 ** self.depth:
            raise ModelError(f'unet of depth {self.depth} needs inputs of at least {2 ** self.depth} pixels a side, '
                             f'got {x.shape[-2]} x {x.shape[-1]}')
        skips = []
        for i, block in enumerate(self.down):
            x = block(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        skips.pop()  # the deepest level is x itself
        for reduce, block in zip(self.reduce, self.up):
            skip = skips.pop()
            # A 1x1 conv commutes with bilinear interpolation (weights summing to 1), so reducing first is the same
            # map at a quarter of the cost. Resizing to the skip's size is x2 for even sizes and also covers odd ones.
            x = F.interpolate(reduce(x), size=skip.shape[-2:], mode='bilinear', align_corners=False)
            x = block(torch.cat([skip, x], 1))
        return self.classifier(x)


# ---------------------------------------------------------------------------------------------------------------------
# DeepLabV3 on a dilated ResNet


def _shortcut(cin, cout, stride):
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, dilation):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, dilation, dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _shortcut(cin, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, dilation):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # Stride and dilation on the 3x3 conv ("ResNet v1.5", as torchvision).
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.downsample(x))


RESNETS = {
    'deeplabv3_resnet18': (BasicBlock, (2, 2, 2, 2)),
    'deeplabv3_resnet34': (BasicBlock, (3, 4, 6, 3)),
    'deeplabv3_resnet50': (Bottleneck, (3, 4, 6, 3)),
}
# Stages (layer2, layer3, layer4) whose stride 2 becomes a dilation, per output stride.
DILATED_STAGES = {16: (False, False, True), 8: (False, True, True)}


class ResNet(nn.Module):
    """ResNet without pooling and fc; forward returns the layer4 map at ``output_stride``."""

    def __init__(self, block, layers, in_channels, width, output_stride):
        super().__init__()
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin, dilation = width, 1
        for i, (count, dilate) in enumerate(zip(layers, (False,) + DILATED_STAGES[output_stride])):
            planes, stride, previous = width * 2 ** i, (2 if i else 1), dilation
            if dilate:
                dilation, stride = dilation * stride, 1
            # The first block still sees the previous resolution, so it keeps the previous dilation.
            blocks = [block(cin, planes, stride, previous)]
            cin = planes * block.expansion
            blocks += [block(cin, planes, 1, dilation) for _ in range(count - 1)]
            self.add_module(f'layer{i + 1}', nn.Sequential(*blocks))
        self.out_channels = cin

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPP(nn.Module):
    def __init__(self, cin, cout, rates):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates])
        # No BatchNorm on the pooled 1x1 map: a training batch of one would give it a single value per channel.
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.project = nn.Sequential(nn.Conv2d(cout * (len(rates) + 2), cout, 1, bias=False), nn.BatchNorm2d(cout),
                                     nn.ReLU(inplace=True), nn.Dropout(DROPOUT))

    def forward(self, x):
        pooled = self.pool(x).expand(-1, -1, *x.shape[-2:])  # upsampling a 1x1 map is a broadcast
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], 1))


class DeepLabV3(nn.Module):
    def __init__(self, arch, in_channels, num_classes, width, output_stride):
        super().__init__()
        block, layers = RESNETS[arch]
        self.backbone = ResNet(block, layers, in_channels, width, output_stride)
        channels = 4 * width  # 256 at the standard width 64
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.head = nn.Sequential(ASPP(self.backbone.out_channels, channels, rates), _conv_bn_relu(channels, channels),
                                  nn.Conv2d(channels, num_classes, 1))

    def forward(self, x):
        logits = self.head(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode='bilinear', align_corners=False)


# ---------------------------------------------------------------------------------------------------------------------
# torchvision's DeepLabV3, for comparison


class TorchvisionDeepLab(nn.Module):
    """torchvision's model returns a dict; this returns its 'out' logits like the other archs."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.backbone = net.backbone

    def forward(self, x):
        return self.net(x)['out']


def _torchvision_deeplab(in_channels, num_classes):
    try:
        from torchvision.models.segmentation import deeplabv3_resnet50
    except Exception as e:  # a broken install raises all sorts of errors, not only ImportError
        reason = (str(e).strip().splitlines() or [''])[0]
        raise ModelError(f'deeplabv3_resnet50_tv needs torchvision, which does not import here '
                         f'({type(e).__name__}: {reason}); use deeplabv3_resnet50') from None
    net = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    if in_channels != 3:
        net.backbone.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return TorchvisionDeepLab(net)


# ---------------------------------------------------------------------------------------------------------------------


def build_model(arch: str, in_channels: int, num_classes: int, width: int = None, output_stride: int = 16,
                depth: int = None) -> nn.Module:
    """A segmenter mapping ``[N, in_channels, H, W]`` to logits ``[N, num_classes, H, W]``, with ``.config``.

    ``width``/``depth`` of ``None`` take the arch's defaults; parameters that do not apply to the arch (``depth`` for
    DeepLab, ``output_stride`` for the U-Net) are ignored and recorded as ``None``.
    """
    if arch not in ARCHS:
        raise ModelError(f'unknown arch {arch!r}; choose one of {", ".join(ARCHS)}')
    _check_int('in_channels', in_channels, 1)
    _check_int('num_classes', num_classes, 2)
    if arch == 'unet':
        width = _check_int('width', 32 if width is None else width, 1)
        depth = _check_int('depth', 4 if depth is None else depth, 1, UNET_MAX_DEPTH)
        output_stride = None
        model = UNet(in_channels, num_classes, width, depth)
        _init_weights(model)
    else:
        depth = None
        output_stride = 16 if output_stride is None else output_stride
        if output_stride not in (8, 16):
            raise ModelError(f'output_stride must be 8 or 16 for {arch}, got {output_stride!r}')
        if arch == 'deeplabv3_resnet50_tv':
            if width not in (None, 64):
                raise ModelError(f'{arch} has the fixed width 64, got {width!r}; use deeplabv3_resnet50 for others')
            width, output_stride = 64, 8  # torchvision dilates layer3 and layer4
            model = _torchvision_deeplab(in_channels, num_classes)
        else:
            width = _check_int('width', 64 if width is None else width, 1)
            model = DeepLabV3(arch, in_channels, num_classes, width, output_stride)
            _init_weights(model)
    model.config = {'arch': arch, 'in_channels': in_channels, 'num_classes': num_classes, 'width': width,
                    'output_stride': output_stride, 'depth': depth}
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
