"""The built-in demo data: procedurally rendered eyes with pixel-aligned NIR and class-index masks
(``dataset_tool.py demo``), deterministic for a given seed."""

import math
import os

import numpy as np

from training.dataset_convert import DatasetWriter
from training.image_pairs import DatasetError, _is_power_of_two, _progress

# ---------------------------------------------------------------------------------------------------------------------
# Demo data: procedurally rendered eyes with aligned NIR and class-index masks (dataset_tool.py demo)

DEMO_CLASSES = ('background', 'sclera', 'iris', 'pupil')

# Skin tones from light to dark (sRGB, 0..1), interpolated by a melanin parameter.
_SKIN_TONES = np.array([[0.96, 0.80, 0.71], [0.88, 0.66, 0.55], [0.76, 0.56, 0.42], [0.58, 0.40, 0.28],
                        [0.40, 0.26, 0.18], [0.27, 0.17, 0.12]])

# Iris types: name, probability, colour near the pupil, colour near the limbus, texture contrast in RGB.
# Dark irides show little texture in visible light; in NIR melanin is nearly transparent and every iris is a
# brighter mid grey with its fibres visible.
_IRIS_TYPES = (
    ('brown', 0.35, (0.40, 0.23, 0.11), (0.27, 0.15, 0.07), 0.14),
    ('hazel', 0.15, (0.52, 0.36, 0.14), (0.36, 0.40, 0.22), 0.22),
    ('green', 0.15, (0.55, 0.50, 0.25), (0.30, 0.44, 0.28), 0.24),
    ('blue', 0.20, (0.56, 0.67, 0.80), (0.30, 0.44, 0.62), 0.30),
    ('grey', 0.15, (0.62, 0.64, 0.64), (0.40, 0.45, 0.48), 0.26),
)


