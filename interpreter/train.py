"""Training the Semantic Mask Generator: an ensemble of per-pixel classifiers on the generator's feature maps.

The annotated samples are re-synthesised from their latents with the configured truncation and constant noise, so the
features belong to exactly the images that were annotated. The feature maps are kept at their native resolutions
(about 64 MB per 256x256 sample in float32, instead of the originals' 1.3 GB upsampled matrix), and every mini-batch
gathers the bilinearly interpolated feature vectors of its pixels from them. Each classifier is then trained as in
the originals (Adam, batch 64, cross-entropy) with the originals' stopping rule or, optionally, a smoothed one.
"""

import json
import os
import time

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

import dnnlib
from interpreter import classifier as classifier_module
from interpreter import feature_store, visualize
from interpreter import latents as latents_module

STOP_RULES = ('original', 'smoothed')


class AnnotationSetError(ValueError):
    """The annotated set is unusable; the message names the file."""


def clean_mask(mask, min_pixels):
    """Set every label (>= 1) that covers fewer than ``min_pixels`` pixels to background, as the originals did for
    the stray colours of anti-aliased brushes."""
    mask = mask.copy()
    labels, counts = np.unique(mask, return_counts=True)
    for label, count in zip(labels, counts):
        if label != 0 and count < min_pixels:
            mask[mask == label] = 0
    return mask


def _load_mask(path, size):
    if not os.path.isfile(path):
        raise AnnotationSetError(f'{path}: annotation mask not found')
    try:
        mask = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise AnnotationSetError(f'{path}: not a readable .npy mask ({exc})') from None
    mask = np.squeeze(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer) and not np.issubdtype(mask.dtype, np.floating):
        raise AnnotationSetError(f'{path}: expected a 2-D class-index array, got shape {list(mask.shape)}')
    if np.issubdtype(mask.dtype, np.floating) and not np.all(mask == np.round(mask)):
        raise AnnotationSetError(f'{path}: class indices must be whole numbers')
    mask = mask.astype(np.int64)
    if mask.min() < 0 or mask.max() > 255:
        raise AnnotationSetError(f'{path}: class indices must lie in 0..255')
    if mask.shape != (size, size):
        mask = np.asarray(PIL.Image.fromarray(mask.astype(np.uint8)).resize((size, size), PIL.Image.NEAREST))
    return mask.astype(np.int64)


class AnnotatedSet:
    """The annotated samples: their latents, masks [N, H, W], regenerated images, and native feature maps."""

    def __init__(self, cfg, G, device, progress=True):
        cfg.require('annotation_mask_path', 'annotation_image_latent_path')
        out_res = cfg.dim[1]
        latent_path = cfg.annotation_image_latent_path
        try:
            latents = np.load(latent_path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise AnnotationSetError(f'{latent_path}: not a readable latent file ({exc})') from None
        if cfg.max_training is not None:
            if len(latents) < cfg.max_training:
                raise AnnotationSetError(f'{latent_path}: has {len(latents)} rows, max_training asks for '
                                         f'{cfg.max_training}')
            latents = latents[:cfg.max_training]
        self.latents = latents
        self.masks = np.stack([clean_mask(_load_mask(os.path.join(cfg.annotation_mask_path, f'image_mask{i}.npy'),
                                                     out_res), cfg.min_label_pixels)
                               for i in range(len(latents))])
        self.cfg, self.device = cfg, device
        self.average = latents_module.load_average_latent(cfg.average_latent, G) if cfg.average_latent else None
        self.store = feature_store.NativeFeatureStore(out_res=out_res, mode=cfg.upsample_mode, capacity=len(latents))
        self.rgb, self.nir = [], []
        iterator = range(len(latents))
        if progress:
            from tqdm import tqdm
            iterator = tqdm(iterator, desc='features', unit='sample', dynamic_ncols=True)
        for i in iterator:
            img, nir, feats = self.synthesize(G, i)
            self.store.add([f[0].cpu() for f in feats])
            self.rgb.append(latents_module.to_uint8_image(img[0]))
            self.nir.append(latents_module.to_uint8_image(nir[0]))
        self.out_res = out_res
        self.num_class = int(self.masks.max()) + 1
        if cfg.number_class is not None:
            if self.num_class > cfg.number_class:
                raise AnnotationSetError(f'{cfg.source}: number_class is {cfg.number_class} but the masks contain '
                                         f'label {self.num_class - 1}')
            self.num_class = cfg.number_class

    def __len__(self):
        return len(self.latents)

    def synthesize(self, G, i):
        """``(rgb, nir, features)`` of annotated sample ``i``, regenerated from its latent as for training."""
        cfg = self.cfg
        if cfg.annotation_data_from_w:
            ws = torch.as_tensor(self.latents[i:i + 1], dtype=torch.float32, device=self.device)
        else:
            ws = latents_module.z_to_ws(G, self.latents[i:i + 1], psi=cfg.truncation_psi,
                                        cutoff=cfg.truncation_cutoff, device=self.device, average=self.average)
        img, nir, feats = latents_module.synthesize(G, ws, noise_mode=cfg.noise_mode, return_features=True,
                                                    force_fp32=cfg.force_fp32)
        channels = sum(f.shape[1] for f in feats)
        if channels != cfg.dim[2]:
            raise AnnotationSetError(f'{cfg.source}: dim[2] is {cfg.dim[2]} but the generator gives {channels} '
                                     f'feature channels')
        return img, nir, feats


def train_classifier(data, cfg, model_idx, device, stop_rule='original', progress=True, log=print):
    """Train one pixel classifier of the ensemble; returns it (eval mode, on the CPU)."""
    if stop_rule not in STOP_RULES:
        raise ValueError(f'stop_rule must be one of {STOP_RULES}')
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + model_idx)
    torch.manual_seed(cfg.seed * 1000 + model_idx)
    model = classifier_module.PixelClassifier(data.num_class, cfg.dim[2])
    model.init_weights(generator=generator)  # the originals' N(0, 0.02) init; the constructor leaves torch's
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    masks_flat = torch.from_numpy(data.masks.reshape(-1))
    total = masks_flat.numel()

    best_loss, break_count, iteration, stop = float('inf'), 0, 0, False
    smoothed = None
    for epoch in range(cfg.max_epochs):
        order = torch.randperm(total, generator=generator)
        batches = order.split(cfg.batch_size)
        if progress:
            from tqdm import tqdm
            batches = tqdm(batches, desc=f'model {model_idx} epoch {epoch}', unit='batch', leave=False,
                           dynamic_ncols=True)
        for index in batches:
            # index: flat over (sample, pixel), the same rows of the store's training matrix and of the masks
            x, y = data.store.gather_flat(index), masks_flat[index]
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            iteration += 1
            value = loss.detach().item()
            if cfg.log_every and iteration % cfg.log_every == 0:
                log(f'model {model_idx} epoch {epoch} iteration {iteration}: loss {value:.4f}')
            if stop_rule == 'original':
                # The originals: once past early_stop_epoch, stop after `patience` batches without a new best loss.
                if epoch > cfg.early_stop_epoch:
                    if value < best_loss:
                        best_loss, break_count = value, 0
                    else:
                        break_count += 1
                    stop = break_count > cfg.early_stop_patience
            else:
                # Smoothed: the same patience on an exponential moving average of the loss, which a single lucky
                # batch cannot reset, checked from the first epoch on.
                smoothed = value if smoothed is None else 0.99 * smoothed + 0.01 * value
                if smoothed < best_loss - 1e-4:
                    best_loss, break_count = smoothed, 0
                else:
                    break_count += 1
                stop = break_count > cfg.early_stop_patience * 20
            if stop:
                break
        if stop:
            break
    log(f'model {model_idx}: {iteration} iterations, {epoch + 1} epochs')
    return model.eval().cpu()


