"""Adaptive discriminator augmentation (ADA): the StyleGAN2-ADA augmentation pipe and the rule that tunes its
strength during training.

``AugmentPipe`` takes a batch ``[N, C, H, W]`` (real or generated images in [-1, 1]) and returns an augmented batch
of the same shape. It runs four stages, each only when one of its probability multipliers is positive:

1. geometry: pixel blitting (x-flip, rotation by multiples of 90 degrees, integer translation) and general
   transforms (isotropic scale, pre-rotation, anisotropic scale, post-rotation, fractional translation), all folded
   into one inverse affine matrix per sample and applied in one resampling: reflect padding, 2x upsampling with the
   sym6 wavelet filter, bilinear ``grid_sample``, filtered 2x downsampling;
2. colour: brightness, contrast, luma flip, hue rotation and saturation, folded into one 4x4 matrix per sample;
3. image-space filtering: random gains for four frequency bands, applied as one separable 43-tap filter;
4. corruptions: additive Gaussian noise and cutout.

Every transform is applied to each sample independently with probability ``multiplier * p``; ``p`` is a buffer
that the training loop sets (and ADA adjusts), the multipliers are constructor arguments. Random numbers come from
torch's global generator on the images' device, drawn in upstream's order and count (for every sample, whether or
not it ends up transformed), so a seeded run draws the same transforms as StyleGAN2-ADA. The pipe is
differentiable with respect to the images to any order (R1 is computed through it).

One-channel images (the NIR branch) go through every stage; the colour matrix is reduced to the luma row (the
average of its RGB rows), hue and saturation are skipped as upstream does. Upstream refuses other channel counts in
the colour stage; here each channel is then treated like a one-channel image (see ``_apply_colour``).

Two deliberate differences from upstream, both invisible at float32 resolution: when every sample of a batch drew
the identity for the geometric stage, or for every filter band, that stage is skipped (upstream resamples anyway,
which changes pixels by up to ~4e-6), so ``p = 0`` returns the input exactly; and reflect padding larger than the
image (only the 43-tap filter on images under 22 pixels, where upstream raises) reflects repeatedly like
``numpy.pad(mode='reflect')``.
"""

import numpy as np
import torch
import torch.nn.functional as F

from torch_utils import misc, persistence
from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix, upfirdn2d

# ------------------------------------------------------------------------------------------------ constants

#: Low-pass decomposition coefficients of the two wavelets the pipe uses.
wavelets = {
    'sym2': [-0.12940952255092145, 0.22414386804185735, 0.836516303737469, 0.48296291314469025],
    'sym6': [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
             0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
             -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148],
}

_BLIT = dict(xflip=1, rotate90=1, xint=1)
_GEOM = dict(scale=1, rotate=1, aniso=1, xfrac=1)
_COLOR = dict(brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

#: The ``--augpipe`` presets of StyleGAN2-ADA's train.py, as AugmentPipe keyword arguments.
augpipe_specs = {
    'blit': dict(_BLIT),
    'geom': dict(_GEOM),
    'color': dict(_COLOR),
    'filter': dict(imgfilter=1),
    'noise': dict(noise=1),
    'cutout': dict(cutout=1),
    'bg': dict(**_BLIT, **_GEOM),
    'bgc': dict(**_BLIT, **_GEOM, **_COLOR),
    'bgcf': dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1),
    'bgcfn': dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1),
    'bgcfnc': dict(**_BLIT, **_GEOM, **_COLOR, imgfilter=1, noise=1, cutout=1),
}

# Relative power of the four filter bands in a typical image (low band first); the band gains are normalised so
# that the expected output power stays that of the input.
_EXPECTED_BAND_POWER = [10 / 13, 1 / 13, 1 / 13, 1 / 13]


