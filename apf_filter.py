"""ArcFace Privacy Filter (step 5, faces): drop generated samples whose identity is too close to a real one.

\b
Filter (the default command):
  python apf_filter.py --generated EXPERIMENTS/interpreter/Training_tufts_256/samples \\
      --real DATASETS/Tufts_256/train/images --identity-pattern '^(\\d+)_' \\
      --weights ArcFace_r100_ms1mv3_backbone.pth --arch r100 --outdir EXPERIMENTS/apf/Training_tufts_256

\b
Calibrate a threshold on the real set (genuine vs impostor similarities, threshold at a false-match rate):
  python apf_filter.py calibrate --real DATASETS/Tufts_256/train/images --identity-pattern '^(\\d+)_' \\
      --weights ArcFace_r100_ms1mv3_backbone.pth --arch r100 --fmr 1e-3 --outdir EXPERIMENTS/apf/calibration

The real images' identity is their sub-folder (real/<identity>/...) or the first group of --identity-pattern on the
file name. --generated is a folder written by train_interpreter.py --generate_data (kept.jsonl is used when present,
i.e. the samples that passed the uncertainty filter; --all-samples uses every sample). Bad input: one line on stderr,
exit code 2, nothing written.
"""

import sys
import warnings

import click

import dnnlib.cli
import dnnlib.util
from apf.filter import AUTHORS_DUPLICATE_THRESHOLD, AUTHORS_THRESHOLD

_CTX = dict(help_option_names=['-h', '--help'], max_content_width=120)


def _device(device):
    from torch_utils.misc import DeviceError, get_device
    try:
        return str(get_device(device))
    except DeviceError as e:
        raise click.BadParameter(str(e), param_hint='--device') from None


