"""Downstream segmentation: train and evaluate segmenters on generated or real RGB + NIR datasets."""