def _smoothstep(edge0, edge1, x):
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _periodic_table(rng, n=1024, kmin=6, kmax=160, slope=0.8):
    """A random smooth periodic function sampled at n angles (std 1): iris fibres along the circumference."""
    spec = np.zeros(n // 2 + 1, dtype=np.complex128)
    k = np.arange(kmin, kmax + 1)
    spec[kmin:kmax + 1] = (rng.standard_normal(k.size) + 1j * rng.standard_normal(k.size)) * k ** -slope
    table = np.fft.irfft(spec, n=n)
    return (table / (table.std() + 1e-12)).astype(np.float32)


def _lookup(table, angle):
    """Linear interpolation in a periodic table indexed by an angle in radians."""
    n = table.size
    pos = angle * np.float32(n / (2 * np.pi))
    floor = np.floor(pos)
    frac = pos - floor
    i0 = floor.astype(np.int64) % n
    return table[i0] * (1 - frac) + table[(i0 + 1) % n] * frac


def _value_noise(grid, size):
    """Smooth noise: a small random grid upsampled bicubically to size x size (same picture at every size)."""
    import cv2

    return cv2.resize(grid.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)


class _Eye:
    """Geometry and appearance of one demo eye, in image coordinates x, y in [-1, 1] (y down).

    The mask and the images are evaluated from the same analytic shapes: the eye opening between two lid curves
    (``depth`` > 0), the iris and pupil discs. Colours are 4-vectors (R, G, B, NIR), so both modalities come from
    one geometry and stay aligned pixel for pixel.
    """

    def __init__(self, rng: np.random.Generator, resolution: int):
        px = 2.0 / resolution  # One output pixel in these units.
        margin = max(0.05, 1.6 * px)
        for _ in range(200):
            if self._sample_geometry(rng, px, margin):
                break
        else:  # pragma: no cover - the acceptance rate is far above 1/200 for every resolution.
            raise RuntimeError('could not place a demo eye')
        self._sample_appearance(rng)

    # ---- geometry

    def _sample_geometry(self, rng, px, margin) -> bool:
        self.side = float(rng.choice([-1.0, 1.0]))  # Which side the nose (inner corner) is on.
        self.ex, self.ey = rng.uniform(-0.06, 0.06), rng.uniform(-0.02, 0.12)
        self.a = rng.uniform(0.72, 0.92)
        self.tilt = rng.uniform(-0.10, 0.10) - self.side * rng.uniform(0.0, 0.06)
        openness = rng.uniform(0.65, 1.15)
        self.hu, self.hl = openness * rng.uniform(0.40, 0.56), openness * rng.uniform(0.26, 0.38)
        self.pu, self.pl = rng.uniform(0.65, 1.0), rng.uniform(0.8, 1.25)
        self.su, self.sl = rng.uniform(-0.25, 0.25), rng.uniform(-0.2, 0.2)
        self.ri = self.a * rng.uniform(0.44, 0.60)
        xl = rng.uniform(-0.15, 0.15) * self.a
        up, lo = self._lids(np.array(xl / self.a))
        yl = 0.5 * (up + lo) + rng.uniform(-0.10, 0.06)
        self.icx, self.icy = self._to_image(xl, yl)
        self.rp = max(self.ri * rng.uniform(0.22, 0.48), 1.05 * px)
        self.pcx = self.icx + self.ri * (rng.uniform(-0.05, 0.05) + 0.04 * self.side)
        self.pcy = self.icy + self.ri * rng.uniform(-0.05, 0.05)
        # The pupil is never covered by a lid, and a ring of iris at least `margin` wide surrounds it.
        off = math.hypot(self.pcx - self.icx, self.pcy - self.icy)
        if self.ri - self.rp - off < margin:
            return False
        ang = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        r = self.rp + margin
        if self.depth(self.pcx + r * np.cos(ang), self.pcy + r * np.sin(ang)).min() <= 0:
            return False
        # Some sclera must show beside the iris.
        sides = self.depth(np.array([self.icx - self.ri - margin, self.icx + self.ri + margin]),
                           np.array([self.icy, self.icy]))
        return bool(sides.max() > 0)

    def _to_image(self, xl, yl):
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        return self.ex + xl * c - yl * s, self.ey + xl * s + yl * c

    def local(self, x, y):
        c, s = math.cos(self.tilt), math.sin(self.tilt)
        dx, dy = x - self.ex, y - self.ey
        return dx * c + dy * s, -dx * s + dy * c

    def _lids(self, t):
        """Upper and lower lid heights (local y; the upper one is negative) at t = local x / half-width."""
        base = np.clip(1.0 - t * t, 0.0, None)
        up = -self.hu * base ** self.pu * (1.0 + self.su * t)
        lo = self.hl * base ** self.pl * (1.0 + self.sl * t)
        return up, lo

    def depth(self, x, y):
        """Vertical distance inside the eye opening (negative outside)."""
        xr, yr = self.local(x, y)
        up, lo = self._lids(xr / self.a)
        return np.minimum(yr - up, lo - yr)

    def mask(self, resolution) -> np.ndarray:
        """Class indices at the pixel centres: 0 skin, 1 sclera, 2 iris, 3 pupil (lids occlude iris and pupil)."""
        c = (np.arange(resolution) + 0.5) * (2.0 / resolution) - 1.0
        x, y = c[None, :], c[:, None]
        inside = self.depth(x, y) > 0
        iris = np.hypot(x - self.icx, y - self.icy) < self.ri
        pupil = np.hypot(x - self.pcx, y - self.pcy) < self.rp
        out = np.zeros([resolution, resolution], dtype=np.uint8)
        out[inside] = 1
        out[inside & iris] = 2
        out[inside & pupil] = 3
        return out

    # ---- appearance

    def _sample_appearance(self, rng):
        melanin = rng.uniform(0.0, 1.0)
        pos = melanin * (len(_SKIN_TONES) - 1)
        i0 = min(int(pos), len(_SKIN_TONES) - 2)
        skin = _SKIN_TONES[i0] * (1 - (pos - i0)) + _SKIN_TONES[i0 + 1] * (pos - i0)
        redness = rng.uniform(0.0, 0.10)
        skin = skin * np.array([1 + redness, 1 - 0.5 * redness, 1 - 0.4 * redness])
        # NIR: skin is bright, smooth and depends little on melanin.
        self.skin = np.append(skin, rng.uniform(0.56, 0.70) - 0.10 * melanin)
        self.skin_broad = rng.standard_normal([5, 5])
        self.skin_fine = rng.standard_normal([64, 64])
        self.skin_texture = np.array([0.03, 0.032, 0.034, 0.01])

        sclera = np.array([0.93, 0.89, 0.85]) * rng.uniform(0.80, 1.0) + rng.uniform(-0.03, 0.03, 3)
        # NIR: the sclera is about as bright as the skin (little contrast between them).
        self.sclera = np.append(sclera, np.clip(self.skin[3] * rng.uniform(0.98, 1.12), 0.45, 0.8))
        self.sclera_grid = rng.standard_normal([8, 8])
        self.corner_tint = np.array([0.86, 0.55, 0.52, self.sclera[3] * 0.95])
        self.corner_amount = rng.uniform(0.25, 0.6)

        probs = np.array([t[1] for t in _IRIS_TYPES])
        kind = _IRIS_TYPES[int(rng.choice(len(_IRIS_TYPES), p=probs / probs.sum()))]
        self.iris_kind = kind[0]
        gain = rng.uniform(0.72, 1.12)
        jitter = rng.uniform(-0.03, 0.03, 3)
        self.iris_inner = np.clip(np.array(kind[2]) * gain + jitter, 0.02, 1.0)
        self.iris_outer = np.clip(np.array(kind[3]) * gain + jitter, 0.02, 1.0)
        self.iris_contrast = kind[4]
        self.iris_nir = rng.uniform(0.36, 0.50)
        self.fibres = [_periodic_table(rng, kmin=8, kmax=180), _periodic_table(rng, kmin=12, kmax=240)]
        self.collarette_wobble = _periodic_table(rng, kmin=3, kmax=14, slope=1.2)
        self.collarette = rng.uniform(0.28, 0.45)
        self.twist = rng.uniform(-0.6, 0.6)
        n_crypts = int(rng.integers(3, 12))
        self.crypts = [(rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.85), rng.uniform(0.03, 0.08),
                        rng.uniform(0.2, 0.5)) for _ in range(n_crypts)]
        self.limbal = rng.uniform(0.35, 0.75)
        self.pupil = np.array([*([rng.uniform(0.02, 0.06)] * 3), rng.uniform(0.01, 0.035)])

        self.lid_shadow = rng.uniform(0.25, 0.5)
        self.crease_gap = rng.uniform(0.12, 0.26)
        self.crease_depth = rng.uniform(0.08, 0.22)
        self.socket = rng.uniform(0.08, 0.22)

        # Eyelashes as rows: lid (0 upper, 1 lower), root t, length, lean, curl. Most eyes have them.
        n_up, n_lo = (int(rng.integers(40, 90)), int(rng.integers(6, 20))) if rng.uniform() < 0.85 else (0, 0)
        t_up = rng.uniform(-0.9, 0.95, n_up) * -self.side  # Denser and longer towards the outer corner.
        t_lo = rng.uniform(-0.8, 0.9, n_lo) * -self.side
        self.lashes = np.concatenate([
            np.stack([np.zeros(n_up), t_up, rng.uniform(0.06, 0.16, n_up) * (1.0 - 0.35 * t_up ** 2),
                      rng.uniform(-0.3, 0.3, n_up), rng.uniform(0.3, 0.9, n_up)], 1),
            np.stack([np.ones(n_lo), t_lo, rng.uniform(0.025, 0.06, n_lo), rng.uniform(-0.3, 0.3, n_lo),
                      rng.uniform(0.0, 0.3, n_lo)], 1)]).reshape(-1, 5)
        self.lash_dark = rng.uniform(0.6, 0.9)

        # Specular highlights (corneal reflections of the illuminator): the same spots in both modalities. The
        # first is the brightest (pure white); an optional second one is smaller and dimmer.
        self.spots = []
        n_spots = 1 if rng.uniform() < 0.6 else 2
        for k in range(n_spots):
            scale = 1.0 if k == 0 else rng.uniform(0.35, 0.6)
            hw = rng.uniform(0.03, 0.07) * scale
            hh = hw * rng.uniform(0.8, 1.8)
            power = float(rng.choice([2.0, 4.0, 6.0]))
            for _ in range(30):
                ox, oy = rng.uniform(-0.55, 0.55) * self.ri, rng.uniform(-0.75, 0.35) * self.ri
                cx, cy = self.pcx + ox, self.pcy + oy
                if (math.hypot(cx - self.icx, cy - self.icy) < self.ri - max(hw, hh)
                        and self.depth(np.array(cx), np.array(cy)) > max(hw, hh) + 0.02):
                    break
            else:
                cx, cy = self.pcx, self.pcy
            self.spots.append((cx, cy, hw, hh, power, 1.0 if k == 0 else rng.uniform(0.55, 0.7)))

        self.light = (rng.uniform(-0.3, 0.3), rng.uniform(-0.4, 0.1), rng.uniform(0.15, 0.35), rng.uniform(0.2, 0.45))
        self.white_balance = np.array([1 + rng.uniform(-0.04, 0.12), 1.0, 1 + rng.uniform(-0.10, 0.05), 1.0])
        self.noise = (rng.uniform(0.004, 0.014), rng.uniform(0.006, 0.016))

    def render(self, size, spot_min) -> np.ndarray:
        """Float32 image [size, size, 4] (R, G, B, NIR); anti-aliased afterwards by downsampling."""
        f32 = np.float32
        px = 2.0 / size
        c = ((np.arange(size) + 0.5) * px - 1.0).astype(f32)
        x, y = c[None, :], c[:, None]
        xr, yr = self.local(x, y)
        t = xr / f32(self.a)
        up, lo = self._lids(t)
        d_up, d_lo = yr - up, lo - yr
        depth = np.minimum(d_up, d_lo)
        a_open = np.clip(depth / f32(px) + f32(0.5), 0.0, 1.0)

        # Skin: tone, broad shading, fine texture, the eye socket, the lid crease and the lid margins.
        gain = 1.0 + 0.08 * _value_noise(self.skin_broad, size)
        skin = f32(self.skin) * gain[..., None] + f32(self.skin * self.skin_texture) * \
            _value_noise(self.skin_fine, size)[..., None]
        dark = self.socket * np.exp(-((xr / f32(self.a * 1.25)) ** 2 + ((yr + f32(0.05)) / f32(0.6)) ** 2))
        t_crease = xr / f32(self.a * 1.12)
        up_crease, _ = self._lids(t_crease)
        fade = np.clip(1 - t_crease ** 2, 0, None)
        y_crease = up_crease - self.crease_gap * fade ** 0.5
        dark = dark + self.crease_depth * fade * np.exp(-((yr - y_crease) / f32(0.035)) ** 2)
        below = _smoothstep(-0.02, 0.0, d_lo)  # Above the lower lid line (the upper lid margin lives there).
        lash_line = np.exp(-(np.clip(-d_up, 0, None) / f32(0.018)) ** 2)
        dark = dark + 0.55 * lash_line * below * _smoothstep(1.08, 0.98, np.abs(t))
        skin = skin * (1.0 - dark)[..., None]
        lid_light = _smoothstep(0.0, 0.05, -d_up) * _smoothstep(0.0, 0.04, yr - y_crease)
        skin = skin * (1.0 + 0.06 * lid_light)[..., None]
        rim = np.exp(-(np.clip(-d_lo, 0, None) / f32(0.03)) ** 2) * _smoothstep(-0.02, 0.0, d_up)
        rim = rim * _smoothstep(1.04, 0.96, np.abs(t))
        rim_colour = f32([0.82, 0.48, 0.45, self.skin[3] * 0.95])
        img = skin + (0.45 * rim)[..., None] * (rim_colour - skin)

        # Eyeball, computed only inside the bounding box of the opening.
        rows = np.nonzero(a_open.max(axis=1) > 0)[0]
        cols = np.nonzero(a_open.max(axis=0) > 0)[0]
        box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        grain = _value_noise(self.sclera_grid, size)[box]
        img[box] = self._render_eyeball(x[:, box[1]], y[box[0], :], t[box], d_up[box], d_lo[box], a_open[box],
                                        img[box], grain, px)

        # Eyelashes (dark in both modalities; not part of the mask).
        if len(self.lashes):
            lash = self._draw_lashes(size)
            img *= (1.0 - self.lash_dark * lash[..., None] * f32([1.0, 1.0, 1.0, 0.85]))

        # Illumination: a soft spot light (stronger fall-off for the NIR illuminator) and the camera white balance.
        lx, ly, fall_rgb, fall_nir = self.light
        dist2 = (x - f32(lx)) ** 2 + (y - f32(ly)) ** 2
        img[..., :3] *= np.clip(1 - f32(fall_rgb / 2) * dist2, 0.3, None)[..., None] * f32(self.white_balance[:3])
        img[..., 3] *= np.clip(1 - f32(fall_nir / 2) * dist2, 0.3, None)

        # Specular highlights: white in both modalities, at the same place.
        for cx, cy, hw, hh, power, strength in self.spots:
            hw, hh = max(hw, spot_min), max(hh, spot_min)
            reach = max(hw, hh) + 2 * px
            r0, r1 = [int(np.clip((v + 1) / px, 0, size)) for v in (cy - reach, cy + reach)]
            c0, c1 = [int(np.clip((v + 1) / px, 0, size)) for v in (cx - reach, cx + reach)]
            xs, ys = x[:, c0:c1], y[r0:r1, :]
            dist = np.abs((xs - f32(cx)) / f32(hw)) ** power + np.abs((ys - f32(cy)) / f32(hh)) ** power
            dist = dist ** (1 / power)
            a_spot = strength * np.clip((1.0 - dist) * f32(min(hw, hh) / px) + 0.5, 0.0, 1.0)
            img[r0:r1, c0:c1] += a_spot[..., None] * (1.0 - img[r0:r1, c0:c1])
        return img

    def _render_eyeball(self, x, y, t, d_up, d_lo, a_open, under, grain, px):
        f32 = np.float32
        sclera = f32(self.sclera) * (1.0 + 0.03 * grain)[..., None]
        nasal = np.clip(-self.side * t, 0, None)
        tint = self.corner_amount * _smoothstep(0.5, 0.98, np.abs(t)) * (0.5 + 0.8 * nasal)
        sclera = sclera + np.clip(tint, 0, 1)[..., None] * (f32(self.corner_tint) - sclera)

        dx, dy = x - f32(self.icx), y - f32(self.icy)
        r = np.sqrt(dx * dx + dy * dy)
        eye = sclera
        if r.min() < self.ri + px:
            eye = self._blend_iris(eye, x, y, dx, dy, r, px)
        a_pupil = np.clip((self.rp - np.hypot(x - f32(self.pcx), y - f32(self.pcy))) / f32(px) + 0.5, 0.0, 1.0)
        eye = eye + a_pupil[..., None] * (f32(self.pupil) - eye)
        shadow = self.lid_shadow * np.exp(-np.clip(d_up, 0, None) / f32(0.07)) + \
            0.15 * np.exp(-np.clip(d_lo, 0, None) / f32(0.03))
        eye = eye * (1.0 - shadow)[..., None]
        tear = 0.25 * np.exp(-((d_lo - f32(0.012)) / f32(0.007)) ** 2)
        eye = eye + tear[..., None] * (1.0 - eye)
        return under + a_open[..., None] * (eye - under)

    def _blend_iris(self, eye, x, y, dx, dy, r, px):
        f32 = np.float32
        phi = np.arctan2(dy, dx)
        inner_r = self.rp + math.hypot(self.pcx - self.icx, self.pcy - self.icy)
        rho = np.clip((r - f32(inner_r)) / f32(max(self.ri - inner_r, 1e-6)), 0.0, 1.0)
        fib = (1 - rho) * _lookup(self.fibres[0], phi + f32(self.twist) * rho) + rho * _lookup(self.fibres[1], phi)
        coll_r = self.collarette + 0.05 * _lookup(self.collarette_wobble, phi)
        coll = np.exp(-((rho - coll_r) / f32(0.06)) ** 2)
        inner = _smoothstep(coll_r + 0.05, coll_r - 0.05, rho)
        crypt = np.zeros_like(r)
        for ang, rad, extent, strength in self.crypts:
            radial = rad * (self.ri - inner_r) + inner_r
            cx, cy = self.icx + radial * math.cos(ang), self.icy + radial * math.sin(ang)
            crypt += f32(strength) * np.exp(-((x - f32(cx)) ** 2 + (y - f32(cy)) ** 2) / f32((extent * self.ri) ** 2))
        limbus = _smoothstep(0.72, 1.0, rho)
        ruff = np.exp(-(rho / f32(0.05)) ** 2)
        colour = f32(self.iris_inner) * inner[..., None] + f32(self.iris_outer) * (1 - inner)[..., None]
        iris_rgb = colour * (1.0 + self.iris_contrast * (0.8 * fib + 0.5 * coll - crypt))[..., None]
        iris_rgb *= (1.0 - self.limbal * limbus - 0.35 * ruff)[..., None]
        iris_nir = self.iris_nir * (1.0 + 0.09 * fib + 0.08 * coll - 0.06 * crypt) * \
            (1 - 0.45 * self.limbal * limbus - 0.3 * ruff)
        iris = np.concatenate([iris_rgb, iris_nir[..., None]], axis=-1)
        a_iris = np.clip((self.ri - r) / f32(px) + 0.5, 0.0, 1.0)
        return eye + a_iris[..., None] * (iris - eye)

    def _draw_lashes(self, size) -> np.ndarray:
        import cv2

        lid, t, length, lean, curl = (self.lashes[:, k:k + 1] for k in range(5))
        up, lo = self._lids(t)
        sign = np.where(lid == 0, -1.0, 1.0)
        root = np.where(lid == 0, up, lo) + sign * 0.006
        angle = 0.8 * (lean + 0.9 * t)  # Lashes fan outwards towards the corners.
        s = np.linspace(0.0, 1.0, 8)[None, :]
        xl = t * self.a + length * s * np.sin(angle)
        yl = root + sign * length * (s * np.cos(angle) - 0.3 * curl * s * s)
        xi, yi = self._to_image(xl, yl)
        pts = np.stack([(xi + 1) / 2 * size - 0.5, (yi + 1) / 2 * size - 0.5], -1)
        pts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits (shift=4).
        canvas = np.zeros([size, size], dtype=np.uint8)
        thickness = max(1, int(round(0.004 * size)))
        cv2.polylines(canvas, list(pts), False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
        return canvas.astype(np.float32) / 255.0


def render_demo_pair(resolution: int, seed: int, index: int = 0):
    """Render demo sample ``index`` of ``seed``: (rgb uint8 [R,R,3], nir uint8 [R,R], mask uint8 [R,R]).

    Each sample has its own random streams (derived from ``(seed, index)``), so a sample does not depend on how
    many others are rendered. The geometry does not depend on the resolution once it is 64 or more.
    """
    resolution = int(resolution)
    if resolution < 16 or not _is_power_of_two(resolution):
        raise ValueError(f'demo resolution must be a power of two >= 16, got {resolution}')
    eye = _Eye(np.random.default_rng([int(seed), int(index), 0]), resolution)
    noise_rng = np.random.default_rng([int(seed), int(index), 1])
    ss = 4 if resolution <= 32 else 2
    big = eye.render(resolution * ss, spot_min=2.0 / resolution)
    img = big.reshape(resolution, ss, resolution, ss, 4).mean(axis=(1, 3), dtype=np.float64)
    sigma_rgb, sigma_nir = eye.noise
    lum = noise_rng.standard_normal([resolution, resolution, 1]) * sigma_rgb
    chroma = noise_rng.standard_normal([resolution, resolution, 3]) * (sigma_rgb * 0.5)
    img[..., :3] += lum + chroma
    img[..., 3] += noise_rng.standard_normal([resolution, resolution]) * sigma_nir
    img = np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3]), np.ascontiguousarray(img[..., 3]), eye.mask(resolution)


