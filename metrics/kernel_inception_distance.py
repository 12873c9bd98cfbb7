"""Kernel Inception Distance (Bińkowski et al. 2018), per modality.

Unbiased estimate of the squared MMD with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` on Inception
features, averaged over `num_subsets` random subsets of ``m = min(N_real, N_gen, max_subset_size)`` rows of each set
(drawn without replacement), as StyleGAN2-ADA computes it.
"""

import numpy as np

from . import metric_utils


def kernel_inception_distance(real_features, gen_features, num_subsets=100, max_subset_size=1000, rng=None):
    """KID between two [N, d] feature arrays; `rng` (a numpy RandomState/Generator) draws the subsets."""
    real = np.asarray(real_features, dtype=np.float64)
    gen = np.asarray(gen_features, dtype=np.float64)
    if real.ndim != 2 or gen.ndim != 2 or real.shape[1] != gen.shape[1]:
        raise ValueError(f'feature arrays must be [N, d] with the same d, got {real.shape} and {gen.shape}')
    if num_subsets < 1:
        raise ValueError('num_subsets must be at least 1')
    m = min(real.shape[0], gen.shape[0], int(max_subset_size))
    if m < 2:
        raise ValueError(f'KID needs at least 2 samples in each set, got {real.shape[0]} and {gen.shape[0]}')
    rng = np.random.mtrand._rand if rng is None else rng
    d = real.shape[1]
    total = 0.0
    for _ in range(num_subsets):
        x = gen[rng.choice(gen.shape[0], m, replace=False)]
        y = real[rng.choice(real.shape[0], m, replace=False)]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        total += (a.sum() - np.trace(a)) / (m - 1) - b.sum() * 2 / m
    return float(total / num_subsets / m)


def compute_kid(opts, max_real, num_gen, num_subsets, max_subset_size):
    """KID of `num_gen` generated pairs against up to `max_real` real pairs; ``{modality: kid}`` (NaN off rank 0)."""
    real, gen = metric_utils.compute_real_and_generated_features(
        opts, metric_utils.INCEPTION_URL, max_real=max_real, num_gen=num_gen, capture_all=True)
    if opts.rank != 0:
        return {modality: float('nan') for modality in gen}
    rng = opts.numpy_rng(salt=2)
    return {modality: kernel_inception_distance(real[modality].get_all(), gen[modality].get_all(),
                                                num_subsets=num_subsets, max_subset_size=max_subset_size, rng=rng)
            for modality in gen}
