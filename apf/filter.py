"""The ArcFace Privacy Filter: drop generated samples whose face is too close to a real training identity.

For every generated RGB image the highest cosine similarity to the real training images is computed (``max``: to
any real image of an identity, the strict reading of "any real identity"; ``mean``: to each identity's mean
embedding, a template). A sample is rejected when that similarity exceeds the threshold (the authors' rule:
``> 0.622``; equal is kept). Optionally, samples are then also dropped as near-duplicates of an earlier accepted
sample (cosine ``> 0.853`` in the authors' ArcBiFaceGAN). A rejected sample's NIR image and mask are dropped with it.

Inputs are validated before any embedding: every generated sample must have its RGB, NIR and mask files, every real
image must have an identity. Outputs (in ``outdir``): the accepted samples (``RGB/ NIR/ masks/ masks_color/`` and
``metadata.jsonl``) or, with ``manifest_only``, only ``accepted.jsonl``; ``apf_report.csv`` (per sample: highest
similarity, nearest identity and image, decision); ``apf_summary.json``; ``apf_similarity_hist.png``. Every file is
written under a temporary name and renamed; the summary is written last.
"""

import csv
import io
import json
import os
import time
from dataclasses import dataclass, field
from typing import Dict

import numpy as np

import dnnlib
from apf import plots
from apf.checkpoint import ApfError
from apf.images import IMAGE_EXTENSIONS, scan_real
from interpreter.generate import generated_samples

AUTHORS_THRESHOLD = 0.622  # ArcBiFaceGAN: mean - 2 std of genuine ArcFace r100 scores (0.776 - 2 * 0.077)
AUTHORS_DUPLICATE_THRESHOLD = 0.853
SAMPLE_KINDS = ('rgb', 'nir', 'mask', 'mask_color')
REQUIRED_KINDS = ('rgb', 'nir', 'mask')
SUBDIR_OF = dict(rgb='RGB', nir='NIR', mask='masks', mask_color='masks_color')
OUTPUT_NAMES = frozenset(list(SUBDIR_OF.values()) + ['cache', 'metadata.jsonl', 'accepted.jsonl', 'apf_report.csv',
                                                     'apf_summary.json', 'apf_similarity_hist.png'])


@dataclass
class GeneratedSample:
    name: str  # the file stem, e.g. '000003'
    files: Dict[str, str]  # kind -> path relative to the generated folder
    entry: dict = field(default_factory=dict)  # its metadata line, when there is one


def _sample_from_entry(entry, source) -> GeneratedSample:
    if not isinstance(entry.get('rgb'), str):
        raise ApfError(source, 'an entry has no "rgb" file (not written by the mask generator?)')
    files = {k: entry[k] for k in SAMPLE_KINDS if isinstance(entry.get(k), str)}
    name = os.path.splitext(os.path.basename(files['rgb']))[0]
    return GeneratedSample(name, files, dict(entry))


