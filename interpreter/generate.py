"""Generating the annotated dataset: new RGB + NIR pairs with ensemble masks and uncertainty scores.

Sample ``i`` always has ``z = RandomState([seed, i]).randn(z_dim)``, so a dataset split into shards
(``start_step``/``num_sample``) over several processes or machines is the same as one made in a single run. Each
sample's files are written under temporary names and renamed; its line in the shard's ``metadata-*.jsonl`` is written
last, so a sample counts as done exactly when that line exists, and an interrupted run continues after the last one.

Several processes (``--gpus N`` or torchrun; ``generate_on_ranks``) split the samples by index, rank ``r`` taking
every ``N``-th from ``r``; each writes its own ``metadata-*.rank{r}.jsonl`` and, once every rank has finished, rank 0
merges them into the one shard file a single process would have written (lines sorted by index), so the folder is
file-for-file the same however many processes made it.

Layout of the output folder::

    RGB/{i:06d}.png  NIR/{i:06d}.png  masks/{i:06d}.png (class ids)  masks_color/{i:06d}.png
    metadata-{start:06d}-{end:06d}.jsonl   one JSON line per sample: index, seed, z, uncertainty score, files
    kept.jsonl / rejected.jsonl             after filter_by_uncertainty(): the samples kept and dropped

``read_sample_list`` / ``generated_samples`` are the one reader of these lists for every later step.
"""

import glob
import json
import os
import time

import numpy as np
import PIL.Image

import dnnlib
from interpreter import classifier as classifier_module
from interpreter import ensemble, visualize
from interpreter import latents as latents_module
from torch_utils import distributed

SUBDIRS = ('RGB', 'NIR', 'masks', 'masks_color')


def sample_z(seed, index, z_dim):
    """The latent of sample ``index``: independent of how the dataset is split into shards."""
    return np.random.RandomState([int(seed), int(index)]).randn(1, z_dim)


def _write_png(path, array, mode):
    with dnnlib.util.atomic_write(path, 'wb') as f:
        PIL.Image.fromarray(array, mode).save(f, 'PNG')


class SampleListError(dnnlib.util.FileError):
    """A list of generated samples (``metadata-*.jsonl``, ``kept.jsonl``) that the generator did not write."""


def read_sample_list(path, skip_cut_lines=False):
    """The entries of a list of generated samples (a ``metadata-*.jsonl`` shard, ``kept.jsonl``, ``rejected.jsonl``)
    in file order: one JSON object per line, each with its integer sample ``index``. ``skip_cut_lines``: a line that
    is not JSON is skipped (in a shard, a line cut by a crash: that sample is simply redone), not an error."""
    entries = []
    for n, entry in dnnlib.util.read_jsonl(path, SampleListError, skip_bad_lines=skip_cut_lines):
        if not isinstance(entry, dict) or type(entry.get('index')) is not int:
            raise SampleListError(path, f'line {n} has no sample "index" (not a kept.jsonl / metadata-*.jsonl '
                                        'line of the mask generator?)')
        entries.append(entry)
    return entries


def finished_samples(out_dir):
    """``{index: metadata entry}`` of every sample of ``out_dir`` whose line is in a ``metadata-*.jsonl`` shard (a line
    cut by a crash is skipped: that sample counts as not done)."""
    return _by_index(sorted(glob.glob(os.path.join(out_dir, 'metadata-*.jsonl'))))


def _by_index(shards):
    """``{index: entry}`` over the shard files ``shards`` that exist (a later line of an index wins)."""
    done = {}
    for path in shards:
        if os.path.isfile(path):
            done.update((e['index'], e) for e in read_sample_list(path, skip_cut_lines=True))
    return done


def generated_samples(out_dir, use_kept=True):
    """``(entries, source)``: the samples of the generated folder ``out_dir`` and the list they come from:
    ``'kept.jsonl'`` (the samples that passed the uncertainty filter, in its order) when it is there and
    ``use_kept``, else ``'metadata-*.jsonl'`` (every finished sample, by index), else ``([], None)``."""
    kept = os.path.join(out_dir, 'kept.jsonl')
    if use_kept and os.path.isfile(kept):
        return read_sample_list(kept), 'kept.jsonl'
    shards = sorted(glob.glob(os.path.join(out_dir, 'metadata-*.jsonl')))
    if shards:
        done = _by_index(shards)
        return [done[i] for i in sorted(done)], 'metadata-*.jsonl'
    return [], None


