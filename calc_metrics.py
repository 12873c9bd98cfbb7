"""Compute quality metrics of a trained dual-branch generator: every metric is reported for RGB and for NIR.

Examples:

  python calc_metrics.py --network=runs/00000-crosseyed/network-snapshot-000200.pkl --metrics=fid50k_full,kid50k_full
  python calc_metrics.py --network=snapshot.pkl --metrics=pr50k3_full --data=datasets/crosseyed/train --mirror=1

The feature detectors are the official StyleGAN2-ADA TorchScript files (downloaded once into the dnnlib cache);
offline, put inception-2015-12-05.pt / vgg16.pt in a folder and pass --detector-dir (or set BIGAN_DETECTOR_DIR).
When the network sits in a training run directory (one with training_options.json), the results are also
appended to its metric-<name>.jsonl.
"""

import os
import sys

import click
import torch

import dnnlib
import dnnlib.cli
from metrics import metric_main, metric_utils
from torch_utils import distributed
from training import legacy
from training.image_pairs import DatasetError

PAIRED_DATASET = 'training.dataset.PairedImageDataset'
_UPSTREAM_DATASETS = ('training.dataset.ImageFolderDataset',)


class InputError(Exception):
    """Bad command-line input; reported as one 'error: ...' line with exit code 2."""


# Reported as one 'error: ...' line, exit code 2 (a failed rank: its exit code).
USER_ERRORS = (InputError, metric_utils.DetectorUnavailable, distributed.DistributedError, distributed.RankFailed)


def _reason(exc):
    text = ' '.join(str(exc).split())
    return text or type(exc).__name__


def _dataset_kwargs(data, mirror, training_set_kwargs, G):
    if data is not None:
        kwargs = dnnlib.EasyDict(class_name=PAIRED_DATASET, path=data)
    elif training_set_kwargs is not None:
        kwargs = dnnlib.EasyDict(training_set_kwargs)
        if kwargs.get('class_name') in _UPSTREAM_DATASETS or 'class_name' not in kwargs:
            kwargs.class_name = PAIRED_DATASET  # BiOcularGAN/BiFaceGAN snapshots name upstream's single-image class
    else:
        raise InputError('could not look up the dataset options in the network pickle; please specify --data')
    kwargs.resolution = G.img_resolution
    kwargs.use_labels = (G.c_dim != 0)
    if mirror is not None:
        kwargs.xflip = bool(mirror)
    return kwargs


def _check_dataset(dataset_kwargs):
    try:
        dataset = dnnlib.util.construct_class_by_name(**dataset_kwargs)
        size = len(dataset)
    except (DatasetError, OSError) as exc:
        raise InputError(f'cannot open dataset {dataset_kwargs.get("path")}: {_reason(exc)}') from None
    if size == 0:
        raise InputError(f'dataset {dataset_kwargs.get("path")} is empty')


def _run(world, args):
    """One rank: compute every metric (spread over the ranks), report on rank 0."""
    device = world.device('cuda' if torch.cuda.is_available() else 'cpu')
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    progress = metric_utils.ProgressMonitor(verbose=args.verbose) if world.is_main else None
    try:
        for metric in args.metrics:
            if world.is_main and args.verbose:
                print(f'Calculating {metric}...', flush=True)
            result = metric_main.calc_metric(metric=metric, G=args.G, dataset_kwargs=args.dataset_kwargs,
                                             num_gpus=world.size, rank=world.rank, device=device, progress=progress,
                                             detector_dir=args.detector_dir, seed=args.seed)
            if world.is_main:
                metric_main.report_metric(result, run_dir=args.run_dir, snapshot_pkl=args.network_pkl)
    except metric_utils.DetectorUnavailable as exc:
        if world.is_main:
            click.echo(f'error: {exc}', err=True)
        sys.exit(2)


