"""Latents and images for the interpreter: sampling z, z → truncated ws, synthesis, and uint8 conversion.

Every step that regenerates an image from a stored latent (make_training_data, the interpreter's training-set
construction, generation) goes through these functions with the same settings, so the image a person annotated and
the features the classifiers learn from belong together: same generator (``generator_key``), same truncation, same
noise (``noise_mode='const'`` by default; the originals drew fresh random noise on every call) and float32 blocks.
"""

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from typing import Optional

import numpy as np
import PIL.Image
import torch
from tqdm import tqdm

import dnnlib
from interpreter.config import ConfigError
from torch_utils import misc
from training import legacy


def pick_device(device=None) -> torch.device:
    """``device`` as given (e.g. 'cpu', 'cuda', 'cuda:1'), else CUDA when available, else the CPU; a ValueError
    (``torch_utils.misc.DeviceError``) for an unknown device or a CUDA device this machine does not have."""
    return misc.get_device(device)


def load_generator(path, key: str = 'G_ema', device='cpu'):
    """Load the generator ``key`` ('G_ema' or 'G') of a network pickle, in eval mode without gradients.

    Uses ``training.legacy.load_network_pkl`` (never runs code from the pickle); ``G_ema`` falls back to ``G`` when
    a pickle has none. Raises ``CheckpointError`` naming the file.
    """
    if key not in ('G_ema', 'G'):
        raise ValueError(f"key must be 'G_ema' or 'G', got {key!r}")
    path = os.fspath(path)
    try:
        with dnnlib.util.open_url(path, verbose=False) as f:
            data = legacy.load_network_pkl(f)
    except FileNotFoundError:
        raise legacy.CheckpointError(f'{path}: file not found') from None
    except IsADirectoryError:
        raise legacy.CheckpointError(f'{path}: is a folder, not a network pickle') from None
    G = data.get(key)
    if G is None and key == 'G_ema':
        G = data.get('G')
    if G is None:
        raise legacy.CheckpointError(f'{path}: the pickle has no {key}')
    if getattr(G, 'nir_channels', 0) < 1:
        raise legacy.CheckpointError(f'{path}: {key} has no NIR head')
    return G.eval().requires_grad_(False).to(device)


def sample_latents(G, num: int, seed: int) -> np.ndarray:
    """``num`` latents z, float64 ``[num, G.z_dim]``: ``np.random.RandomState(seed).randn(num, z_dim)``.

    Row i is what the originals' loop drew with ``np.random.randn(1, z_dim)`` at step i after ``np.random.seed(seed)``
    (BiFaceGAN and DatasetGAN seeded 1111), so the same seed gives the same z here; a sample depends only on the seed
    and its index, not on ``num``.
    """
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
        raise ValueError(f'num must be a non-negative integer, got {num!r}')
    return np.random.RandomState(seed).randn(int(num), G.z_dim)


def load_average_latent(path, G, key: str = 'average_latent') -> torch.Tensor:
    """Read an average-w ``.npy`` (``[w_dim]``, ``[num_ws, w_dim]``, ``[1, num_ws, w_dim]``) as float32 [num_ws, w_dim].

    Raises ConfigError naming the file and ``key`` for an unreadable file or a shape that does not fit ``G``.
    """
    path = os.fspath(path)
    try:
        avg = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f'{path}: {key}: file not found') from None
    except (OSError, ValueError, EOFError) as exc:
        raise ConfigError(f'{path}: {key}: not a readable .npy array ({exc})') from None
    if avg.dtype.kind not in 'fiu':
        raise ConfigError(f'{path}: {key}: expected numbers, found dtype {avg.dtype}')
    num_ws, w_dim = G.num_ws, G.w_dim
    if avg.ndim == 3 and avg.shape[0] == 1:
        avg = avg[0]
    if avg.shape == (w_dim,):
        avg = np.broadcast_to(avg, (num_ws, w_dim))
    if avg.shape != (num_ws, w_dim):
        raise ConfigError(f'{path}: {key}: shape {list(avg.shape)} does not fit the generator; expected '
                          f'[{num_ws}, {w_dim}] or [{w_dim}]')
    if not np.isfinite(avg).all():
        raise ConfigError(f'{path}: {key}: contains NaN or infinite values')
    return torch.from_numpy(np.ascontiguousarray(avg, dtype=np.float32))


def average_w(G, average: Optional[torch.Tensor] = None) -> np.ndarray:
    """The average w truncation pulls towards, float32 ``[num_ws, w_dim]``: ``average`` or the tracked ``w_avg``."""
    if average is None:
        average = G.mapping.w_avg.detach().to('cpu', torch.float32).expand(G.num_ws, G.w_dim)
    return np.ascontiguousarray(torch.as_tensor(average).to('cpu', torch.float32).numpy())


