"""Improved precision and recall (Kynkäänniemi et al. 2019), per modality, on VGG16 features.

Each point of a manifold set gets a radius: the distance to its k-th nearest other point of the same set (the
(k+1)-th smallest distance, the point itself being the first). A probe is covered if it lies within the radius of
any manifold point. Precision = share of generated probes covered by the real manifold; recall = share of real
probes covered by the generated manifold.

Distances are Euclidean (``torch.cdist``), computed in row batches x column batches in float32 from features stored
in float16 (as upstream stores them). Unlike upstream, the full row x column distance block is never materialised:
each column batch updates a running k+1 smallest distances per row (for radii) or a running "covered" flag (for
probes), so memory stays at one row batch x one column batch. With several processes the column batches are split
between ranks and the partial results merged, so every rank ends with the same numbers.
"""

import torch

from . import metric_utils


def _column_ranges(num_cols, col_batch_size):
    return [(start, min(start + col_batch_size, num_cols)) for start in range(0, num_cols, col_batch_size)]


def _my_ranges(num_cols, col_batch_size, num_gpus, rank):
    return [r for i, r in enumerate(_column_ranges(num_cols, col_batch_size)) if i % num_gpus == rank]


def _gather(tensor, num_gpus):
    parts = [torch.empty_like(tensor) for _ in range(num_gpus)]
    torch.distributed.all_gather(parts, tensor.contiguous())
    return parts


def _distances(rows, cols):
    return torch.cdist(rows.to(torch.float32).unsqueeze(0), cols.to(torch.float32).unsqueeze(0))[0]


def manifold_radii(manifold, nhood_size=3, row_batch_size=10000, col_batch_size=10000, num_gpus=1, rank=0):
    """Distance of every manifold point to its `nhood_size`-th nearest neighbour (excluding itself); float32."""
    num = manifold.shape[0]
    k = nhood_size + 1
    if num < k:
        raise ValueError(f'precision/recall needs more than nhood_size={nhood_size} points per set, got {num}')
    radii = []
    for row_start in range(0, num, row_batch_size):
        rows = manifold[row_start:row_start + row_batch_size]
        best = torch.full([rows.shape[0], k], float('inf'), device=manifold.device)
        for lo, hi in _my_ranges(num, col_batch_size, num_gpus, rank):
            dist = _distances(rows, manifold[lo:hi])
            best = torch.cat([best, dist], dim=1).topk(k, dim=1, largest=False).values
        if num_gpus > 1:
            best = torch.cat(_gather(best, num_gpus), dim=1).topk(k, dim=1, largest=False).values
        radii.append(best[:, k - 1])
    return torch.cat(radii)


def covered(probes, manifold, radii, row_batch_size=10000, col_batch_size=10000, num_gpus=1, rank=0):
    """Boolean per probe: within the radius of at least one manifold point."""
    result = []
    for row_start in range(0, probes.shape[0], row_batch_size):
        rows = probes[row_start:row_start + row_batch_size]
        hit = torch.zeros([rows.shape[0]], dtype=torch.uint8, device=probes.device)
        for lo, hi in _my_ranges(manifold.shape[0], col_batch_size, num_gpus, rank):
            dist = _distances(rows, manifold[lo:hi])
            hit |= (dist <= radii[lo:hi].unsqueeze(0)).any(dim=1).to(torch.uint8)
        if num_gpus > 1:
            torch.distributed.all_reduce(hit, op=torch.distributed.ReduceOp.MAX)
        result.append(hit.bool())
    return torch.cat(result)


def precision_recall(real_features, gen_features, nhood_size=3, row_batch_size=10000, col_batch_size=10000,
                     num_gpus=1, rank=0):
    """(precision, recall) of generated vs real [N, d] feature tensors (on the device to compute on)."""
    real = torch.as_tensor(real_features)
    gen = torch.as_tensor(gen_features)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f'feature arrays must be [N, d] with the same d, got {tuple(real.shape)}, {tuple(gen.shape)}')
    kwargs = dict(row_batch_size=row_batch_size, col_batch_size=col_batch_size, num_gpus=num_gpus, rank=rank)
    results = []
    for manifold, probes in ((real, gen), (gen, real)):
        radii = manifold_radii(manifold, nhood_size=nhood_size, **kwargs)
        results.append(float(covered(probes, manifold, radii, **kwargs).to(torch.float32).mean()))
    return results[0], results[1]


def compute_pr(opts, max_real, num_gen, nhood_size, row_batch_size, col_batch_size):
    """``{modality: (precision, recall)}`` on VGG16 features (NaNs off rank 0, as the other metrics)."""
    real, gen = metric_utils.compute_real_and_generated_features(
        opts, metric_utils.VGG16_URL, max_real=max_real, num_gen=num_gen, capture_all=True)
    results = {}
    for modality in gen:
        real_features = real[modality].get_all_torch().to(torch.float16).to(opts.device)
        gen_features = gen[modality].get_all_torch().to(torch.float16).to(opts.device)
        pr = precision_recall(real_features, gen_features, nhood_size=nhood_size, row_batch_size=row_batch_size,
                              col_batch_size=col_batch_size, num_gpus=opts.num_gpus, rank=opts.rank)
        results[modality] = pr if opts.rank == 0 else (float('nan'), float('nan'))
    return results
