"""Train a segmentation network (U-Net or DeepLabV3) on a generated RGB + NIR dataset or a real annotated one.

\b
  # The papers' experiment: train on the synthetic dataset (kept.jsonl honoured), validate on real annotated pairs:
  python train_segmentation.py --data EXPERIMENTS/interpreter/CrossEyed_NIR_RGB/samples --val real_val/ \\
      --outdir runs/seg-synthetic --arch deeplabv3_resnet50 --input rgbnir --epochs 50
\b
  # The comparison: the same network on only the few annotated pairs the mask generator was trained on:
  python train_segmentation.py --data EXPERIMENTS/interpreter/CrossEyed_NIR_RGB/eyes_processed \\
      --outdir runs/seg-annotated --arch deeplabv3_resnet50 --input rgbnir --epochs 200
\b
  # Continue an interrupted run exactly where its last finished epoch left it:
  python train_segmentation.py --data ... --outdir runs/seg-synthetic --resume

--data accepts a generated folder (train_interpreter.py --generate_data), a privacy-filter output (apf_filter.py),
an annotation folder (prepare_annotations.py output) or a paired dataset with images/ (or RGB/), NIR/ and masks/.
The run folder gets options.json, log.txt, history.json, curves.png, checkpoint-last.pt and checkpoint-best.pt
(best validation mIoU). Score a checkpoint on a real set with eval_segmentation.py.
"""

import sys

import click

import dnnlib.cli


def _load_config(ctx, _param, path):
    """``--config JSON``: option defaults from a file (keys are the option names, e.g. "epochs", "input"); options on
    the command line still win."""
    if path is None:
        return None
    import json
    try:
        with open(path) as f:
            values = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise click.BadParameter(f'{path}: cannot be read as JSON ({e})', ctx=ctx, param=_param) from None
    if not isinstance(values, dict):
        raise click.BadParameter(f'{path}: must hold a JSON object of option values', ctx=ctx, param=_param)
    names = {p.name: p for p in ctx.command.params}
    aliases = {'input': 'modality'}
    defaults = {}
    for key, value in values.items():
        if key in ('description', 'comment'):
            continue
        name = aliases.get(key, key)
        if name not in names or name == 'config':
            raise click.BadParameter(f'{path}: unknown option {key!r}', ctx=ctx, param=_param)
        defaults[name] = value
    ctx.default_map = dict(ctx.default_map or {}, **defaults)
    return path


ARCH_CHOICES = ('unet', 'deeplabv3_resnet18', 'deeplabv3_resnet34', 'deeplabv3_resnet50', 'deeplabv3_resnet50_tv')


@click.command(context_settings=dict(help_option_names=['-h', '--help'], max_content_width=120),
               epilog=__doc__.split('\n\n', 1)[1])
@click.option('--config', type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=False,
              callback=_load_config, metavar='JSON',
              help='Option values from a JSON file (see EXPERIMENTS/segmentation).')
@click.option('--data', required=True, metavar='DIR', help='Training set (see below for the kinds accepted).')
@click.option('--outdir', required=True, metavar='DIR', help='Run folder.')
@click.option('--arch', type=click.Choice(ARCH_CHOICES), default='unet', show_default=True, help='Network.')
@click.option('--width', type=click.IntRange(min=1), default=None,
              help='U-Net first-level channels [32] / ResNet stem channels [64].')
@click.option('--depth', type=click.IntRange(1, 8), default=None, help='U-Net downsamplings [4].')
@click.option('--output_stride', type=click.Choice(['8', '16']), default='16', show_default=True,
              help='DeepLabV3 output stride.')
@click.option('--input', 'modality', type=click.Choice(['rgb', 'nir', 'rgbnir']), default='rgbnir',
              show_default=True, help='Input modality (rgbnir: 4 channels R, G, B, NIR).')
@click.option('--epochs', type=click.IntRange(min=1), default=30, show_default=True, help='Training epochs.')
@click.option('--repeat', type=click.IntRange(min=1), default=1, show_default=True,
              help='Passes over the training set per epoch (tiny sets: as many steps, fewer checkpoints).')