def calc_metrics(network_pkl, metrics, data=None, mirror=None, gpus=None, detector_dir=None, seed=None, verbose=True,
                 timeout_s=distributed.DEFAULT_TIMEOUT_S):
    """Validate everything up front (InputError on bad input), then compute and report the metrics: in this process,
    in ``gpus`` processes spawned here, or on every rank of a torchrun job."""
    world = distributed.from_environment()
    if world is not None:
        if gpus is not None and gpus != world.size:
            raise InputError(f"--gpus {gpus} disagrees with torchrun's world size {world.size}; leave --gpus out")
        gpus = world.size
        verbose = verbose and world.is_main
    gpus = 1 if gpus is None else gpus
    if not network_pkl:
        raise InputError('--network is required')
    metrics = [name.strip() for name in metrics.split(',') if name.strip()] if metrics else []
    if metrics == ['none']:
        metrics = []
    for name in metrics:
        if not metric_main.is_valid_metric(name):
            raise InputError(f'unknown metric {name!r}; valid metrics: {", ".join(metric_main.list_valid_metrics())}')
    if gpus < 1:
        raise InputError(f'--gpus must be at least 1, got {gpus}')
    if world is None and torch.cuda.is_available() and gpus > torch.cuda.device_count():
        raise InputError(f'--gpus={gpus} but only {torch.cuda.device_count()} CUDA device(s) are visible')
    if not dnnlib.util.is_url(network_pkl, allow_file_urls=True) and not os.path.isfile(network_pkl):
        raise InputError(f'network pickle {network_pkl} does not exist')
    if data is not None and not os.path.exists(data):
        raise InputError(f'dataset {data} does not exist')
    if detector_dir is not None and not os.path.isdir(detector_dir):
        raise InputError(f'detector folder {detector_dir} does not exist')

    if verbose:
        print(f'Loading network from "{network_pkl}"...', flush=True)
    try:
        with dnnlib.util.open_url(network_pkl, verbose=verbose) as f:
            network_dict = legacy.load_network_pkl(f)
    except (legacy.CheckpointError, OSError) as exc:
        raise InputError(_reason(exc)) from None
    G = network_dict['G_ema']
    dataset_kwargs = _dataset_kwargs(data, mirror, network_dict.get('training_set_kwargs'), G)
    if metrics:
        _check_dataset(dataset_kwargs)
    for url in sorted({url for name in metrics for url in metric_main.metric_detectors(name)}):
        metric_utils.resolve_detector(url, detector_dir=detector_dir, verbose=verbose)  # fail now, not after an hour

    run_dir = None
    pkl_dir = os.path.dirname(os.path.abspath(network_pkl)) if os.path.isfile(network_pkl) else None
    if pkl_dir is not None and os.path.isfile(os.path.join(pkl_dir, 'training_options.json')):
        run_dir = pkl_dir
    args = dnnlib.EasyDict(G=G, metrics=metrics, dataset_kwargs=dataset_kwargs, num_gpus=gpus, run_dir=run_dir,
                           network_pkl=network_pkl, detector_dir=detector_dir, seed=seed, verbose=verbose)
    if verbose:
        print(f'Dataset options: {dict(dataset_kwargs)}', flush=True)
        print(f'Launching {gpus} process(es)...', flush=True)
    distributed.launch(_run, args=(args,), gpus=None if world is not None else gpus,
                       device_type='cuda' if torch.cuda.is_available() else 'cpu', timeout_s=timeout_s)


@click.command()
@click.option('--network', 'network_pkl', metavar='PATH|URL', help='Network pickle (snapshot, official or BiGAN).')
@click.option('--metrics', default='fid50k_full', show_default=True,
              help=f'Comma-separated metrics or "none": {", ".join(metric_main.list_valid_metrics())}.')
@click.option('--data', metavar='PATH', help='Paired dataset to compare against [default: the one used in training].')
@click.option('--mirror', type=bool, metavar='BOOL', help='Mirror the dataset images [default: as in training].')
@click.option('--gpus', type=int, default=None, metavar='INT',
              help="Number of processes (GPUs) [default: 1, or torchrun's world size].")
@click.option('--dist-timeout', type=click.FloatRange(min=1), default=distributed.DEFAULT_TIMEOUT_S, show_default=True,
              metavar='SEC', help='Seconds a rank waits for a silent peer before the job ends.')
@click.option('--detector-dir', metavar='DIR', help='Folder holding inception-2015-12-05.pt and vgg16.pt.')
@click.option('--seed', type=int, metavar='INT', help='Seed for latents and subsets [default: fresh each run].')
@click.option('--verbose', type=bool, default=True, show_default=True, metavar='BOOL', help='Print progress.')
def command(network_pkl, metrics, data, mirror, gpus, dist_timeout, detector_dir, seed, verbose):
    """Compute quality metrics (RGB and NIR) of a trained network pickle.

    \b
    python calc_metrics.py --network=run/network-snapshot-000200.pkl --metrics=fid50k_full,kid50k_full
    python calc_metrics.py --network=snapshot.pkl --metrics=pr50k3_full --data=datasets/crosseyed --mirror=1
    """
    calc_metrics(network_pkl, metrics, data=data, mirror=mirror, gpus=gpus, detector_dir=detector_dir, seed=seed,
                 verbose=verbose, timeout_s=dist_timeout)


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for bad input, with one line on stderr)."""
    return dnnlib.cli.run(command, argv, prog_name='calc_metrics.py', user_errors=USER_ERRORS)


def cli(argv=None):
    """``main``, exiting with its code (the entry point of earlier versions)."""
    sys.exit(main(argv))


if __name__ == '__main__':
    sys.exit(main())