def build_filter_bank(lowpass, num_bands=4):
    """The ``[num_bands, W]`` bank of symmetric zero-phase filters that splits an image into octave bands.

    Built from a wavelet's low-pass taps: ``lo2``/``hi2`` are the autocorrelations (halved) of the low-pass filter
    and of its quadrature mirror. Starting from a unit impulse in row 0, each level stretches every row by two
    (a zero between taps), smooths it with ``lo2`` and adds ``hi2`` at the centre of row ``level``. The rows sum to
    a unit impulse, so unit gains reproduce the input. sym2 gives widths 1 -> 7 -> 19 -> 43.
    """
    lo = np.asarray(lowpass, dtype=np.float64)
    hi = lo * (-1.0) ** np.arange(lo.size)
    lo2 = np.convolve(lo, lo[::-1]) / 2
    hi2 = np.convolve(hi, hi[::-1]) / 2
    bank = np.zeros([num_bands, 1])
    bank[0, 0] = 1
    for level in range(1, num_bands):
        stretched = np.zeros([num_bands, bank.shape[1] * 2 - 1])
        stretched[:, ::2] = bank
        bank = np.stack([np.convolve(row, lo2) for row in stretched])
        start = (bank.shape[1] - hi2.size) // 2
        bank[level, start:start + hi2.size] += hi2
    return bank


# --------------------------------------------------------------------------------------- matrix helpers
# Per-sample parameters are [N] tensors; a matrix whose entries include any is [N, R, C], otherwise [R, C].
# Everything is float32 on the parameters' device, as the random draws are.


def _matrix(*rows, device=None):
    entries = [v for row in rows for v in row]
    ref = next((v for v in entries if isinstance(v, torch.Tensor)), None)
    if ref is None:
        return misc.constant(np.asarray(rows, dtype=np.float32), dtype=torch.float32, device=device)
    entries = [v if isinstance(v, torch.Tensor) else torch.full_like(ref, float(v)) for v in entries]
    return torch.stack(entries, dim=-1).reshape(ref.shape + (len(rows), len(rows[0])))


def translate2d(tx, ty, **kwargs):
    return _matrix([1, 0, tx], [0, 1, ty], [0, 0, 1], **kwargs)


def translate3d(tx, ty, tz, **kwargs):
    return _matrix([1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1], **kwargs)


def scale2d(sx, sy, **kwargs):
    return _matrix([sx, 0, 0], [0, sy, 0], [0, 0, 1], **kwargs)


def scale3d(sx, sy, sz, **kwargs):
    return _matrix([sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1], **kwargs)


def rotate2d(theta, **kwargs):
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([c, -s, 0], [s, c, 0], [0, 0, 1], **kwargs)


def rotate3d(v, theta, **kwargs):
    """Rotation by ``theta`` about the unit axis ``v`` (first three entries used), in homogeneous 4x4 form."""
    vx, vy, vz = v[0], v[1], v[2]
    c, s = torch.cos(theta), torch.sin(theta)
    d = 1 - c
    return _matrix(
        [vx * vx * d + c, vx * vy * d - vz * s, vx * vz * d + vy * s, 0],
        [vy * vx * d + vz * s, vy * vy * d + c, vy * vz * d - vx * s, 0],
        [vz * vx * d - vy * s, vz * vy * d + vx * s, vz * vz * d + c, 0],
        [0, 0, 0, 1], **kwargs)


def translate2d_inv(tx, ty, **kwargs):
    return translate2d(-tx, -ty, **kwargs)


def scale2d_inv(sx, sy, **kwargs):
    return scale2d(1 / sx, 1 / sy, **kwargs)


def rotate2d_inv(theta, **kwargs):
    return rotate2d(-theta, **kwargs)


# ----------------------------------------------------------------------------------------- image helpers


def reflect_pad(x, pad):
    """Reflect-pad ``x`` [N, C, H, W] by ``pad = [left, right, top, bottom]`` (no edge repeat, like numpy's
    'reflect'). Pads up to one less than the image size are a single ``F.pad``; larger ones reflect again from the
    new edge, which continues the same mirrored signal because every intermediate edge is one of its symmetry
    points. A 1-pixel-wide axis is repeated."""
    left, right, top, bottom = (int(v) for v in pad)
    while left or right or top or bottom:
        height, width = x.shape[2], x.shape[3]
        if width == 1 and (left or right):
            x = F.pad(x, [left, right, 0, 0], mode='replicate')
            left = right = 0
            continue
        if height == 1 and (top or bottom):
            x = F.pad(x, [0, 0, top, bottom], mode='replicate')
            top = bottom = 0
            continue
        step = [min(left, width - 1), min(right, width - 1), min(top, height - 1), min(bottom, height - 1)]
        x = F.pad(x, step, mode='reflect')
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x


