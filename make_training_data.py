"""Sample RGB + NIR pairs for a person to annotate, with the latents that regenerate them exactly.

Example (the originals' layout: the experiment folder holds generate.json and receives the outputs):

\b
  python make_training_data.py --exp EXPERIMENTS/interpreter/CrossEyed_NIR_RGB/generate.json \\
      --sv_path EXPERIMENTS/interpreter/CrossEyed_NIR_RGB --num_sample 100 --seed 0

Writes <sv_path>/images_to_annotate/image_{i}.jpg and image_{i}_NIR.jpg (or .png with --png), latent_stylegan.npy
(z, float64 [N, z_dim]), w_stylegan.npy (truncated ws, float32 [N, num_ws, w_dim]), avg_latent_stylegan.npy (the
average w used, float32 [num_ws, w_dim]), a copy of the JSON and make_training_data_settings.json.

Changes from the original make_training_data_DB_SG2.py, each deliberate: the pickle's G_ema is used by default
(config key generator_key; the original loaded G); the synthesis noise is constant (noise_mode, default 'const'; the
original drew random noise, so the features computed later belonged to a slightly different image); truncation is
psi 0.7 on the first 7 ws towards the generator's w_avg, or towards the config's average_latent file when set
(the original averaged 8000 mapped z); --seed makes the run reproducible; the device is chosen, not cuda:1; existing
outputs are replaced only with --overwrite. Bad input: one line on stderr, exit code 2, nothing written.
"""

import sys
import warnings

import click

import dnnlib.cli
from interpreter.config import ConfigError, load_config
from interpreter.latents import make_training_data, pick_device
from torch_utils.misc import DeviceError
from training.legacy import CheckpointError


@click.command(context_settings=dict(help_option_names=['-h', '--help'], max_content_width=120))
@click.option('--exp', required=True, metavar='JSON', help='The experiment config (generate.json).')
@click.option('--sv_path', '--sv-path', 'sv_path', required=True, metavar='DIR', help='Output folder.')
@click.option('--num_sample', '--num-sample', 'num_sample', type=click.IntRange(min=1), default=100,
              show_default=True, help='Number of pairs to generate.')
@click.option('--seed', type=click.IntRange(0, 2 ** 32 - 1), default=None, metavar='INT',
              help="Random seed of the latents [default: the config's seed, 0].")
@click.option('--png', is_flag=True, help='Write lossless PNG instead of JPEG.')
@click.option('--device', default=None, metavar='DEVICE', help='cpu, cuda, cuda:N [default: cuda if available].')
@click.option('--network', default=None, metavar='PKL', help='Generator pickle; overrides stylegan_checkpoint.')
@click.option('--expand_to_dimensions', '--expand-to-dimensions', 'expand_to_dimensions', type=click.IntRange(min=1),
              default=None, help="Overrides the config key (checked against the generator's number of ws).")
@click.option('--overwrite', is_flag=True, help='Replace the outputs of an earlier run in --sv_path.')
def cli(exp, sv_path, num_sample, seed, png, device, network, expand_to_dimensions, overwrite):
    """Generate images to annotate (RGB + NIR pairs) and their latents from a dual-branch generator."""
    try:
        pick_device(device)
    except DeviceError as exc:
        raise click.BadParameter(str(exc), param_hint='--device') from None
    overrides = dict(stylegan_checkpoint=network, expand_to_dimensions=expand_to_dimensions)
    cfg = load_config(exp, overrides, check_files=['stylegan_checkpoint', 'average_latent'])
    info = make_training_data(cfg, sv_path, num_sample=num_sample, seed=seed, png=png, device=device,
                              overwrite=overwrite)
    click.echo(f'wrote {info["num_sample"]} pairs ({info["image_format"]}, seed {info["seed"]}, '
               f'{info["device"]}) to {info["sv_path"]}')


def main(argv=None) -> int:
    """Run the command line; returns the exit code (2 for bad input, with one line on stderr)."""
    return dnnlib.cli.run(cli, argv, prog_name='make_training_data.py', user_errors=(ConfigError, CheckpointError))


if __name__ == '__main__':
    warnings.formatwarning = lambda message, *args, **kwargs: f'warning: {message}\n'
    sys.exit(main())