def model_path(exp_dir, model_idx):
    return os.path.join(exp_dir, 'models', f'model_{model_idx}.pth')


def train_ensemble(cfg, device=None, stop_rule='original', progress=True, log=print):
    """Train ``cfg.model_num`` classifiers into ``<exp_dir>/models/model_{k}.pth``; models already there are kept,
    so an interrupted run continues with the next model. Returns the list of model paths."""
    device = latents_module.pick_device(device)
    G = latents_module.load_generator(cfg.stylegan_checkpoint, key=cfg.generator_key, device=device)
    cfg.check_generator(G, features=True)
    start = time.time()
    data = AnnotatedSet(cfg, G, device, progress=progress)
    del G
    log(f'{len(data)} annotated samples at {data.out_res}x{data.out_res}, {data.num_class} classes, feature store '
        f'{data.store.nbytes / 2**20:.0f} MiB ({time.time() - start:.1f} s)')
    os.makedirs(os.path.join(cfg.exp_dir, 'models'), exist_ok=True)
    save_training_overview(cfg, data)
    paths = []
    for k in range(cfg.model_num):
        path = model_path(cfg.exp_dir, k)
        if os.path.isfile(path):
            log(f'model {k}: {path} exists, kept')
        else:
            model = train_classifier(data, cfg, k, device, stop_rule=stop_rule, progress=progress, log=log)
            classifier_module.save_classifier(path, model)
        paths.append(path)
    with dnnlib.util.atomic_write(os.path.join(cfg.exp_dir, 'models', 'training.json'), 'w') as f:
        json.dump(dict(num_class=data.num_class, dim=list(cfg.dim), model_num=cfg.model_num, stop_rule=stop_rule,
                       annotated=len(data), seed=cfg.seed), f, indent=2)
    return paths


def save_training_overview(cfg, data):
    """``train_data.jpg``: per annotated sample, the regenerated RGB, the regenerated NIR and the coloured mask."""
    columns = []
    for rgb, nir, mask in zip(data.rgb, data.nir, data.masks):
        size = data.out_res
        rgb = np.asarray(PIL.Image.fromarray(rgb).resize((size, size)))
        nir = np.asarray(PIL.Image.fromarray(nir).resize((size, size)).convert('RGB'))
        columns.append(np.concatenate([rgb, nir, visualize.colorize(mask)], axis=0))
    grid = np.concatenate(columns, axis=1)
    with dnnlib.util.atomic_write(os.path.join(cfg.exp_dir, 'train_data.jpg'), 'wb') as f:
        PIL.Image.fromarray(grid).save(f, 'JPEG', quality=90)
