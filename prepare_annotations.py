"""Import a person's annotations (GIMP .xcf projects or flattened colour PNGs) as class-index masks.

  python prepare_annotations.py --input EXP/eyes_GIMP --output EXP/eyes_processed \\
      --latents EXP/back_latent_stylegan.npy --ids 63,15,93,2,91,83,20,0

Reads image_{id}.xcf and/or image_{id}_mask.png with image_{id}.jpg|png and image_{id}_NIR.jpg|png, and writes
image_mask{k}.npy, image_{k}.jpg, image_{k}_NIR.jpg (k = 0..N-1), annotations.json and, with --latents,
latent_stylegan.npy. Any bad input stops the command before anything is written, with one line
`error: <file>: <problem>` on stderr and exit code 2. The work itself lives in `interpreter/annotation_import.py`.
"""

import sys

import click

import dnnlib.cli
from interpreter.annotation_errors import AnnotationError
from interpreter.annotation_import import import_annotations
from interpreter.xcf import XcfError


def _parse_ids(ctx, param, value):
    if value is None:
        return None
    parts = [p.strip() for p in value.split(',') if p.strip()]
    if not parts or not all(p.isdigit() for p in parts):
        raise click.BadParameter(f'{value!r} is not a comma-separated list of non-negative integers')
    return [int(p) for p in parts]


@click.command(context_settings=dict(help_option_names=['-h', '--help']))
@click.option('--input', 'input_dir', required=True, metavar='DIR',
              help='Folder with the annotations: image_{id}.xcf and/or image_{id}_mask.png, plus image_{id}.jpg|png '
                   'and image_{id}_NIR.jpg|png.')
@click.option('--output', 'output_dir', required=True, metavar='DIR',
              help="Folder to create (the interpreter's annotation_mask_path). Must not exist, or be empty, unless "
                   "--overwrite.")
@click.option('--palette', default='ocular_4class', show_default=True, metavar='JSON|NAME',
              help='Colour -> class table: a palette JSON file or a built-in name (ocular_4class: background black, '
                   'iris blue, pupil red, sclera green; ocular_10class). Format: see interpreter/palette.py.')
@click.option('--latents', type=click.Path(dir_okay=False), metavar='FILE',
              help='The .npy of all sampled z ([num_samples, z_dim], row = id), e.g. back_latent_stylegan.npy; its '
                   'rows for the chosen ids are written to latent_stylegan.npy in output order.')
@click.option('--ids', callback=_parse_ids, metavar='ID,ID,...',
              help='Which annotated ids to take, in this order (output k = k-th id). Default: all, ascending.')
@click.option('--snap', type=click.FloatRange(min=0), default=0, show_default=True, metavar='D',
              help="Give colours within RGB distance D of exactly one class's palette colours that class "
                   "(anti-aliased brush edges). Colours near several classes, or farther, are still errors.")
@click.option('--source', type=click.Choice(['auto', 'xcf', 'png']), default='auto', show_default=True,
              help='auto: the mask PNG where there is one, checked against the .xcf when both exist; xcf or png: '
                   'only that kind.')
@click.option('--match', type=click.Choice(['auto', 'grey']), default='auto', show_default=True,
              help="auto: match colours (grey-only palette classes by luma); grey: match the luma of every pixel "
                   "against the palette's grey levels, as the authors' notebook did.")
@click.option('--image-format', type=click.Choice(['jpg', 'png']), default='jpg', show_default=True,
              help='Format of the copied RGB and NIR images (copied byte for byte when the source already has it).')
@click.option('--overwrite', is_flag=True, help='Replace an existing, non-empty --output folder.')
def cli(input_dir, output_dir, palette, latents, ids, snap, source, match, image_format, overwrite):
    """Turn hand-made annotations into class-index masks for train_interpreter.py (pipeline step 3).

    Pixels must have exactly the palette's colours (transparent pixels are background); GIMP projects are flattened
    without their bottom layer, the image that was painted over. Everything is checked before anything is written,
    and the output folder appears only when complete.
    """
    summary = import_annotations(input_dir, output_dir, palette=palette, latents=latents, ids=ids, snap=snap,
                                 image_format=image_format, source=source, match=match, overwrite=overwrite)
    names = {c['id']: c['name'] for c in summary['palette']['classes']}
    for item in summary['items']:
        counts = ', '.join(f'{names[int(c)]} {n}' for c, n in item['class_counts'].items())
        snapped = f", {item['snapped_pixels']} snapped" if item['snapped_pixels'] else ''
        click.echo(f"{item['mask']}: id {item['id']} from {item['sources']['annotation']} ({counts}{snapped})")
    lat = ' and latent_stylegan.npy' if summary['latents'] else ''
    click.echo(f"wrote {len(summary['items'])} annotated pairs{lat} to {summary['output_dir']}")
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for any bad input, with one line on stderr)."""
    return dnnlib.cli.run(cli, argv, prog_name='prepare_annotations.py',
                          user_errors=(AnnotationError, XcfError))


if __name__ == '__main__':
    sys.exit(main())