def write_demo_dataset(dest, count=100, resolution=64, seed=0, overwrite=False, progress=False) -> dict:
    """Write ``count`` demo pairs to ``dest``: images/, NIR/, masks/ (eye_{i:05d}.png) and classes.json.

    The folder appears only when complete; the same arguments give byte-identical files.
    """
    count = int(count)
    if count < 1:
        raise DatasetError('--count', f'must be at least 1, got {count}')
    if int(resolution) < 16 or not _is_power_of_two(int(resolution)):
        raise DatasetError('--resolution', f'must be a power of two >= 16, got {resolution}')
    if int(seed) < 0:
        raise DatasetError('--seed', f'must be non-negative, got {seed}')
    with DatasetWriter(dest, overwrite=overwrite) as writer:
        for i in _progress(range(count), progress, 'rendering', total=count):
            rgb, nir, mask = render_demo_pair(resolution, seed, i)
            name = f'eye_{i:05d}.png'
            writer.write_png(f'images/{name}', rgb)
            writer.write_png(f'NIR/{name}', nir)
            writer.write_png(f'masks/{name}', mask)
        writer.write_json('classes.json', {'classes': list(DEMO_CLASSES),
                                           'description': 'mask value = index into classes'})
    return dict(dest=os.fspath(dest), count=count, resolution=int(resolution), seed=int(seed))
