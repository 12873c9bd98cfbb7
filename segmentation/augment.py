"""Batch augmentation for segmentation training, on the training device, drawn from an explicit generator.

Geometry (one random affine per sample, the same for image and mask): horizontal flip (``hflip``), optional vertical
flip (``vflip``; off by default, eyes and faces are not upside down), and a scale-crop: zoom by a factor in
``[1/scale, scale]`` around a random centre that keeps the view inside the image when zooming in. Images are
resampled bilinearly, masks by nearest neighbour; pixels that come from outside the image (zooming out) become
``IGNORE_INDEX`` in the mask and the edge colour in the image, so they are not learnt as a class.

Photometric jitter is drawn **per modality**: RGB gets brightness, contrast and saturation factors; NIR its own
brightness and contrast factors (an NIR camera has its own exposure, and the two heads are different sensors).

All random numbers come from the ``torch.Generator`` passed in (CPU), so a run is reproducible and resumable.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segmentation.metrics import IGNORE_INDEX


@dataclass
class AugmentOptions:
    hflip: bool = True
    vflip: bool = False
    scale: float = 1.25  # zoom range [1/scale, scale]; 1 = no scale-crop
    jitter: float = 0.2  # brightness/contrast/saturation factors in [1 - jitter, 1 + jitter]; 0 = none

    def __post_init__(self):
        if not 1 <= self.scale <= 4:
            raise ValueError(f'augmentation scale must be in 1..4, got {self.scale}')
        if not 0 <= self.jitter < 1:
            raise ValueError(f'colour jitter must be in [0, 1), got {self.jitter}')

    @property
    def enabled(self):
        return self.hflip or self.vflip or self.scale > 1 or self.jitter > 0


def _uniform(n, low, high, gen):
    return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)


def _affine(n, opts, gen):
    """[n, 2, 3] float64 affine maps output -> input in normalised coordinates."""
    log_s = _uniform(n, -1, 1, gen) * torch.log(torch.tensor(opts.scale, dtype=torch.float64))
    zoom = torch.exp(log_s)  # > 1 zooms in
    half = 1 / zoom  # half-size of the view in normalised units
    # Zooming in: keep the view inside the image; zooming out: centre it anywhere the view still covers the image.
    room = (1 - half).abs()
    cx, cy = (_uniform(n, -1, 1, gen) * room for _ in range(2))
    fx = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double() if opts.hflip else torch.ones(n).double()
    fy = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).double() if opts.vflip else torch.ones(n).double()
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = half * fx, cx
    theta[:, 1, 1], theta[:, 1, 2] = half * fy, cy
    return theta


def _grey(rgb):
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]).unsqueeze(1)


def _jitter(x, brightness, contrast, saturation=None):
    """x in [0, 1], [N, C, H, W]; factors [N]. Contrast pulls towards the mean grey of each image."""
    shape = (-1, 1, 1, 1)
    x = x * brightness.view(shape)
    grey = _grey(x) if x.shape[1] == 3 else x
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * contrast.view(shape)
    if saturation is not None:
        grey = _grey(x)
        x = grey + (x - grey) * saturation.view(shape)
    return x.clamp(0, 1)


def augment(images, masks, modality, opts: AugmentOptions, gen: torch.Generator):
    """images float [N, C, H, W] in [0, 1], masks int64 [N, H, W] -> augmented copies (same device and dtype)."""
    n = images.shape[0]
    if not opts.enabled or n == 0:
        return images, masks
    if opts.hflip or opts.vflip or opts.scale > 1:
        theta = _affine(n, opts, gen).to(images.device, torch.float32)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode='bilinear', padding_mode='border', align_corners=False)
        # Nearest-neighbour mask plus a validity channel (zero padding) that marks pixels taken from outside.
        labels = torch.stack([masks.float(), torch.ones_like(masks, dtype=torch.float32)], 1)
        labels = F.grid_sample(labels, grid, mode='nearest', padding_mode='zeros', align_corners=False)
        masks = torch.where(labels[:, 1] > 0.5, labels[:, 0].round().long(), torch.full_like(masks, IGNORE_INDEX))
    if opts.jitter > 0:
        j = opts.jitter
        factors = _uniform(5 * n, 1 - j, 1 + j, gen).float().to(images.device).view(5, n)
        parts = []
        if modality in ('rgb', 'rgbnir'):
            parts.append(_jitter(images[:, :3], factors[0], factors[1], factors[2]))
        if modality in ('nir', 'rgbnir'):
            parts.append(_jitter(images[:, -1:], factors[3], factors[4]))
        images = torch.cat(parts, 1)
    return images, masks
