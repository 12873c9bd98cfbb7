"""Train the dual-branch StyleGAN2 (one generator, RGB and NIR heads, two discriminators) on aligned RGB+NIR pairs.

Examples:

\b
  # Fine-tune from the official FFHQ 256 model (its NIR head and D_NIR start fresh), as in the papers:
  python train_db_stylegan2.py --outdir=runs --data=DATASETS/faces/train/images --cfg=auto --mirror=1 --resume=ffhq256

\b
  # A small model on the built-in demo eyes, on a CPU:
  python dataset_tool.py demo --dest=demo_eyes --count=200 --resolution=32 --seed=0
  python train_db_stylegan2.py --outdir=runs --data=demo_eyes --cfg=tiny --kimg=2 --metrics=none

\b
  # 8 GPUs of one machine, or 2 machines x 8 GPUs with torchrun (run on both; --node-rank 1 on the second):
  python train_db_stylegan2.py --outdir=runs --data=DATASETS/faces/train/images --cfg=auto --gpus=8
  torchrun --nnodes=2 --node-rank=0 --nproc-per-node=8 --master-addr=10.0.0.1 --master-port=29500 \\
      train_db_stylegan2.py --outdir=/shared/runs --data=/shared/DATASETS/faces/train/images --cfg=auto

\b
  # Continue an interrupted run exactly where its last snapshot was taken:
  python train_db_stylegan2.py --outdir=runs --resume=runs/00001-demo_eyes-tiny-kimg2
"""

import sys

import click

import dnnlib.cli


class CommaSeparatedList(click.ParamType):
    name = 'list'

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        if value is None or value.lower() == 'none' or value == '':
            return []
        return value.split(',')


@click.command(epilog=__doc__.split('Examples:')[1], context_settings=dict(max_content_width=120))
# General options.
@click.option('--outdir', help='Where to save the results', required=True, metavar='DIR')
@click.option('--gpus', help='Number of processes (GPUs, or CPU processes on gloo) [default: 1]', type=int,
              metavar='INT')
@click.option('--device', help='Device type [default: cuda if available, else cpu]', type=click.Choice(['cuda', 'cpu']))
@click.option('--snap', help='Snapshot interval in ticks [default: 50]', type=int, metavar='INT')
@click.option('--tick', help='Progress interval in kimg [default: 4]', type=float, metavar='KIMG')
@click.option('--metrics', help='Comma-separated list or "none" [default: fid50k_full]', type=CommaSeparatedList())
@click.option('--detector-dir', help='Folder with the metric feature detectors (.pt), for offline machines',
              metavar='DIR')
@click.option('--seed', help='Random seed [default: 0]', type=int, metavar='INT')
@click.option('-n', '--dry-run', help='Print training options and exit', is_flag=True)
# Dataset.
@click.option('--data', help='Training data: the RGB folder (with a sibling NIR/), its parent, or a zip',
              metavar='PATH')
@click.option('--cond', help='Train a conditional model based on dataset labels [default: false]', type=bool,
              metavar='BOOL')
@click.option('--subset', help='Train with only N images [default: all]', type=int, metavar='INT')
@click.option('--mirror', help='Enable dataset x-flips (both modalities together) [default: false]', type=bool,
              metavar='BOOL')
# Base config.
@click.option('--cfg', help='Base config [default: auto]',
              type=click.Choice(['auto', 'stylegan2', 'paper256', 'paper512', 'paper1024', 'cifar', 'biface256',
                                 'tiny']))
@click.option('--gamma', help='Override R1 gamma', type=float)
@click.option('--kimg', help='Override training duration', type=int, metavar='INT')
@click.option('--batch', help='Override batch size', type=int, metavar='INT')
@click.option('--nir-weight', help='Weight of the NIR adversarial term in the G loss [default: 1]', type=float)
@click.option('--nir-r1', help='R1 on the NIR discriminator; the original code never applied it [default: true]',
              type=bool, metavar='BOOL')
# Discriminator augmentation.
@click.option('--aug', help='Augmentation mode [default: ada]', type=click.Choice(['noaug', 'ada', 'fixed']))
@click.option('--p', help='Augmentation probability for --aug=fixed', type=float)
@click.option('--target', help='ADA target value for --aug=ada', type=float)
@click.option('--augpipe', help='Augmentation pipeline [default: bgc]',
              type=click.Choice(['blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn',
                                 'bgcfnc']))
# Transfer learning and resuming.
@click.option('--resume', help='Resume from: a name (ffhq256, ...), a pickle path/URL, or a run directory '
              '(continues it exactly)', metavar='PKL|DIR')
@click.option('--freezed', help='Freeze-D [default: 0 layers]', type=int, metavar='INT')
# Performance options.
@click.option('--fp32', help='Disable mixed-precision training', type=bool, metavar='BOOL')
@click.option('--nhwc', help='Use NHWC memory format with FP16', type=bool, metavar='BOOL')
@click.option('--nobench', help='Disable cuDNN benchmarking', type=bool, metavar='BOOL')
@click.option('--allow-tf32', help='Allow PyTorch to use TF32 internally', type=bool, metavar='BOOL')
@click.option('--dist-timeout', help='Seconds a rank waits for a silent peer before the job ends [default: 900]',
              type=click.FloatRange(min=1), metavar='SEC')
@click.option('--workers', help='DataLoader workers [default: 3, at most the number of CPUs]', type=int, metavar='INT')
def cli(outdir, dry_run, dist_timeout, **options):
    """Train the dual-branch StyleGAN2-ADA of BiOcularGAN / BiFaceGAN.

    Every run gets a new directory OUTDIR/NNNNN-DESC with training_options.json, log.txt, stats.jsonl, image grids of
    both modalities (reals.png, reals_nir.png, fakesNNNNNN.png, fakesNNNNNN_nir.png), network snapshots
    (network-snapshot-NNNNNN.pkl, with D_NIR) and, beside each, training-state-NNNNNN.pt for an exact continuation.
    """
    from training import options as training_options

    desc, c = training_options.options_from_command_line(options, log=click.echo)
    training_options.launch_training(c=c, desc=desc, outdir=outdir, dry_run=dry_run, timeout_s=dist_timeout)


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for bad input, with one line on stderr)."""
    from training.options import USER_ERRORS

    return dnnlib.cli.run(cli, argv, prog_name='train_db_stylegan2.py', user_errors=USER_ERRORS)


if __name__ == '__main__':
    sys.exit(main())
