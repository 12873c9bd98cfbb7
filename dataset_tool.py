"""Paired RGB + NIR datasets: convert, check, and render the built-in demo eye dataset.

  python dataset_tool.py demo --dest=demo_eyes --count=200 --resolution=64 --seed=0
  python dataset_tool.py check demo_eyes
  python dataset_tool.py convert --source=raw_eyes --dest=eyes256.zip --resolution=256 --transform=center-crop

A dataset is a folder (or .zip) with images/ (RGB), NIR/ (one grey channel) and optionally masks/ (class-index
images) and dataset.json (labels); pairs are matched by file name. Any bad input stops the command before it
writes anything, with one line `error: <file>: <problem>` on stderr and exit code 2. The work itself lives in
`training/image_pairs.py`.
"""

import sys

import click
import numpy as np

import dnnlib.cli
from training import dataset_convert, demo_eyes
from training import image_pairs as ds


def _power_of_two(lo, hi):
    def check(ctx, param, value):
        if value is not None and (value < lo or value > hi or value & (value - 1)):
            raise click.BadParameter(f'{value} is not a power of two between {lo} and {hi}')
        return value

    return check


@click.group(context_settings=dict(help_option_names=['-h', '--help']))
def cli():
    """Convert, check and create paired RGB + NIR datasets (images/, NIR/, masks/, dataset.json).

    Every command validates all its input before writing, and writes its output under a temporary name that is
    renamed into place only at the end. Errors are one line on stderr, exit code 2.
    """


@cli.command()
@click.option('--source', required=True, metavar='DIR|ZIP',
              help='Dataset to read: the folder holding images/ and NIR/ (masks/ optional), the RGB folder itself '
                   '(NIR/ beside it), or a .zip of the same.')
@click.option('--dest', required=True, metavar='DIR|ZIP',
              help='Output folder, or an uncompressed .zip when the name ends in .zip. Must not exist (or be an '
                   'empty folder) unless --overwrite.')
@click.option('--max-images', type=click.IntRange(min=1), metavar='N',
              help='Convert only the first N pairs (in file-name order).')
@click.option('--resolution', type=int, callback=_power_of_two(4, 8192), metavar='R',
              help='Output size R x R (a power of two). Default: keep the input size, which must then be square '
                   'with a power-of-two side.')
@click.option('--transform', type=click.Choice(['center-crop', 'center-crop-wide']),
              help='center-crop: keep the largest centred square, then resize. center-crop-wide: scale to the full '
                   'width, then keep the middle rows (tall images) or pad top and bottom with black (wide images); '
                   'needs --resolution.')
@click.option('--resize-filter', type=click.Choice(['box', 'lanczos']), default='lanczos', show_default=True,
              help='Filter for resizing RGB and NIR (masks always use nearest neighbour).')
@click.option('--overwrite', is_flag=True, help='Replace an existing --dest.')
def convert(source, dest, max_images, resolution, transform, resize_filter, overwrite):
    """Copy a paired dataset into the standard layout, optionally cropped and resized.

    RGB, NIR and masks get the same transform; NIR is stored as 1-channel PNG, grey RGB files as 3 channels,
    masks as class-index PNG. Labels from dataset.json are carried over (written as dataset.json at the top).
    """
    info = dataset_convert.convert_dataset(source, dest, max_images=max_images, resolution=resolution,
                                           transform=transform, resize_filter=resize_filter, overwrite=overwrite,
                                           progress=True)
    extra = ', masks' if info['masks'] else ''
    extra += ', labels' if info['labels'] else ''
    click.echo(f"wrote {info['count']} pairs at {info['resolution']}x{info['resolution']}{extra} to {dest}")