@torch.no_grad()
def z_to_ws(G, z, psi: float = 0.7, cutoff: Optional[int] = 7, device=None,
            average: Optional[torch.Tensor] = None, c=None) -> torch.Tensor:
    """Map z ``[N, z_dim]`` to truncated ws float32 ``[N, num_ws, w_dim]`` on ``device`` (default: G's device).

    Without ``average`` this is StyleGAN2-ADA's truncation towards ``G.mapping.w_avg`` (BiFaceGAN's way):
    ``G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)``. With ``average`` (``[num_ws, w_dim]`` or
    ``[w_dim]``, e.g. from ``load_average_latent``; BiOcularGAN IJCB's way) the ws are mapped untruncated and
    ``ws[:, :cutoff] = average[:cutoff].lerp(ws[:, :cutoff], psi)``. ``cutoff=None`` truncates every w. The tracked
    ``w_avg`` is never updated here.
    """
    device = next(G.parameters()).device if device is None else torch.device(device)
    z = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z).to(device, torch.float32)
    if c is None and G.c_dim > 0:
        raise ValueError(f'the generator is conditional (c_dim={G.c_dim}); pass labels c')
    if average is None:
        return G.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff, skip_w_avg_update=True)
    ws = G.mapping(z, c, truncation_psi=1, skip_w_avg_update=True)
    avg = torch.as_tensor(average).to(device, torch.float32)
    if avg.shape not in ((G.w_dim,), (G.num_ws, G.w_dim)):
        raise ValueError(f'average must have shape [{G.w_dim}] or [{G.num_ws}, {G.w_dim}], got {list(avg.shape)}')
    if avg.ndim == 1:
        avg = avg.expand(G.num_ws, G.w_dim)
    n = G.num_ws if cutoff is None else min(cutoff, G.num_ws)
    if psi != 1 and n > 0:
        ws[:, :n] = avg[:n].lerp(ws[:, :n], psi)
    return ws


@torch.no_grad()
def synthesize(G, ws, noise_mode: str = 'const', return_features: bool = False, force_fp32: bool = True):
    """``G.synthesis(ws)`` without gradients: ``(img, nir)`` or ``(img, nir, features)``, images float32 NCHW.

    ``ws`` is moved to the generator's device. ``force_fp32`` runs fp16 blocks in float32 (only matters on CUDA).
    """
    device = next(G.parameters()).device
    ws = torch.as_tensor(ws).to(device, torch.float32)
    return G.synthesis(ws, noise_mode=noise_mode, return_features=return_features, force_fp32=force_fp32)


