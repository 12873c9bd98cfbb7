"""Score a segmentation checkpoint on an annotated RGB + NIR set: per-class IoU, mIoU, F1 (Dice), pixel accuracy and
the confusion matrix, as JSON and Markdown, with a PNG grid of image / truth / prediction / errors.

\b
  python eval_segmentation.py --checkpoint runs/seg-synthetic/checkpoint-best.pt --data real_test/ \\
      --outdir runs/seg-synthetic/eval-real
\b
  # The truth uses another palette's numbering (here the demo renderer's 0 skin, 1 sclera, 2 iris, 3 pupil against
  # a model trained on ocular_4class's 0 background, 1 iris, 2 pupil, 3 sclera):
  python eval_segmentation.py --checkpoint ... --data real_test/ --outdir ... \\
      --class-map EXPERIMENTS/segmentation/demo_renderer_to_ocular_4class.json

A class map is a JSON object {"<truth id>": <model id> or "ignore"}; every truth class that occurs must be mapped.
Without one, the truth must use the model's numbering (and, where both record class names, the same names).
Writes <outdir>/<name>.json, <name>.md and <name>.png.
"""

import sys

import click

import dnnlib.cli


@click.command(context_settings=dict(help_option_names=['-h', '--help'], max_content_width=120),
               epilog=__doc__.split('\n\n', 1)[1])
@click.option('--checkpoint', required=True, metavar='PT', help='A train_segmentation.py checkpoint.')
@click.option('--data', required=True, metavar='DIR', help='Annotated set: paired folder with masks/, or any kind '
                                                          'train_segmentation.py accepts.')
@click.option('--outdir', required=True, metavar='DIR', help='Where the report goes.')
@click.option('--class_map', '--class-map', 'class_map', default=None, metavar='JSON',
              help='Truth id -> model id map.')
@click.option('--name', default='evaluation', show_default=True, help='Report file name (without extension).')
@click.option('--grid', 'grid_rows', type=click.IntRange(min=0), default=8, show_default=True,
              help='Samples shown in the PNG grid.')
@click.option('--batch', type=click.IntRange(min=1), default=16, show_default=True, help='Inference batch size.')
@click.option('--input', 'expect_input', type=click.Choice(['rgb', 'nir', 'rgbnir']), default=None,
              help='Check that the checkpoint takes this input.')
@click.option('--device', default=None, metavar='DEVICE', help='cpu, cuda or cuda:N [default: cuda if available].')
def cli(checkpoint, data, outdir, class_map, name, grid_rows, batch, expect_input, device):
    """Evaluate a segmenter on real annotated pairs."""
    from segmentation.evaluate import evaluate_checkpoint
    from segmentation.metrics import markdown_table

    report = evaluate_checkpoint(checkpoint, data, outdir=outdir, class_map=class_map, device=device, batch=batch,
                                 grid_rows=grid_rows, name=name, expect_input=expect_input, progress=True)
    click.echo(markdown_table({name: report}, report['classes']))
    click.echo(f'{report["samples"]} pairs; report in {outdir}/{name}.json, .md, .png')


def main(argv=None) -> int:
    from segmentation.train import USER_ERRORS

    return dnnlib.cli.run(cli, argv, prog_name='eval_segmentation.py', user_errors=USER_ERRORS)


if __name__ == '__main__':
    sys.exit(main())