@click.option('--batch', type=click.IntRange(min=1), default=8, show_default=True, help='Batch size.')
@click.option('--lr', type=click.FloatRange(min=0, min_open=True), default=1e-2, show_default=True,
              help='AdamW learning rate (poly decay to 0).')
@click.option('--weight_decay', type=click.FloatRange(min=0), default=1e-4, show_default=True, help='AdamW decay.')
@click.option('--val', default=None, metavar='DIR', help='Validation set (an annotated folder of any kind above).')
@click.option('--val_fraction', type=click.FloatRange(0, 0.9), default=0.0, show_default=True,
              help='Or: hold out this share of --data for validation.')
@click.option('--class_weights', type=click.Choice(['none', 'inverse', 'sqrt']), default='none', show_default=True,
              help='Loss weights per class from pixel frequencies.')
@click.option('--num_classes', type=click.IntRange(min=2), default=None,
              help='Classes [default: from classes.json, else the largest label + 1].')
@click.option('--class_names', default=None, metavar='A,B,..', help='Class names, comma-separated.')
@click.option('--class_map', '--class-map', 'class_map', default=None, metavar='JSON',
              help="Map the training masks' class ids to the model's (as eval_segmentation.py --class-map).")
@click.option('--all_samples', is_flag=True, help='Generated data: ignore kept.jsonl and use every sample.')
@click.option('--hflip/--no-hflip', default=True, show_default=True, help='Random horizontal flips.')
@click.option('--vflip/--no-vflip', default=False, show_default=True, help='Random vertical flips.')
@click.option('--scale', type=click.FloatRange(1, 4), default=1.25, show_default=True,
              help='Scale-crop: zoom in [1/scale, scale] (1: off).')
@click.option('--jitter', type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help='Colour jitter strength, drawn separately for RGB and NIR (0: off).')
@click.option('--seed', type=click.IntRange(min=0), default=0, show_default=True, help='Random seed.')
@click.option('--amp/--no-amp', default=True, show_default=True, help='bfloat16 autocast on CUDA.')
@click.option('--workers', type=click.IntRange(min=0), default=0, show_default=True, help='Data-loading processes.')
@click.option('--device', default=None, metavar='DEVICE', help='cpu, cuda or cuda:N [default: cuda if available].')
@click.option('--resume', is_flag=True, help='Continue the run in --outdir from its last checkpoint.')
def cli(data, outdir, arch, width, depth, output_stride, modality, epochs, repeat, batch, lr, weight_decay, val,
        val_fraction, class_weights, num_classes, class_names, class_map, all_samples, hflip, vflip, scale, jitter,
        seed, amp, workers, device, resume):
    """Train a segmenter on RGB + NIR pairs with masks."""
    from segmentation.train import Run, TrainOptions

    names = [n.strip() for n in class_names.split(',')] if class_names else None
    opts = TrainOptions(data=data, outdir=outdir, arch=arch, width=width, depth=depth,
                        output_stride=int(output_stride), input=modality, epochs=epochs, repeat=repeat, batch=batch,
                        lr=lr, weight_decay=weight_decay, val=val, val_fraction=val_fraction,
                        class_weights=class_weights, num_classes=num_classes, class_names=names,
                        class_map=class_map, all_samples=all_samples, hflip=hflip, vflip=vflip, scale=scale,
                        jitter=jitter, seed=seed, amp=amp, workers=workers, device=device)
    history = Run(opts, resume=resume, log=click.echo).run()
    last = history[-1] if history else {}
    if 'val_miou' in last:
        best = max((h for h in history if h.get('val_miou') is not None), key=lambda h: h['val_miou'], default=None)
        if best:
            click.echo(f'best validation mIoU {best["val_miou"]:.4f} at epoch {best["epoch"]}')
    click.echo(f'checkpoints in {outdir}: checkpoint-best.pt, checkpoint-last.pt')


def main(argv=None) -> int:
    from segmentation.train import USER_ERRORS

    return dnnlib.cli.run(cli, argv, prog_name='train_segmentation.py', user_errors=USER_ERRORS)


if __name__ == '__main__':
    sys.exit(main())