# ------------------------------------------------------------------------------------------- the pipe


@persistence.persistent_class
class AugmentPipe(torch.nn.Module):
    """StyleGAN2-ADA's augmentation pipe; keywords, defaults and state dict as upstream (see the module doc)."""

    def __init__(self,
                 xflip=0, rotate90=0, xint=0, xint_max=0.125,
                 scale=0, rotate=0, aniso=0, xfrac=0, scale_std=0.2, rotate_max=1, aniso_std=0.2, xfrac_std=0.125,
                 brightness=0, contrast=0, lumaflip=0, hue=0, saturation=0, brightness_std=0.2, contrast_std=0.5,
                 hue_max=1, saturation_std=1,
                 imgfilter=0, imgfilter_bands=[1, 1, 1, 1], imgfilter_std=1,  # noqa: B006 (upstream's default)
                 noise=0, cutout=0, noise_std=0.1, cutout_size=0.5):
        super().__init__()
        self.register_buffer('p', torch.ones([]))  # overall multiplier; the training loop sets it, ADA tunes it

        # Pixel blitting.
        self.xflip = float(xflip)          # probability multiplier for x-flip
        self.rotate90 = float(rotate90)    # ... for rotation by a multiple of 90 degrees
        self.xint = float(xint)            # ... for integer translation
        self.xint_max = float(xint_max)    # range of integer translation, relative to the image size

        # General geometric transformations.
        self.scale = float(scale)          # probability multiplier for isotropic scaling
        self.rotate = float(rotate)        # ... for arbitrary rotation (pre + post)
        self.aniso = float(aniso)          # ... for anisotropic scaling
        self.xfrac = float(xfrac)          # ... for fractional translation
        self.scale_std = float(scale_std)  # log2 standard deviation of isotropic scaling
        self.rotate_max = float(rotate_max)  # range of rotation, in units of pi (1 = full circle)
        self.aniso_std = float(aniso_std)  # log2 standard deviation of anisotropic scaling
        self.xfrac_std = float(xfrac_std)  # standard deviation of fractional translation, relative to the size

        # Colour transformations.
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)  # standard deviation of the additive brightness
        self.contrast_std = float(contrast_std)      # log2 standard deviation of contrast
        self.hue_max = float(hue_max)                # range of hue rotation, in units of pi
        self.saturation_std = float(saturation_std)  # log2 standard deviation of saturation

        # Image-space filtering.
        self.imgfilter = float(imgfilter)
        self.imgfilter_bands = list(imgfilter_bands)  # relative strength of each band
        self.imgfilter_std = float(imgfilter_std)     # log2 standard deviation of the band gains

        # Corruptions.
        self.noise = float(noise)
        self.cutout = float(cutout)
        self.noise_std = float(noise_std)      # standard deviation of the noise's standard deviation
        self.cutout_size = float(cutout_size)  # side of the cutout square, relative to the image size

        # Filters: the sym6 low-pass (12 taps, separable) for resampling and the sym2-based band filters.
        self.register_buffer('Hz_geom', upfirdn2d.setup_filter(wavelets['sym6']))
        self.register_buffer('Hz_fbank', torch.as_tensor(build_filter_bank(wavelets['sym2']), dtype=torch.float32))

    # ------------------------------------------------------------------------------------------ forward

    def forward(self, images, debug_percentile=None):
        """Augment ``images`` [N, C, H, W]. ``debug_percentile`` in [0, 1] replaces every random magnitude by a
        fixed quantile and applies every enabled transform to every sample (for visualisation); the random numbers
        are still drawn, so the generator advances exactly as in a normal call."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f'images must be a 4-D tensor [N, C, H, W], got {type(images).__name__} '
                             f'{tuple(getattr(images, "shape", ()))}')
        if not images.is_floating_point():
            raise ValueError(f'images must be floating point, got {images.dtype}')
        dbg = None
        if debug_percentile is not None:
            dbg = torch.as_tensor(debug_percentile, dtype=torch.float32, device=images.device)
        images = self._geometric(images, dbg)
        images = self._colour(images, dbg)
        images = self._filter(images, dbg)
        images = self._corrupt(images, dbg)
        return images

    # A parameter drawn for every sample is kept where a fresh U[0, 1) draw falls below ``prob``, else replaced by
    # the identity value. Magnitudes are drawn first, then this decision, as upstream.
    @staticmethod
    def _keep_where(value, prob, identity):
        u = torch.rand([value.shape[0]] + [1] * (value.ndim - 1), device=value.device)
        return torch.where(u < prob, value, torch.full_like(value, identity))

    @staticmethod
    def _debug_value(value, fill):
        return torch.full_like(value, float(fill))

    def _geometric(self, images, dbg):
        N, _, H, W = images.shape
        device = images.device
        rand = lambda *shape: torch.rand(list(shape), device=device)    # noqa: E731
        randn = lambda *shape: torch.randn(list(shape), device=device)  # noqa: E731
        G_inv = None  # inverse transform (output pixel -> input pixel), composed by right-multiplication

        def compose(m):
            nonlocal G_inv
            G_inv = m if G_inv is None else G_inv @ m

        if self.xflip > 0:
            i = self._keep_where(torch.floor(rand(N) * 2), self.xflip * self.p, 0)
            if dbg is not None:
                i = self._debug_value(i, torch.floor(dbg * 2))
            compose(scale2d_inv(1 - 2 * i, 1))

        if self.rotate90 > 0:
            i = self._keep_where(torch.floor(rand(N) * 4), self.rotate90 * self.p, 0)
            if dbg is not None:
                i = self._debug_value(i, torch.floor(dbg * 4))
            compose(rotate2d_inv(-np.pi / 2 * i))

        if self.xint > 0:
            t = self._keep_where((rand(N, 2) * 2 - 1) * self.xint_max, self.xint * self.p, 0)
            if dbg is not None:
                t = self._debug_value(t, (dbg * 2 - 1) * self.xint_max)
            compose(translate2d_inv(torch.round(t[:, 0] * W), torch.round(t[:, 1] * H)))

        if self.scale > 0:
            s = self._keep_where(torch.exp2(randn(N) * self.scale_std), self.scale * self.p, 1)
            if dbg is not None:
                s = self._debug_value(s, torch.exp2(torch.erfinv(dbg * 2 - 1) * self.scale_std))
            compose(scale2d_inv(s, s))

        # Rotation is split into a pre- and a post-rotation so that P(rotated at all) = rotate * p.
        p_rot = 1 - torch.sqrt((1 - self.rotate * self.p).clamp(0, 1))
        if self.rotate > 0:
            theta = self._keep_where((rand(N) * 2 - 1) * np.pi * self.rotate_max, p_rot, 0)
            if dbg is not None:
                theta = self._debug_value(theta, (dbg * 2 - 1) * np.pi * self.rotate_max)
            compose(rotate2d_inv(-theta))

        if self.aniso > 0:
            s = self._keep_where(torch.exp2(randn(N) * self.aniso_std), self.aniso * self.p, 1)
            if dbg is not None:
                s = self._debug_value(s, torch.exp2(torch.erfinv(dbg * 2 - 1) * self.aniso_std))
            compose(scale2d_inv(s, 1 / s))

        if self.rotate > 0:
            theta = self._keep_where((rand(N) * 2 - 1) * np.pi * self.rotate_max, p_rot, 0)
            if dbg is not None:
                theta = torch.zeros_like(theta)  # upstream shows the pre-rotation only
            compose(rotate2d_inv(-theta))

        if self.xfrac > 0:
            t = self._keep_where(randn(N, 2) * self.xfrac_std, self.xfrac * self.p, 0)
            if dbg is not None:
                t = self._debug_value(t, torch.erfinv(dbg * 2 - 1) * self.xfrac_std)
            compose(translate2d_inv(t[:, 0] * W, t[:, 1] * H))

        if G_inv is None:
            return images
        return self._resample(images, G_inv)

    def _resample(self, images, G_inv):
        """Warp ``images`` by the per-sample inverse transforms ``G_inv`` [N, 3, 3] (centred pixel coordinates)."""
        N, C, H, W = images.shape
        device = images.device
        f32 = dict(dtype=torch.float32, device=device)

        # Margins the transformed image corners need, for the whole batch, plus room for the resampling filter.
        cx, cy = (W - 1) / 2, (H - 1) / 2
        corners = misc.constant([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], **f32)
        mapped = G_inv @ corners.t()                           # [N, 3, 4]
        xy = mapped[:, :2, :].permute(1, 0, 2).flatten(1)      # [2, N * 4]
        margin = torch.cat([-xy, xy]).max(dim=1).values        # [max(-x), max(-y), max(x), max(y)]
        filter_pad = self.Hz_geom.shape[0] // 4
        margin = margin + misc.constant([filter_pad * 2 - cx, filter_pad * 2 - cy] * 2, **f32)
        margin = margin.max(misc.constant([0, 0] * 2, **f32)).min(misc.constant([W - 1, H - 1] * 2, **f32))
        identity = (G_inv == misc.constant(np.eye(3), **f32)).all().to(torch.float32)
        # One device->host transfer for the margins and the identity flag.
        mx0, my0, mx1, my1, is_identity = torch.cat([margin.ceil(), identity[None]]).tolist()
        if is_identity:
            return images  # every sample drew the identity (e.g. p = 0): nothing to resample
        mx0, my0, mx1, my1 = int(mx0), int(my0), int(mx1), int(my1)

        # Pad by reflection and shift the transform to the padded image's centre.
        images = reflect_pad(images, [mx0, mx1, my0, my1])
        G_inv = translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, device=device) @ G_inv

        # Upsample 2x; the transform now maps upsampled output pixels to upsampled input pixels.
        images = upfirdn2d.upsample2d(x=images, f=self.Hz_geom, up=2)
        G_inv = scale2d(2, 2, device=device) @ G_inv @ scale2d_inv(2, 2, device=device)
        G_inv = translate2d(-0.5, -0.5, device=device) @ G_inv @ translate2d_inv(-0.5, -0.5, device=device)

        # Resample into the 2x output plus a border for the downsampling filter, in normalised coordinates.
        shape = [N, C, (H + filter_pad * 2) * 2, (W + filter_pad * 2) * 2]
        G_inv = (scale2d(2 / images.shape[3], 2 / images.shape[2], device=device) @ G_inv
                 @ scale2d_inv(2 / shape[3], 2 / shape[2], device=device))
        grid = F.affine_grid(theta=G_inv[:, :2, :].to(images.dtype), size=shape, align_corners=False)
        images = grid_sample_gradfix.grid_sample(images, grid)

        # Downsample 2x and crop the border.
        return upfirdn2d.downsample2d(x=images, f=self.Hz_geom, down=2, padding=-filter_pad * 2, flip_filter=True)

    def _colour(self, images, dbg):
        N, C, _, _ = images.shape
        device = images.device
        rand = lambda *shape: torch.rand(list(shape), device=device)    # noqa: E731
        randn = lambda *shape: torch.randn(list(shape), device=device)  # noqa: E731
        I_4 = torch.eye(4, device=device)
        M = None  # colour transform, composed by left-multiplication

        def compose(m):
            nonlocal M
            M = m if M is None else m @ M

        if self.brightness > 0:
            b = self._keep_where(randn(N) * self.brightness_std, self.brightness * self.p, 0)
            if dbg is not None:
                b = self._debug_value(b, torch.erfinv(dbg * 2 - 1) * self.brightness_std)
            compose(translate3d(b, b, b))

        if self.contrast > 0:
            c = self._keep_where(torch.exp2(randn(N) * self.contrast_std), self.contrast * self.p, 1)
            if dbg is not None:
                c = self._debug_value(c, torch.exp2(torch.erfinv(dbg * 2 - 1) * self.contrast_std))
            compose(scale3d(c, c, c))

        v = misc.constant(np.asarray([1, 1, 1, 0]) / np.sqrt(3), dtype=torch.float32, device=device)  # luma axis
        vv = torch.outer(v, v)

        if self.lumaflip > 0:
            i = self._keep_where(torch.floor(rand(N, 1, 1) * 2), self.lumaflip * self.p, 0)
            if dbg is not None:
                i = self._debug_value(i, torch.floor(dbg * 2))
            compose(I_4 - 2 * vv * i)  # Householder reflection of the luma axis

        if self.hue > 0 and C > 1:
            theta = self._keep_where((rand(N) * 2 - 1) * np.pi * self.hue_max, self.hue * self.p, 0)
            if dbg is not None:
                theta = self._debug_value(theta, (dbg * 2 - 1) * np.pi * self.hue_max)
            compose(rotate3d(v, theta))

        if self.saturation > 0 and C > 1:
            s = self._keep_where(torch.exp2(randn(N, 1, 1) * self.saturation_std), self.saturation * self.p, 1)
            if dbg is not None:
                s = self._debug_value(s, torch.exp2(torch.erfinv(dbg * 2 - 1) * self.saturation_std))
            compose(vv + (I_4 - vv) * s)

        if M is None:
            return images
        return self._apply_colour(images, M.expand(N, 4, 4))

    @staticmethod
    def _apply_colour(images, M):
        """Apply the per-sample 4x4 colour matrices ``M`` [N, 4, 4]. RGB: the full affine map. One channel: the
        average of the three RGB rows acts on luma (gain = sum of its RGB entries, offset = its last entry), so
        brightness, contrast and luma flip keep their meaning and hue/saturation (which fix the luma axis) vanish.
        Any other channel count (upstream raises there): every channel is treated as such a luma channel."""
        N, C, H, W = images.shape
        M = M.to(images.dtype)
        flat = images.reshape([N, C, H * W])
        if C == 3:
            flat = M[:, :3, :3] @ flat + M[:, :3, 3:]
        else:
            row = M[:, :3, :].mean(dim=1, keepdim=True)  # [N, 1, 4]
            flat = flat * row[:, :, :3].sum(dim=2, keepdim=True) + row[:, :, 3:]
        return flat.reshape([N, C, H, W])

    def _filter(self, images, dbg):
        if self.imgfilter <= 0:
            return images
        N, C, H, W = images.shape
        device = images.device
        num_bands = self.Hz_fbank.shape[0]
        if len(self.imgfilter_bands) != num_bands:
            raise ValueError(f'imgfilter_bands must have {num_bands} entries, got {self.imgfilter_bands}')
        expected_power = misc.constant(np.asarray(_EXPECTED_BAND_POWER), dtype=torch.float32, device=device)

        gains = torch.ones([N, num_bands], device=device)  # overall per-band gain of every sample
        drawn = []
        for i, band_strength in enumerate(self.imgfilter_bands):
            t_i = torch.exp2(torch.randn([N], device=device) * self.imgfilter_std)
            t_i = self._keep_where(t_i, self.imgfilter * self.p * band_strength, 1)
            if dbg is not None:
                if band_strength > 0:
                    t_i = self._debug_value(t_i, torch.exp2(torch.erfinv(dbg * 2 - 1) * self.imgfilter_std))
                else:
                    t_i = torch.ones_like(t_i)
            drawn.append(t_i)
            t = torch.where(torch.arange(num_bands, device=device) == i, t_i[:, None], torch.ones_like(gains))
            t = t / (expected_power * t.square()).sum(dim=-1, keepdim=True).sqrt()  # keep the expected power
            gains = gains * t
        if bool((torch.stack(drawn) == 1).all()):
            return images  # no band was amplified in any sample (e.g. p = 0)

        # One separable, symmetric 43-tap filter per sample, shared by its channels.
        taps = (gains @ self.Hz_fbank).to(images.dtype)                 # [N, 43]
        taps = taps[:, None, :].expand(N, C, -1).reshape([N * C, 1, -1])
        pad = self.Hz_fbank.shape[1] // 2
        x = reflect_pad(images.reshape([1, N * C, H, W]), [pad] * 4)
        x = conv2d_gradfix.conv2d(input=x, weight=taps[:, :, None, :], groups=N * C)  # horizontal
        x = conv2d_gradfix.conv2d(input=x, weight=taps[:, :, :, None], groups=N * C)  # vertical
        return x.reshape([N, C, H, W])

    def _corrupt(self, images, dbg):
        N, C, H, W = images.shape
        device = images.device

        if self.noise > 0:
            sigma = torch.randn([N, 1, 1, 1], device=device).abs() * self.noise_std
            sigma = self._keep_where(sigma, self.noise * self.p, 0)
            if dbg is not None:
                sigma = self._debug_value(sigma, torch.erfinv(dbg) * self.noise_std)
            noise = torch.randn([N, C, H, W], device=device) * sigma
            images = images + noise.to(images.dtype)

        if self.cutout > 0:
            size = self._keep_where(torch.full([N, 2, 1, 1, 1], self.cutout_size, device=device),
                                    self.cutout * self.p, 0)
            centre = torch.rand([N, 2, 1, 1, 1], device=device)
            if dbg is not None:
                size = torch.full_like(size, self.cutout_size)
                centre = self._debug_value(centre, dbg)
            coord_x = torch.arange(W, device=device).reshape([1, 1, 1, -1])
            coord_y = torch.arange(H, device=device).reshape([1, 1, -1, 1])
            outside_x = ((coord_x + 0.5) / W - centre[:, 0]).abs() >= size[:, 0] / 2
            outside_y = ((coord_y + 0.5) / H - centre[:, 1]).abs() >= size[:, 1] / 2
            keep = torch.logical_or(outside_x, outside_y).to(images.dtype)  # [N, 1, H, W]
            images = images * keep

        return images


# ---------------------------------------------------------------------------------------------- ADA

ADA_TARGET = 0.6     # default target for E[sign(D(real))]
ADA_INTERVAL = 4     # iterations between adjustments
ADA_KIMG = 500       # kimg of real images for p to move by 1 (fresh training)
ADA_KIMG_RESUME = 100  # the same when resuming / transfer learning, as in the original training scripts


def adjust_p(p, signs_mean, target, batch_size, interval=ADA_INTERVAL, ada_kimg=ADA_KIMG):
    """One ADA step: ``max(p + sign(signs_mean - target) * batch_size * interval / (ada_kimg * 1000), 0)``.

    ``signs_mean`` is the mean of sign(D(augmented real)) over the reals seen since the last step. ``p`` may be a
    float or a tensor (the pipe's buffer); the result has the same kind. There is no upper clamp. A NaN mean (no
    reals seen) leaves ``p`` unchanged; upstream would turn ``p`` into NaN.
    """
    signs_mean = float(signs_mean)
    if np.isnan(signs_mean):
        return p.clone() if isinstance(p, torch.Tensor) else float(p)
    step = float(np.sign(signs_mean - target)) * (batch_size * interval) / (ada_kimg * 1000)
    if isinstance(p, torch.Tensor):
        return (p + step).clamp(min=0)
    return max(float(p) + step, 0.0)


class AdaptiveP:
    """The ADA controller: every ``interval`` iterations, move ``pipe.p`` towards the target overfitting level.

    ``update(pipe, signs_mean)`` applies ``adjust_p`` to the pipe's buffer in place and returns the new p as a
    float; ``due(batch_idx)`` says whether the iteration counter (already incremented) calls for an update.
    """

    def __init__(self, batch_size, target=ADA_TARGET, interval=ADA_INTERVAL, ada_kimg=ADA_KIMG):
        if batch_size <= 0 or interval <= 0 or ada_kimg <= 0:
            raise ValueError('batch_size, interval and ada_kimg must be positive')
        self.batch_size = int(batch_size)
        self.target = float(target)
        self.interval = int(interval)
        self.ada_kimg = float(ada_kimg)

    def due(self, batch_idx):
        return batch_idx % self.interval == 0

    def step(self, p, signs_mean):
        return adjust_p(p, signs_mean, self.target, self.batch_size, self.interval, self.ada_kimg)

    @torch.no_grad()
    def update(self, pipe, signs_mean):
        pipe.p.copy_(self.step(pipe.p, signs_mean))
        return float(pipe.p)
