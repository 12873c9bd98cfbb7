"""Choosing the privacy threshold from data: genuine and impostor cosine distributions of a real set with identities.

Genuine pairs: two different images of one identity; impostor pairs: images of two different identities. The
threshold at a false-match rate ``fmr`` is the smallest similarity ``t`` (among the impostor scores) such that at
most ``fmr`` of the impostor pairs score strictly above it, i.e. above ``t`` a pair is called "same identity" with
at most that error. The authors' rule (mean - 2 std of the genuine scores; 0.622 for ArcFace r100 on their data) is
reported next to it: it removes samples that look like a genuine mate, which is far looser in the privacy sense than
an FMR-based threshold (about 0.28-0.30 at FMR 1e-3 for ArcFace on LFW, reference anchors 4.3).
"""

import json
import os
from typing import Optional

import numpy as np

import dnnlib
from apf import plots
from apf.checkpoint import ApfError
from apf.images import scan_real


def pair_scores(emb, identities, max_impostor_pairs: Optional[int] = 2_000_000, seed: int = 0, chunk: int = 2048):
    """Genuine and impostor cosine scores (float64) over all pairs ``i < j``; impostors are subsampled uniformly
    (with ``seed``) when there are more than ``max_impostor_pairs``."""
    emb = np.asarray(emb, np.float64)
    ids = np.asarray(identities, dtype=object)
    n = len(emb)
    genuine, impostor = [], []
    for s in range(0, n, chunk):
        sims = emb[s:s + chunk] @ emb.T
        rows = np.arange(s, min(n, s + chunk))
        upper = rows[:, None] < np.arange(n)[None, :]
        same = ids[rows][:, None] == ids[None, :]
        genuine.append(sims[upper & same])
        impostor.append(sims[upper & ~same])
    genuine = np.concatenate(genuine) if genuine else np.zeros(0)
    impostor = np.concatenate(impostor) if impostor else np.zeros(0)
    if max_impostor_pairs and len(impostor) > max_impostor_pairs:
        pick = np.random.RandomState(seed).choice(len(impostor), max_impostor_pairs, replace=False)
        impostor = impostor[np.sort(pick)]
    return genuine, impostor


def threshold_at_fmr(impostor, fmr):
    """The smallest impostor score ``t`` with ``mean(impostor > t) <= fmr``."""
    if not 0 <= fmr < 1:
        raise ValueError(f'fmr must lie in [0, 1), got {fmr}')
    imp = np.sort(np.asarray(impostor, np.float64))[::-1]  # descending
    if len(imp) == 0:
        raise ValueError('no impostor pairs: the real set needs at least two identities')
    allowed = int(np.floor(fmr * len(imp) + 1e-9))  # impostor pairs that may score above t
    return float(imp[min(allowed, len(imp) - 1)])


def calibrate(real, embedder, cache_key=None, identity_pattern=None, fmr=1e-3, outdir=None, cache=None,
              max_impostor_pairs=2_000_000, seed=0, progress=True, log=print, images=None):
    """Genuine/impostor statistics and thresholds of the real set; writes ``calibration.json`` and
    ``calibration_hist.png`` to ``outdir`` when given. Returns the statistics dict. ``images``: the result of
    ``scan_real(real, identity_pattern)`` when the caller has it already."""
    from apf.embed import EmbeddingCache
    images = scan_real(real, identity_pattern) if images is None else images
    identities = [im.identity for im in images]
    if len(set(identities)) < 2:
        raise ApfError(os.path.abspath(real), 'calibration needs at least two identities')
    store = EmbeddingCache(cache or None, dict(cache_key or {}, real=os.path.abspath(real)))
    emb = store.embed(embedder, [(im.relpath, im.path) for im in images], progress=progress, log=log)
    genuine, impostor = pair_scores(emb, identities, max_impostor_pairs, seed)
    if len(genuine) == 0:
        raise ApfError(os.path.abspath(real), 'calibration needs an identity with at least two images')
    t_fmr = threshold_at_fmr(impostor, fmr)
    mu, sd = float(genuine.mean()), float(genuine.std())
    authors_rule = mu - 2 * sd
    stats = dict(
        real=os.path.abspath(real), images=len(images), identities=len(set(identities)),
        genuine_pairs=int(len(genuine)), impostor_pairs=int(len(impostor)),
        genuine=dict(mean=mu, std=sd, min=float(genuine.min()), max=float(genuine.max())),
        impostor=dict(mean=float(impostor.mean()), std=float(impostor.std()), min=float(impostor.min()),
                      max=float(impostor.max())),
        fmr=fmr, threshold_at_fmr=t_fmr,
        fmr_measured=float(np.mean(impostor > t_fmr)), fnmr_at_fmr_threshold=float(np.mean(genuine <= t_fmr)),
        authors_rule_threshold=authors_rule, authors_rule='genuine mean - 2 std',
        fmr_at_authors_rule=float(np.mean(impostor > authors_rule)),
        fnmr_at_authors_rule=float(np.mean(genuine <= authors_rule)),
        embedding=cache_key)
    if outdir:
        os.makedirs(outdir, exist_ok=True)
        with dnnlib.util.atomic_write(os.path.join(outdir, 'calibration.json'), 'w') as f:
            f.write(json.dumps(stats, indent=2) + '\n')
        plots.histogram_png(
            os.path.join(outdir, 'calibration_hist.png'), series={'genuine pairs': genuine, 'impostor pairs': impostor},
            thresholds={f'threshold at FMR {fmr:g}': (t_fmr, (204, 0, 0)),
                        'genuine mean - 2 std': (authors_rule, (117, 80, 123))},
            title=f'calibration: {stats["identities"]} identities, {stats["images"]} images', value_range=(-0.5, 1.0))
    return stats


def run_calibration(real, weights, arch='r100', outdir=None, fmr=1e-3, identity_pattern=None, device='cpu',
                    fp16=False, batch_size=32, center_crop=1.0, cache=None, max_impostor_pairs=2_000_000, seed=0,
                    progress=True, log=print, embedder=None, cache_key=None):
    """``calibrate`` with the backbone loaded from ``weights``, as ``apf.filter.run_filter`` filters; returns the
    statistics dict. The real set is checked before the weights are loaded. ``embedder``/``cache_key`` replace loading
    ``weights``. ``cache``: the real-embedding cache file (default ``<outdir>/cache/real_embeddings-<arch>.npz``
    when there is an ``outdir``, else none; ``''``: none)."""
    from apf.embed import default_cache_path, load_embedder
    images = scan_real(real, identity_pattern)
    if embedder is None:
        embedder, cache_key = load_embedder(weights, arch, device=device, fp16=fp16, batch_size=batch_size,
                                            center_crop=center_crop)
    if cache is None:
        cache = default_cache_path(outdir, arch) if outdir else ''
    return calibrate(real, embedder, cache_key, identity_pattern=identity_pattern, fmr=fmr, outdir=outdir, cache=cache,
                     max_impostor_pairs=max_impostor_pairs, seed=seed, progress=progress, log=log, images=images)