def _shard_path(out_dir, start, end, rank=None):
    """The metadata file of samples ``start..end``: the merged one, one rank's (``rank``), or a glob of all ranks'
    (``rank='*'``)."""
    stem = os.path.join(out_dir, f'metadata-{start:06d}-{end:06d}')
    if rank is None:
        return f'{stem}.jsonl'
    return f'{stem}.rank[0-9][0-9][0-9].jsonl' if rank == '*' else f'{stem}.rank{rank:03d}.jsonl'


def _finish(out_dir, start, end, log):
    """After every rank is done with samples ``start..end``: one metadata file for them, lines sorted by index (the
    ranks' files merged, a line cut by a crash dropped), and no temporary file of theirs left behind."""
    final = _shard_path(out_dir, start, end)
    rank_files = sorted(glob.glob(_shard_path(out_dir, start, end, rank='*')))
    entries = {i: e for i, e in _by_index([final] + rank_files).items() if start <= i <= end}
    text = ''.join(json.dumps(entries[i]) + '\n' for i in sorted(entries))
    current = open(final).read() if os.path.isfile(final) else None
    if text != current:
        with dnnlib.util.atomic_write(final, 'w') as f:
            f.write(text)
    for path in rank_files:
        os.remove(path)
    stale = [p for sub in SUBDIRS for p in glob.glob(os.path.join(out_dir, sub, '[0-9]' * 6 + '.png.tmp-*'))
             if start <= int(os.path.basename(p)[:6]) <= end]
    for path in stale:
        os.remove(path)
    if rank_files:
        log(f'merged the metadata of {len(rank_files)} ranks into {os.path.basename(final)}')


def generate_dataset(cfg, resume_dir, num_sample, start_step=0, out_dir=None, seed=None, device=None, fast=True,
                     progress=True, log=print, world=None):
    """Generate samples ``start_step .. start_step + num_sample - 1`` into ``out_dir`` (default
    ``<resume_dir>/samples``) with the ensemble in ``<resume_dir>/models``; returns the output folder. On a rank of
    ``world`` only its share is made (see the module notes); every rank must call this."""
    world = world or distributed.World()
    device = latents_module.pick_device(device)
    if world.distributed and device.type == 'cuda':
        device = world.device('cuda')
    seed = cfg.seed if seed is None else seed
    out_dir = out_dir or os.path.join(resume_dir, 'samples')
    end = start_step + num_sample - 1
    models = classifier_module.load_ensemble(resume_dir, cfg.model_num, numpy_class=cfg.number_class,
                                             dim=cfg.dim[2], device=device)
    G = latents_module.load_generator(cfg.stylegan_checkpoint, key=cfg.generator_key, device=device)
    cfg.check_generator(G, features=True)
    average = latents_module.load_average_latent(cfg.average_latent, G) if cfg.average_latent else None
    predictor = ensemble.EnsemblePredictor(models, out_res=cfg.dim[1], mode=cfg.upsample_mode, fast=fast,
                                           top_fraction=cfg.uncertainty_top_fraction)
    for sub in SUBDIRS:
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    done = finished_samples(out_dir)
    distributed.barrier(world)  # every rank has read what is done before any writes more
    already = sum(1 for i in range(start_step, end + 1) if i in done)
    indices = [i for i in world.shard(range(start_step, end + 1)) if i not in done]
    if already and world.is_main:
        log(f'{already} of the {num_sample} samples are already in {out_dir}; continuing')
    metadata_path = _shard_path(out_dir, start_step, end, rank=world.rank if world.distributed else None)
    iterator = indices
    if progress and world.is_main:
        from tqdm import tqdm
        desc = 'generating' if not world.distributed else f'generating (rank 0 of {world.size})'
        iterator = tqdm(indices, desc=desc, unit='sample', dynamic_ncols=True)
    times = []
    with open(metadata_path, 'a') as metadata:
        for i in iterator:
            z = sample_z(seed, i, G.z_dim)
            ws = latents_module.z_to_ws(G, z, psi=cfg.truncation_psi, cutoff=cfg.truncation_cutoff, device=device,
                                        average=average)
            img, nir, feats = latents_module.synthesize(G, ws, noise_mode=cfg.noise_mode, return_features=True,
                                                        force_fp32=cfg.force_fp32)
            start = time.perf_counter()
            result = predictor([f[0] for f in feats])
            times.append(time.perf_counter() - start)
            name = f'{i:06d}.png'
            rgb = latents_module.to_uint8_image(img[0])
            nir_img = latents_module.to_uint8_image(nir[0])
            labels = np.asarray(result.labels, dtype=np.uint8)
            if rgb.shape[:2] != labels.shape:  # masks at dim[1]; images at the generator's resolution
                size = labels.shape[::-1]
                rgb = np.asarray(PIL.Image.fromarray(rgb).resize(size, PIL.Image.LANCZOS))
                nir_img = np.asarray(PIL.Image.fromarray(nir_img).resize(size, PIL.Image.LANCZOS))
            _write_png(os.path.join(out_dir, 'RGB', name), rgb, 'RGB')
            _write_png(os.path.join(out_dir, 'NIR', name), nir_img, 'L')
            _write_png(os.path.join(out_dir, 'masks', name), labels, 'L')
            _write_png(os.path.join(out_dir, 'masks_color', name), visualize.colorize(labels), 'RGB')
            entry = dict(index=i, seed=seed, z=z[0].tolist(), uncertainty_score=float(result.score),
                         rgb=f'RGB/{name}', nir=f'NIR/{name}', mask=f'masks/{name}',
                         mask_color=f'masks_color/{name}')
            metadata.write(json.dumps(entry) + '\n')
            metadata.flush()
    if times and world.is_main:
        log(f'ensemble step: {1000 * np.mean(times):.1f} +- {1000 * np.std(times):.1f} ms per sample '
            f'({"fast" if fast else "dense"} features)')
    distributed.barrier(world)
    if world.is_main:
        _finish(out_dir, start_step, end, log)
    return out_dir