def _common(f):
    options = [
        click.option('--real', required=True, metavar='DIR', help='Real training RGB images (recursive).'),
        click.option('--identity-pattern', 'identity_pattern', default=None, metavar='REGEX',
                     help="Identity = first group of REGEX on the file name (e.g. '^(\\d+)_') [default: sub-folder]."),
        click.option('--weights', required=True, metavar='PTH', help='arcface_torch backbone weights (backbone.pth).'),
        click.option('--arch', default='r100', show_default=True,
                     type=click.Choice(['r18', 'r34', 'r50', 'r100', 'r200', 'mbf', 'mbf_large']),
                     help='Backbone architecture of --weights.'),
        click.option('--device', default=None, metavar='DEVICE', help='cpu, cuda, cuda:N [default: cuda if present].'),
        click.option('--fp16', is_flag=True, help='Run the backbone trunk in fp16 (CUDA only; as the authors).'),
        click.option('--batch', 'batch_size', type=click.IntRange(min=1), default=32, show_default=True,
                     help='Images per forward pass.'),
        click.option('--center-crop', 'center_crop', type=click.FloatRange(0, 1, min_open=True), default=1.0,
                     show_default=True, help='Keep this central fraction of the shorter side before resizing to 112.'),
        click.option('--cache', default=None, metavar='NPZ',
                     help="Real-embedding cache [default: <outdir>/cache/real_embeddings-<arch>.npz; '' for none]."),
        click.option('--no-progress', 'no_progress', is_flag=True, help='No progress bars.'),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command(context_settings=_CTX, epilog=__doc__.split('\n\n', 1)[1])
@click.option('--generated', required=True, metavar='DIR', help='Dataset written by the mask generator.')
@_common
@click.option('--outdir', required=True, metavar='DIR', help='Output folder (new, empty, or an earlier APF output).')
@click.option('--threshold', type=click.FloatRange(-1, 1), default=AUTHORS_THRESHOLD, show_default=True,
              help='Reject a sample whose cosine to a real identity exceeds this.')
@click.option('--duplicate-threshold', 'duplicate_threshold', type=click.FloatRange(-1, 1), default=None,
              help=f'Also reject near-duplicates of an accepted sample above this (authors: '
                   f'{AUTHORS_DUPLICATE_THRESHOLD}) [default: off].')
@click.option('--identity-score', 'identity_score', type=click.Choice(['max', 'mean']), default='max',
              show_default=True, help='Similarity to an identity: to its closest image, or to its mean embedding.')
@click.option('--all-samples', 'all_samples', is_flag=True,
              help='Ignore kept.jsonl (the uncertainty filter) and use every generated sample.')
@click.option('--manifest-only', 'manifest_only', is_flag=True,
              help='Write accepted.jsonl (paths into --generated) instead of copying the accepted samples.')
@click.option('--gpus', type=click.IntRange(min=1), default=None,
              help="Processes to spread the embedding over (GPUs, or CPU processes) [default: 1, or torchrun's "
                   "world size].")
@click.option('--dist-timeout', 'dist_timeout', type=click.FloatRange(min=1), default=900, show_default=True,
              metavar='SEC', help='Seconds a rank waits for a silent peer before the job ends.')
def filter_cli(generated, real, identity_pattern, weights, arch, device, fp16, batch_size, center_crop, cache,
               no_progress, outdir, threshold, duplicate_threshold, identity_score, all_samples, manifest_only, gpus,
               dist_timeout):
    """Filter a generated RGB+NIR+mask dataset against the real training identities (subcommand: calibrate)."""
    from apf.filter import run_filter_on_ranks
    summary = run_filter_on_ranks(
        gpus=gpus, timeout_s=dist_timeout, generated=generated, real=real, weights=weights, arch=arch, outdir=outdir,
        threshold=threshold, duplicate_threshold=duplicate_threshold, identity_pattern=identity_pattern,
        identity_score=identity_score, device=_device(device), fp16=fp16, batch_size=batch_size,
        center_crop=center_crop, cache=cache, use_kept=not all_samples, manifest_only=manifest_only,
        progress=not no_progress)
    if summary is None:  # a rank of a torchrun job other than 0: rank 0 reports
        return
    c = summary['counts']
    click.echo(f"{c['accepted']} of {c['total']} samples accepted; {c['rejected_identity']} rejected as too close to "
               f"a real identity (cosine > {threshold}), {c['rejected_duplicate']} as duplicates")
    click.echo(f'report: {outdir}/apf_report.csv, histogram: {outdir}/apf_similarity_hist.png, '
               f'summary: {outdir}/apf_summary.json')


@click.command(context_settings=_CTX)
@_common
@click.option('--outdir', default=None, metavar='DIR', help='Write calibration.json and calibration_hist.png here.')
@click.option('--fmr', type=click.FloatRange(0, 1, max_open=True), default=1e-3, show_default=True,
              help='False-match rate the threshold is chosen for.')
@click.option('--max-impostor-pairs', 'max_impostor_pairs', type=click.IntRange(min=1), default=2_000_000,
              show_default=True, help='Subsample impostor pairs beyond this many.')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Seed of the subsampling.')
def calibrate_cli(real, identity_pattern, weights, arch, device, fp16, batch_size, center_crop, cache, no_progress,
                  outdir, fmr, max_impostor_pairs, seed):
    """Genuine and impostor similarity distributions of the real set, and the threshold at a false-match rate."""
    from apf.calibrate import run_calibration
    s = run_calibration(real, weights, arch=arch, outdir=outdir, fmr=fmr, identity_pattern=identity_pattern,
                        device=_device(device), fp16=fp16, batch_size=batch_size, center_crop=center_crop, cache=cache,
                        max_impostor_pairs=max_impostor_pairs, seed=seed, progress=not no_progress, log=click.echo)
    click.echo(f"{s['identities']} identities, {s['images']} images: {s['genuine_pairs']} genuine pairs "
               f"(mean {s['genuine']['mean']:.3f}, std {s['genuine']['std']:.3f}), {s['impostor_pairs']} impostor "
               f"pairs (mean {s['impostor']['mean']:.3f}, std {s['impostor']['std']:.3f})")
    click.echo(f"threshold at FMR {fmr:g}: {s['threshold_at_fmr']:.4f} (FNMR {s['fnmr_at_fmr_threshold']:.4f}); "
               f"genuine mean - 2 std: {s['authors_rule_threshold']:.4f} (FMR {s['fmr_at_authors_rule']:.2e}, "
               f"FNMR {s['fnmr_at_authors_rule']:.4f})")
    if outdir:
        click.echo(f'wrote {outdir}/calibration.json and {outdir}/calibration_hist.png')


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for bad input, with one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from torch_utils.distributed import DistributedError, RankFailed
    # A failed rank carries its exit code (2 when its error was bad input); FileError covers ApfError and a bad
    # list of generated samples (interpreter.generate.SampleListError).
    user_errors = (dnnlib.util.FileError, DistributedError, RankFailed)
    if argv and argv[0] == 'calibrate':
        return dnnlib.cli.run(calibrate_cli, argv[1:], prog_name='apf_filter.py calibrate', user_errors=user_errors)
    return dnnlib.cli.run(filter_cli, argv, prog_name='apf_filter.py', user_errors=user_errors)


if __name__ == '__main__':
    warnings.formatwarning = lambda message, *args, **kwargs: f'warning: {message}\n'
    sys.exit(main())
