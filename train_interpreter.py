"""Train the Semantic Mask Generator (an ensemble of pixel classifiers on the generator's features), or use it to
generate an annotated RGB + NIR dataset.

\b
  # Train the ensemble on the annotated samples named in the config:
  python train_interpreter.py --exp EXPERIMENTS/interpreter/CrossEyed_NIR_RGB/train_datagan.json
\b
  # Generate 1000 annotated pairs with it (resumable; split into shards with --start_step/--num_sample):
  python train_interpreter.py --exp EXPERIMENTS/interpreter/CrossEyed_NIR_RGB/train_datagan.json --generate_data True \\
      --num_sample 1000 --resume EXPERIMENTS/interpreter/CrossEyed_NIR_RGB
\b
  # The same on 4 GPUs of this machine, or with torchrun on one or several machines (same files as one process):
  python train_interpreter.py --exp ... --generate_data True --num_sample 5000 --gpus 4
  torchrun --nproc-per-node 4 train_interpreter.py --exp ... --generate_data True --num_sample 5000
\b
  # Are the annotations enough? Leave-one-out over them (report in exp_dir/cross_validation.md; models/ untouched):
  python train_interpreter.py --exp EXPERIMENTS/interpreter/CrossEyed_NIR_RGB/train_datagan.json --cross_validate True
\b
  # Score generated masks against reference masks of some of the same images (same file names, .png or .npy):
  python train_interpreter.py --exp ... --eval_masks reference_masks/ --out EXPERIMENTS/.../samples
"""

import sys

import click

import dnnlib.cli


def _comma_list(ctx, param, value):
    return [n.strip() for n in value.split(',')] if value else None


@click.command(epilog=__doc__.split('\n\n', 1)[1], context_settings=dict(max_content_width=120))
@click.option('--exp', 'exp', required=True, metavar='JSON', help='Experiment config (the original keys).')
@click.option('--exp_dir', default=None, metavar='DIR', help="Override the config's exp_dir.")
@click.option('--generate_data', type=bool, default=False, show_default=True, metavar='BOOL',
              help='Generate a dataset instead of training (true/false).')
@click.option('--resume', default=None, metavar='DIR', help='Folder with models/ for generation [default: exp_dir].')
@click.option('--num_sample', type=click.IntRange(min=1), default=1000, show_default=True,
              help='Samples to generate.')
@click.option('--start_step', type=click.IntRange(min=0), default=0, show_default=True,
              help='Index of the first sample (for shards).')
@click.option('--out', default=None, metavar='DIR', help='Output folder for generation [default: RESUME/samples].')
@click.option('--seed', type=int, default=None, help="Random seed [default: the config's seed].")
@click.option('--device', default=None, help='cpu, cuda or cuda:N [default: cuda if available].')
@click.option('--gpus', type=click.IntRange(min=1), default=None,
              help='Generation: processes to split the samples over (GPUs, or CPU processes) [default: 1, or '
                   "torchrun's world size].")
@click.option('--dist-timeout', 'dist_timeout', type=click.FloatRange(min=1), default=900, show_default=True,
              metavar='SEC', help='Seconds a rank waits for a silent peer before the job ends.')
@click.option('--dense', is_flag=True, help='Generation: use the dense reference feature path (slow, for checks).')
@click.option('--stop_rule', type=click.Choice(['original', 'smoothed']), default='original', show_default=True,
              help="Training stop rule: the originals' per-batch rule or a smoothed-loss plateau.")
@click.option('--uncertainty_portion', type=click.FloatRange(0, 1), default=None,
              help="Share of the most uncertain samples to drop [default: the config's, 0.1].")
@click.option('--filter_only', type=bool, default=False, metavar='BOOL',
              help='Only (re)write kept.jsonl / rejected.jsonl for the samples in the output folder.')
@click.option('--cross_validate', type=bool, default=False, metavar='BOOL',
              help='Cross-validate the ensemble over the annotated samples instead of training it.')
@click.option('--folds', type=click.IntRange(min=2), default=None,
              help='Cross-validation folds [default: leave-one-out].')
@click.option('--cv_models', type=click.IntRange(min=1), default=None,
              help="Classifiers per fold [default: the config's model_num].")
@click.option('--eval_masks', default=None, metavar='DIR',
              help='Score the generated masks in --out against the reference masks in DIR.')
@click.option('--class_names', default=None, callback=_comma_list, metavar='A,B,..',
              help='Class names for the reports, comma-separated.')
def cli(**options):
    """Train the interpreter ensemble, or generate an annotated dataset with it."""
    from interpreter import commands

    commands.run(**options, log=click.echo)


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for bad input, with one line on stderr)."""
    from interpreter.commands import USER_ERRORS

    return dnnlib.cli.run(cli, argv, prog_name='train_interpreter.py', user_errors=USER_ERRORS)


if __name__ == '__main__':
    sys.exit(main())
