"""Inception Score (Salimans et al. 2016), per modality.

Class probabilities come from the upstream TorchScript Inception called with ``no_output_bias=True`` (as the
original IS code). The score of a split is ``exp(mean_i KL(p_i || mean_j p_j))``; the metric is the mean and the
(population) standard deviation over `num_splits` consecutive splits. For NIR (grey repeated to 3 channels) the
ImageNet classes are a weak proxy; read the NIR score as a diversity indicator only.
"""

import numpy as np

from . import metric_utils


def inception_score(probs, num_splits=10):
    """(mean, std) of the Inception Score over `num_splits` splits of an [N, classes] probability array."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] < num_splits or num_splits < 1:
        raise ValueError(f'need an [N, classes] array with N >= num_splits ({num_splits}), got {probs.shape}')
    n = probs.shape[0]
    scores = []
    for i in range(num_splits):
        part = probs[i * n // num_splits:(i + 1) * n // num_splits]
        marginal = part.mean(axis=0, keepdims=True)
        with np.errstate(divide='ignore', invalid='ignore'):
            terms = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(np.exp(terms.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))


def compute_is(opts, num_gen, num_splits):
    """``{modality: (mean, std)}`` over `num_gen` generated pairs (NaNs off rank 0)."""
    detector_kwargs = dict(no_output_bias=True)  # softmax without the final layer's bias, as the original IS code
    gen = metric_utils.compute_feature_stats_for_generator(
        opts=opts, detector_url=metric_utils.INCEPTION_URL, detector_kwargs=detector_kwargs,
        capture_all=True, max_items=num_gen)
    if opts.rank != 0:
        return {modality: (float('nan'), float('nan')) for modality in gen}
    return {modality: inception_score(gen[modality].get_all(), num_splits=num_splits) for modality in gen}
