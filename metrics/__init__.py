"""Quality metrics of the dual-branch generator (FID, KID, precision/recall, IS), each for RGB and for NIR.

Entry point: ``metric_main.calc_metric(name, G=..., dataset_kwargs=...)`` and ``metric_main.report_metric``;
shared machinery (options, detectors, feature statistics, cache) is in ``metric_utils``.
"""
