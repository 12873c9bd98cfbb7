"""Fréchet Inception Distance (Heusel et al. 2017), per modality.

``FID = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 sqrtm(S_r S_g))`` between Gaussians fitted to the Inception pool
features (2048-d) of real and generated images; the NIR images are repeated to 3 channels before the detector.
"""

import numpy as np
import scipy.linalg

from . import metric_utils


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64; the matrix square root is
    scipy's ``sqrtm`` and its real part is taken (tiny imaginary parts come from round-off)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f'shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}')
    m = np.square(mu1 - mu2).sum()
    s = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return float(np.real(m + np.trace(sigma1 + sigma2 - s * 2)))


def compute_fid(opts, max_real, num_gen):
    """FID of `num_gen` generated pairs against the first `max_real` real pairs (all when None).

    Returns ``{modality: fid}`` (NaN on ranks other than 0).
    """
    real, gen = metric_utils.compute_real_and_generated_features(
        opts, metric_utils.INCEPTION_URL, max_real=max_real, num_gen=num_gen, capture_mean_cov=True)
    if opts.rank != 0:
        return {modality: float('nan') for modality in gen}
    results = {}
    for modality in gen:
        mu_real, sigma_real = real[modality].get_mean_cov()
        mu_gen, sigma_gen = gen[modality].get_mean_cov()
        results[modality] = frechet_distance(mu_gen, sigma_gen, mu_real, sigma_real)
    return results