def _generate_rank(world, cfg, resume_dir, num_sample, start_step, out_dir, device, fast, progress):
    out_dir = generate_dataset(cfg, resume_dir, num_sample, start_step=start_step, out_dir=out_dir, device=device,
                               fast=fast, progress=progress, world=world)
    if world.is_main and cfg.uncertainty_portion > 0:
        kept, rejected = filter_by_uncertainty(out_dir, cfg.uncertainty_portion)
        print(f'{kept} samples kept, {rejected} most uncertain listed in {out_dir}/rejected.jsonl', flush=True)


def generate_on_ranks(cfg, resume_dir, num_sample, start_step=0, out_dir=None, device=None, fast=True, gpus=None,
                      progress=True, timeout_s=distributed.DEFAULT_TIMEOUT_S):
    """``generate_dataset`` then the uncertainty filter, in this process, in ``gpus`` processes spawned here, or
    on every rank of a torchrun job (``torch_utils.distributed.launch``)."""
    from interpreter.config import ConfigError
    from training.legacy import CheckpointError
    device_type = latents_module.pick_device(device).type
    distributed.launch(_generate_rank, args=(cfg, resume_dir, num_sample, start_step, out_dir, device, fast, progress),
                       gpus=gpus, device_type=device_type, timeout_s=timeout_s,
                       user_errors=(CheckpointError, ConfigError, FileNotFoundError, SampleListError))


def select_by_uncertainty(scores, portion, skip_lowest=0):
    """Indices (into ``scores``) kept by DatasetGAN's rule: sort by score ascending, drop the ``int(N * portion)``
    most uncertain samples; with ``skip_lowest=30`` also the 30 least uncertain, exactly as DatasetGAN sliced
    ``sorted[30 : -n + 30]``. Returns (kept, rejected) as sorted lists."""
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind='stable')
    n_drop = int(len(scores) * portion)
    if skip_lowest:
        end = len(order) - n_drop + skip_lowest
        kept = order[skip_lowest:end] if n_drop > 0 else order[skip_lowest:]
    else:
        kept = order[:len(order) - n_drop]
    kept_set = set(int(k) for k in kept)
    return sorted(kept_set), sorted(set(range(len(scores))) - kept_set)


def filter_by_uncertainty(out_dir, portion, skip_lowest=0):
    """Write ``kept.jsonl`` and ``rejected.jsonl`` for every sample in ``out_dir``; returns their counts."""
    entries = sorted(finished_samples(out_dir).values(), key=lambda e: e['index'])
    if not entries:
        raise SampleListError(out_dir, 'no generated samples (no metadata-*.jsonl lines)')
    kept, rejected = select_by_uncertainty([e['uncertainty_score'] for e in entries], portion, skip_lowest)
    for name, chosen in (('kept.jsonl', kept), ('rejected.jsonl', rejected)):
        with dnnlib.util.atomic_write(os.path.join(out_dir, name), 'w') as f:
            for k in chosen:
                f.write(json.dumps(entries[k]) + '\n')
    return len(kept), len(rejected)

