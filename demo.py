"""Run the whole pipeline on the built-in demo eyes, on a CPU, in 7 to 10 minutes on 2 cores, and evaluate it.

\b
  python demo.py                      # everything into out/demo
  python demo.py --outdir /tmp/demo   # elsewhere; run it again to continue an interrupted demo

Steps (each is the project's own command; see <outdir>/summary.md for the exact command lines):
make the demo dataset -> train the dual-branch GAN (tiny config) -> sample images to annotate -> annotate 8 of them
with a U-Net taught by the demo set's true masks, standing in for a person (pipeline/auto_annotate.py) -> import the
annotations -> train the interpreter -> generate an annotated RGB + NIR dataset -> score the generated masks against
the annotator ->
train a segmenter on the generated set and one on the 8 annotated pairs, test both on real demo eyes -> overview.png
and summary.md. The privacy filter (faces only) is not part of the eye demo; see apf_filter.py --help.
"""

import sys

import click

import dnnlib.cli
import dnnlib.util
from pipeline.demo import DemoError, Settings, run_demo


@click.command(context_settings=dict(help_option_names=['-h', '--help'], max_content_width=120),
               epilog=__doc__.split('\n\n', 1)[1])
@click.option('--outdir', default='out/demo', show_default=True, metavar='DIR', help='Where everything goes.')
@click.option('--kimg', type=click.IntRange(min=1), default=Settings.kimg, show_default=True,
              help='GAN training length in thousands of images (about 30 s each on 2 CPU cores).')
@click.option('--count', type=click.IntRange(min=16), default=Settings.count, show_default=True,
              help='Pairs in the demo training set.')
@click.option('--num_sample', '--num-sample', 'num_sample', type=click.IntRange(min=1), default=Settings.num_sample,
              show_default=True, help='Annotated pairs to generate.')
@click.option('--seg_epochs', '--seg-epochs', 'seg_epochs', type=click.IntRange(min=1), default=Settings.seg_epochs,
              show_default=True, help='Evaluation: segmenter training epochs on the generated set.')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Random seed of every step.')
@click.option('--device', default=None, metavar='DEVICE', help='cpu or cuda [default: cuda if available].')
@click.option('--fresh', is_flag=True, help='Delete an earlier demo in --outdir and start again.')
def cli(outdir, kimg, count, num_sample, seg_epochs, seed, device, fresh):
    """The BiOcularGAN pipeline end to end on synthetic eyes: prints where to look when it is done."""
    run_demo(Settings(outdir=outdir, kimg=kimg, count=count, num_sample=num_sample, seg_epochs=seg_epochs, seed=seed,
                      device=device), fresh=fresh, log=click.echo)


def main(argv=None) -> int:
    return dnnlib.cli.run(cli, argv, prog_name='demo.py', user_errors=(DemoError, dnnlib.util.FileError))


if __name__ == '__main__':
    sys.exit(main())