def to_uint8_image(x) -> np.ndarray:
    """Generator output (about [-1, 1]) to uint8: ``floor(x * 127.5 + 128)`` clamped to 0..255, channels last.

    ``[C, H, W]`` gives ``[H, W, C]``, ``[N, C, H, W]`` gives ``[N, H, W, C]``; one channel (NIR) drops the channel
    axis (``[H, W]`` / ``[N, H, W]``). The value is exactly StyleGAN2-ADA's ``(x * 127.5 + 128).clamp(0, 255)
    .to(uint8)`` and the originals' ``process_image`` (``astype(int)`` then clip): flooring ``x * 127.5 + 128``
    *is* rounding the exact map ``(x + 1) * 127.5`` to the nearest level (halves up). Rounding ``x * 127.5 + 128``
    instead would brighten every pixel by half a level on average, so the originals' arithmetic is kept.
    """
    t = torch.as_tensor(x).detach().to('cpu', torch.float32)
    if t.ndim not in (3, 4):
        raise ValueError(f'expected [C, H, W] or [N, C, H, W], got shape {list(t.shape)}')
    t = torch.floor(t * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    t = t.movedim(-3, -1)
    if t.shape[-1] == 1:
        t = t.squeeze(-1)
    return t.numpy()


# ------------------------------------------------------------------------------------- images to annotate

IMAGES_DIR = 'images_to_annotate'
LATENT_FILE = 'latent_stylegan.npy'
W_FILE = 'w_stylegan.npy'
AVG_FILE = 'avg_latent_stylegan.npy'
SETTINGS_FILE = 'make_training_data_settings.json'


def _same_file(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def make_training_data(cfg, sv_path, num_sample: int = 100, seed: Optional[int] = None, png: bool = False,
                       device=None, overwrite: bool = False, progress: bool = True) -> dict:
    """Generate ``num_sample`` RGB+NIR pairs to annotate, with the latents that regenerate them.

    Writes into ``sv_path``: ``images_to_annotate/image_{i}.jpg`` and ``image_{i}_NIR.jpg`` (``.png``, lossless,
    with ``png``), ``latent_stylegan.npy`` (z, float64 ``[N, z_dim]``), ``w_stylegan.npy`` (the truncated ws,
    float32 ``[N, num_ws, w_dim]``), ``avg_latent_stylegan.npy`` (the average w truncation used, float32
    ``[num_ws, w_dim]``), a copy of the config JSON and ``make_training_data_settings.json`` (seed, generator,
    truncation, noise). Sample i is synthesised alone (batch 1) from row i of the latents, with the config's
    generator, truncation, noise mode and precision, exactly as the interpreter regenerates it. Everything is
    written into a temporary folder inside ``sv_path`` and moved into place at the end, so an interrupted run
    leaves the previous outputs (or none), never a mixture. Existing outputs are replaced only with ``overwrite``
    (a ``latent_stylegan.npy`` there may be the annotated subset). ``seed`` defaults to ``cfg.seed``; the same
    seed gives byte-identical files on the same machine. Returns a summary dict.
    """
    seed = cfg.seed if seed is None else seed
    sv_path = os.path.abspath(os.fspath(sv_path))
    if os.path.exists(sv_path) and not os.path.isdir(sv_path):
        raise ConfigError(f'{sv_path}: sv_path exists and is not a folder')
    json_name = os.path.basename(cfg.source) if cfg.source else None
    outputs = [IMAGES_DIR, LATENT_FILE, W_FILE, AVG_FILE, SETTINGS_FILE]
    if json_name in outputs:
        raise ConfigError(f'{cfg.source}: the config file name clashes with an output of make_training_data')
    copy_json = json_name is not None and not _same_file(cfg.source, os.path.join(sv_path, json_name))
    existing = [name for name in outputs + ([json_name] if copy_json else [])
                if os.path.lexists(os.path.join(sv_path, name))]
    if existing and not overwrite:
        raise ConfigError(f'{os.path.join(sv_path, existing[0])}: already exists; pass --overwrite to replace the '
                          f'outputs of an earlier run')

    device = pick_device(device)
    G = load_generator(cfg.stylegan_checkpoint, cfg.generator_key, device)
    cfg.check_generator(G)
    if getattr(G, '_fresh_nir_head', False):
        warnings.warn(f'{cfg.stylegan_checkpoint}: the NIR head was initialised fresh (single-branch pickle); '
                      f'the NIR images are not meaningful')
    average = load_average_latent(cfg.average_latent, G) if cfg.average_latent else None
    z = sample_latents(G, num_sample, seed)
    if cfg.noise_mode == 'random':
        torch.manual_seed(seed)
    ext, fmt = ('png', 'PNG') if png else ('jpg', 'JPEG')

    os.makedirs(sv_path, exist_ok=True)
    stage = tempfile.mkdtemp(prefix='.make_training_data-', dir=sv_path)
    try:
        img_dir = os.path.join(stage, IMAGES_DIR)
        os.mkdir(img_dir)
        ws_all = np.empty([num_sample, G.num_ws, G.w_dim], dtype=np.float32)
        for i in tqdm(range(num_sample), desc='images to annotate', unit='img', disable=not progress):
            ws = z_to_ws(G, z[i:i + 1], cfg.truncation_psi, cfg.truncation_cutoff, device=device, average=average)
            img, nir = synthesize(G, ws, noise_mode=cfg.noise_mode, force_fp32=cfg.force_fp32)
            ws_all[i] = ws[0].to('cpu', torch.float32).numpy()
            PIL.Image.fromarray(to_uint8_image(img[0]), 'RGB').save(os.path.join(img_dir, f'image_{i}.{ext}'), fmt)
            PIL.Image.fromarray(to_uint8_image(nir[0, :1]), 'L').save(os.path.join(img_dir, f'image_{i}_NIR.{ext}'),
                                                                      fmt)
        np.save(os.path.join(stage, LATENT_FILE), z)
        np.save(os.path.join(stage, W_FILE), ws_all)
        np.save(os.path.join(stage, AVG_FILE), average_w(G, average))
        settings = dict(
            config=cfg.source, stylegan_checkpoint=cfg.stylegan_checkpoint, generator_key=cfg.generator_key,
            num_sample=num_sample, seed=seed, latent_sampling='numpy.random.RandomState(seed).randn(num_sample, z_dim)',
            truncation_psi=cfg.truncation_psi, truncation_cutoff=cfg.truncation_cutoff,
            average_latent=cfg.average_latent or 'mapping.w_avg', noise_mode=cfg.noise_mode,
            force_fp32=cfg.force_fp32, image_format=ext, device_type=device.type)
        with open(os.path.join(stage, SETTINGS_FILE), 'w', encoding='utf-8') as f:
            json.dump(settings, f, indent=2)
            f.write('\n')
        if copy_json:
            shutil.copyfile(cfg.source, os.path.join(stage, json_name))

        # Everything is written; swap it in, the images folder as a whole (no stale image_{i} of a longer earlier
        # run survives), in quick renames after the slow part.
        for name in [IMAGES_DIR, LATENT_FILE, W_FILE, AVG_FILE, SETTINGS_FILE] + ([json_name] if copy_json else []):
            dnnlib.util.swap_in(os.path.join(stage, name), os.path.join(sv_path, name))
    finally:
        with contextlib.suppress(OSError):  # a leftover hidden scratch folder must not hide the real outcome
            dnnlib.util.remove_path(stage)
    return dict(sv_path=sv_path, num_sample=num_sample, seed=seed, device=str(device), image_format=ext)