def scan_generated(root, use_kept: bool = True):
    """The generated samples in ``root`` and where the list came from: ``kept.jsonl`` (the samples that passed the
    uncertainty filter) when present and ``use_kept``, else every ``metadata-*.jsonl`` line, else the files of
    ``RGB/`` matched by name in ``NIR/`` and ``masks/``. Every listed file must exist."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise ApfError(root, 'generated dataset folder not found')
    entries, source = generated_samples(root, use_kept=use_kept)
    if source is not None:
        samples = [_sample_from_entry(e, os.path.join(root, source)) for e in entries]
    elif os.path.isdir(os.path.join(root, 'RGB')):
        samples, source = [], 'RGB/ NIR/ masks/ folders'
        for name in sorted(os.listdir(os.path.join(root, 'RGB'))):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            files = {k: f'{SUBDIR_OF[k]}/{name}' for k in SAMPLE_KINDS}
            if not os.path.isfile(os.path.join(root, files['mask_color'])):
                del files['mask_color']
            samples.append(GeneratedSample(stem, files))
    else:
        raise ApfError(root, 'not a generated dataset: no kept.jsonl, no metadata-*.jsonl and no RGB/ folder')
    if not samples:
        raise ApfError(root, f'no generated samples ({source} lists none)')
    names = set()
    for s in samples:
        for kind in REQUIRED_KINDS:
            if kind not in s.files:
                raise ApfError(os.path.join(root, source), f'sample {s.name} has no {kind} file listed')
        for kind, rel in s.files.items():
            if not os.path.isfile(os.path.join(root, rel)):
                raise ApfError(os.path.join(root, rel), f'missing {kind} file of generated sample {s.name}')
        if s.name in names:
            raise ApfError(os.path.join(root, source), f'sample {s.name} is listed twice')
        names.add(s.name)
    return samples, source


def identity_similarities(gen, real, real_identities, mode='max', chunk=2048):
    """Highest similarity of each generated embedding to the real identities.

    Returns ``(score [n], identity [n] (index into the sorted unique identities), nearest_real [n] (row of the most
    similar real image), identities)``. ``max``: the identity of the most similar real image; ``mean``: the most
    similar L2-normalised mean embedding of an identity (``nearest_real`` is then that identity's closest image).
    """
    identities = sorted(set(real_identities))
    position = {name: k for k, name in enumerate(identities)}
    id_of_row = np.array([position[i] for i in real_identities], dtype=np.int64)
    n = len(gen)
    score, ident, nearest = np.empty(n, np.float64), np.empty(n, np.int64), np.empty(n, np.int64)
    if mode == 'mean':
        templates = np.stack([real[id_of_row == k].mean(0) for k in range(len(identities))])
        templates /= np.maximum(np.linalg.norm(templates, axis=1, keepdims=True), 1e-12)
    elif mode != 'max':
        raise ValueError(f"identity score mode must be 'max' or 'mean', got {mode!r}")
    real64 = real.astype(np.float64).T
    for s in range(0, n, chunk):
        g = gen[s:s + chunk].astype(np.float64)
        sims = g @ real64  # [c, n_real]
        if mode == 'max':
            nearest[s:s + chunk] = sims.argmax(1)
            score[s:s + chunk] = sims.max(1)
            ident[s:s + chunk] = id_of_row[nearest[s:s + chunk]]
        else:
            tsims = g @ templates.T.astype(np.float64)
            ident[s:s + chunk] = tsims.argmax(1)
            score[s:s + chunk] = tsims.max(1)
            masked = np.where(id_of_row[None, :] == ident[s:s + chunk, None], sims, -np.inf)
            nearest[s:s + chunk] = masked.argmax(1)
    return score, ident, nearest, identities


def decide(score, threshold, gen=None, duplicate_threshold=None):
    """Per sample ``'accepted'``, ``'rejected_identity'`` (``score > threshold``) or ``'rejected_duplicate'`` (cosine
    ``> duplicate_threshold`` to an earlier accepted sample, in the given order), with the duplicated sample's
    position and that cosine (None where not a duplicate)."""
    decisions, dup_of, dup_sim = [], [None] * len(score), [None] * len(score)
    accepted = []
    for i, s in enumerate(score):
        if s > threshold:
            decisions.append('rejected_identity')
            continue
        if duplicate_threshold is not None and accepted:
            sims = gen[accepted].astype(np.float64) @ gen[i].astype(np.float64)
            j = int(sims.argmax())
            if sims[j] > duplicate_threshold:
                decisions.append('rejected_duplicate')
                dup_of[i], dup_sim[i] = accepted[j], float(sims[j])
                continue
        decisions.append('accepted')
        accepted.append(i)
    return decisions, dup_of, dup_sim


def check_outdir(outdir, generated_root):
    """``outdir`` must be new, empty, or an earlier output of this filter (only its own files), and not the input."""
    out = os.path.abspath(outdir)
    if out == os.path.abspath(generated_root) or os.path.abspath(generated_root).startswith(out + os.sep):
        raise ApfError(out, 'the output folder must not be (or contain) the generated dataset')
    if os.path.exists(out) and not os.path.isdir(out):
        raise ApfError(out, 'output path exists and is not a folder')
    if os.path.isdir(out):
        foreign = sorted(n for n in os.listdir(out) if n not in OUTPUT_NAMES and '.tmp-' not in n)
        if foreign:
            raise ApfError(out, f'output folder holds files this filter did not write ({", ".join(foreign[:3])}); '
                                'choose a new or empty --outdir')
    return out


def _write_text(path, text):
    with dnnlib.util.atomic_write(path, 'w') as f:
        f.write(text)


def write_outputs(outdir, generated_root, samples, rows, accepted, manifest_only, hist_args):
    """The accepted samples (or a manifest), the report, the histogram, then the summary (by the caller)."""
    os.makedirs(outdir, exist_ok=True)
    keep_names = {samples[i].name for i in accepted}
    for sub in SUBDIR_OF.values():  # a rerun with other settings: drop what an earlier run accepted
        d = os.path.join(outdir, sub)
        if os.path.isdir(d):
            for name in os.listdir(d):
                if manifest_only or os.path.splitext(name)[0] not in keep_names or '.tmp-' in name:
                    os.remove(os.path.join(d, name))
    for stale in ('metadata.jsonl', 'accepted.jsonl'):
        if os.path.exists(os.path.join(outdir, stale)):
            os.remove(os.path.join(outdir, stale))
    if not manifest_only:
        for kind in {kind for i in accepted for kind in samples[i].files}:
            os.makedirs(os.path.join(outdir, SUBDIR_OF[kind]), exist_ok=True)
    lines = []
    for i in accepted:
        s = samples[i]
        entry = dict(s.entry) if s.entry else dict(name=s.name)
        entry.update(apf_similarity=rows[i]['highest_similarity'], apf_nearest_identity=rows[i]['nearest_identity'])
        if manifest_only:
            entry.update({k: os.path.join(generated_root, rel) for k, rel in s.files.items()})
        else:
            for kind, rel in s.files.items():
                dst_rel = f'{SUBDIR_OF[kind]}/{os.path.basename(rel)}'
                dnnlib.util.copy_atomic(os.path.join(generated_root, rel), os.path.join(outdir, dst_rel))
                entry[kind] = dst_rel
        lines.append(json.dumps(entry))
    _write_text(os.path.join(outdir, 'accepted.jsonl' if manifest_only else 'metadata.jsonl'),
                ''.join(line + '\n' for line in lines))
    buf = io.StringIO()
    columns = ['sample', 'rgb', 'highest_similarity', 'nearest_identity', 'nearest_real_image', 'decision',
               'duplicate_of', 'duplicate_similarity']
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator='\n')
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in columns})
    _write_text(os.path.join(outdir, 'apf_report.csv'), buf.getvalue())
    plots.histogram_png(os.path.join(outdir, 'apf_similarity_hist.png'), **hist_args)


def run_filter(generated, real, weights, arch='r100', outdir=None, threshold=AUTHORS_THRESHOLD,
               duplicate_threshold=None, identity_pattern=None, identity_score='max', device='cpu', fp16=False,
               batch_size=32, center_crop=1.0, cache=None, use_kept=True, manifest_only=False, progress=True,
               log=print, embedder=None, cache_key=None, world=None):
    """Filter the generated dataset ``generated`` against the real images in ``real``; returns the summary dict.

    ``embedder``/``cache_key`` replace loading ``weights`` (tests, notebooks). ``cache``: the real-embedding cache
    file (default ``<outdir>/cache/real_embeddings-<arch>.npz``; ``''``: none). On the ranks of a ``world``
    (``torch_utils.distributed``) the embedding is spread over them and rank 0 alone writes the outputs, which are
    the same as one process's.
    """
    from torch_utils import distributed
    world = world or distributed.World()
    from apf.embed import EmbeddingCache, default_cache_path, load_embedder
    t0 = time.time()
    if outdir is None:
        raise ApfError('an output folder (--outdir) is required')
    if not -1 <= threshold <= 1 or (duplicate_threshold is not None and not -1 <= duplicate_threshold <= 1):
        raise ApfError('thresholds are cosine similarities and must lie in [-1, 1]')
    samples, source = scan_generated(generated, use_kept=use_kept)
    generated = os.path.abspath(generated)
    real_images = scan_real(real, identity_pattern)
    outdir = check_outdir(outdir, generated)
    if embedder is None:
        embedder, cache_key = load_embedder(weights, arch, device=device, fp16=fp16, batch_size=batch_size,
                                            center_crop=center_crop)
    if cache is None:
        cache = default_cache_path(outdir, arch)
    store = EmbeddingCache(cache or None, dict(cache_key or {}, real=os.path.abspath(real)))
    real_emb = store.embed(embedder, [(im.relpath, im.path) for im in real_images], progress=progress, log=log,
                           world=world)
    gen_emb = embedder.embed_files([os.path.join(generated, s.files['rgb']) for s in samples], progress=progress,
                                   desc='embedding generated images', world=world)
    score, ident, nearest, identities = identity_similarities(gen_emb, real_emb, [im.identity for im in real_images],
                                                              mode=identity_score)
    decisions, dup_of, dup_sim = decide(score, threshold, gen_emb, duplicate_threshold)
    rows = []
    for i, s in enumerate(samples):
        rows.append(dict(sample=s.name, rgb=s.files['rgb'], highest_similarity=round(float(score[i]), 6),
                         nearest_identity=identities[ident[i]], nearest_real_image=real_images[nearest[i]].relpath,
                         decision=decisions[i],
                         duplicate_of='' if dup_of[i] is None else samples[dup_of[i]].name,
                         duplicate_similarity='' if dup_sim[i] is None else round(dup_sim[i], 6)))
    accepted = [i for i, d in enumerate(decisions) if d == 'accepted']
    counts = dict(total=len(samples), accepted=len(accepted),
                  rejected_identity=decisions.count('rejected_identity'),
                  rejected_duplicate=decisions.count('rejected_duplicate'))
    thresholds = {'threshold': (threshold, (204, 0, 0))}
    if duplicate_threshold is not None:
        thresholds['duplicate threshold'] = (duplicate_threshold, (193, 125, 17))
    hist_args = dict(series={'generated: highest similarity to a real identity': score}, thresholds=thresholds,
                     title=f'APF: {counts["accepted"]} of {counts["total"]} accepted, '
                           f'{counts["rejected_identity"]} too close to a real identity, '
                           f'{counts["rejected_duplicate"]} duplicates')
    if world.is_main:
        write_outputs(outdir, generated, samples, rows, accepted, manifest_only, hist_args)
    summary = dict(
        counts=counts, threshold=threshold, duplicate_threshold=duplicate_threshold, rule='reject if > threshold',
        identity_score=identity_score, generated=generated, sample_list=source, real=os.path.abspath(real),
        real_images=len(real_images), real_identities=len(identities), arch=arch,
        weights=None if weights is None else os.path.abspath(weights), embedding=cache_key,
        cache=cache or None, similarity=dict(min=float(score.min()), mean=float(score.mean()),
                                             max=float(score.max())),
        outputs=dict(samples=None if manifest_only else 'RGB/ NIR/ masks/ masks_color/ metadata.jsonl',
                     manifest='accepted.jsonl' if manifest_only else None, report='apf_report.csv',
                     histogram='apf_similarity_hist.png'),
        seconds=round(time.time() - t0, 2))
    if world.is_main:
        _write_text(os.path.join(outdir, 'apf_summary.json'), json.dumps(summary, indent=2) + '\n')
    distributed.barrier(world)  # every rank returns once the outputs exist
    return summary


def _filter_rank(world, kwargs, result_file):
    if world.distributed and torch_device_type(kwargs.get('device', 'cpu')) == 'cuda':
        kwargs = dict(kwargs, device=f'cuda:{world.local_rank}')
    summary = run_filter(**kwargs, world=world, log=print)
    if world.is_main and result_file:
        with open(result_file, 'w') as f:
            json.dump(summary, f)
    return summary


def run_filter_on_ranks(gpus=None, timeout_s=900, **kwargs):
    """``run_filter`` in this process, in ``gpus`` processes spawned here, or on every rank of a torchrun job;
    returns the summary (None on the ranks of a torchrun job other than 0). Inputs are checked here first, so
    that bad input is one error, not one per rank."""
    import tempfile

    from torch_utils import distributed
    scan_generated(kwargs['generated'], use_kept=kwargs.get('use_kept', True))
    scan_real(kwargs['real'], kwargs.get('identity_pattern'))
    if kwargs.get('outdir') is None:
        raise ApfError('an output folder (--outdir) is required')
    check_outdir(kwargs['outdir'], os.path.abspath(kwargs['generated']))
    device_type = torch_device_type(kwargs.get('device', 'cpu'))
    world = distributed.from_environment()
    if world is not None or not gpus or gpus == 1:
        summary = distributed.launch(_filter_rank, args=(kwargs, None), gpus=gpus, device_type=device_type,
                                     timeout_s=timeout_s, user_errors=(dnnlib.util.FileError,))
        return summary if world is None or world.is_main else None
    with tempfile.TemporaryDirectory() as tmp:  # spawned ranks hand the summary back through a file
        result_file = os.path.join(tmp, 'summary.json')
        distributed.launch(_filter_rank, args=(kwargs, result_file), gpus=gpus, device_type=device_type,
                           timeout_s=timeout_s, user_errors=(dnnlib.util.FileError,))
        with open(result_file) as f:
            return json.load(f)


def torch_device_type(device) -> str:
    return 'cuda' if str(device).startswith('cuda') else 'cpu'