def summarize(dataset, deep=False, progress=False) -> dict:
    """A short description of an opened dataset: counts, resolution, channels, labels and masks.

    ``deep=True`` also decodes every pair (catching truncated files the header check cannot see) and lists the
    mask classes that occur.
    """
    files = dataset._files
    raw_indices = sorted(set(int(i) for i in dataset._raw_idx))
    if not dataset.has_labels:
        labels = dict(kind='none', dim=0)
    elif dataset.has_onehot_labels:
        labels = dict(kind='class', dim=dataset.label_dim)
    else:
        labels = dict(kind='vector', dim=dataset.label_dim)
    info = dict(
        path=dataset.path, name=dataset.name, count=len(raw_indices), length=len(dataset),
        resolution=dataset.resolution, channels=dict(rgb=dataset.num_channels, nir=dataset.nir_channels),
        labels=labels, label_file=files.label_file,
        masks=(len(raw_indices) if dataset.has_masks else 0), mask_classes=None,
        grayscale_converted=files.num_grey_rgb, nir_reduced=files.num_rgb_nir, decoded=False,
    )
    if deep:
        classes = set()
        for i in ds._progress(raw_indices, progress, 'checking pixels'):
            files.load_rgb(i)
            files.load_nir(i)
            if dataset.has_masks:
                classes.update(int(v) for v in np.unique(files.load_mask(i)))
        info['decoded'] = True
        if dataset.has_masks:
            info['mask_classes'] = sorted(classes)
    return info


@cli.command()
@click.argument('path', metavar='PATH')
@click.option('--resolution', type=int, callback=_power_of_two(1, 1 << 20), metavar='R',
              help='Also require this resolution.')
@click.option('--quick', is_flag=True, help='Read only the file headers; skip decoding every pixel.')
def check(path, resolution, quick):
    """Validate a dataset as training would open it, and print a summary.

    PATH is the dataset folder (images/ + NIR/), its RGB folder or a .zip. Checks pairing by name, sizes,
    channels, masks and labels; without --quick it also decodes every file.
    """
    dataset = ds.PairedImages(path, resolution=resolution, use_labels=True, load_masks='auto')
    info = summarize(dataset, deep=not quick, progress=not quick)
    click.echo(f"dataset:     {info['path']} (name {info['name']})")
    click.echo(f"pairs:       {info['count']}")
    click.echo(f"resolution:  {info['resolution']}x{info['resolution']}")
    channels = f"RGB {info['channels']['rgb']}, NIR {info['channels']['nir']}"
    if info['grayscale_converted']:
        channels += f"; {info['grayscale_converted']} grey RGB file(s) converted to 3 channels"
    if info['nir_reduced']:
        channels += f"; {info['nir_reduced']} 3-channel grey NIR file(s) reduced to 1 channel"
    click.echo(f'channels:    {channels}')
    labels = info['labels']
    if labels['kind'] == 'none':
        click.echo('labels:      none')
    else:
        kind = 'classes (one-hot)' if labels['kind'] == 'class' else 'float vector'
        click.echo(f"labels:      {labels['dim']} {kind} from {info['label_file']}")
    if info['masks']:
        classes = '' if info['mask_classes'] is None else f" (classes {', '.join(map(str, info['mask_classes']))})"
        click.echo(f"masks:       {info['masks']}{classes}")
    else:
        click.echo('masks:       none')
    click.echo('ok' if info['decoded'] else 'ok (headers only)')


@cli.command()
@click.option('--dest', required=True, metavar='DIR',
              help='Output folder (images/, NIR/, masks/, classes.json). Must not exist or be empty unless '
                   '--overwrite.')
@click.option('--count', type=click.IntRange(min=1), default=100, show_default=True, help='Number of pairs.')
@click.option('--resolution', type=int, default=64, show_default=True, callback=_power_of_two(16, 1024),
              help='Image size (a power of two, 16 to 1024).')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True,
              help='Random seed; the same seed gives byte-identical files.')
@click.option('--overwrite', is_flag=True, help='Replace an existing --dest.')
def demo(dest, count, resolution, seed, overwrite):
    """Render a synthetic dataset of aligned RGB + NIR eye images with segmentation masks.

    Each pair shows one eye (skin, lids, sclera, iris, pupil, lashes, corneal highlights) rendered from one
    geometry into both modalities. Masks are class-index PNGs: 0 background/skin, 1 sclera, 2 iris, 3 pupil.
    """
    demo_eyes.write_demo_dataset(dest, count=count, resolution=resolution, seed=seed, overwrite=overwrite,
                                 progress=True)
    click.echo(f'wrote {count} demo pairs at {resolution}x{resolution} to {dest}')


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for any bad input, with one line on stderr)."""
    return dnnlib.cli.run(cli, argv, prog_name='dataset_tool.py', user_errors=(ds.DatasetError,))


if __name__ == '__main__':
    sys.exit(main())
