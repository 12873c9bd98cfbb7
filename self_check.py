"""Quick self-check of an installation.

Runs the custom ops on random data (on a CUDA machine the plugins are built once, cached, and compared against the
reference paths), then generates an aligned RGB + NIR pair with a small randomly initialised dual-branch generator,
round-trips it through a snapshot, and saves the pair side by side as a PNG. Exit code 0 when everything agrees.
"""

import os
import pickle
import sys
import tempfile
import time

import click
import numpy as np
import torch
from PIL import Image

import dnnlib.cli
from torch_utils import custom_ops, misc
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d
from training import legacy, networks


def _with_impl(impl, fn, *args, **kwargs):
    with custom_ops.reference_ops(impl == 'ref'):
        return fn(*args, **kwargs)


def _compare(name, fn, x, tol):
    ref = fn(x, 'ref')
    if x.device.type != 'cuda':
        click.echo(f'  {name:<16} reference path   output {tuple(ref.shape)}')
        return True
    out = fn(x, 'cuda')
    err = (out.float() - ref.float()).abs().max().item() / max(ref.abs().max().item(), 1e-8)
    ok = err <= tol
    click.echo(f'  {name:<16} CUDA vs reference: max rel error {err:.2e} {"ok" if ok else "MISMATCH"}')
    return ok


@click.command()
@click.option('--device', default=None, help="Device to test, e.g. 'cpu' or 'cuda' (default: CUDA if present).")
@click.option('--seed', default=0, show_default=True, help='Random seed.')
@click.option('--out', default='out/self_check.png', show_default=True, help='Where to save the RGB | NIR pair.')
def cli(device, seed, out):
    """Check that PyTorch and the project's custom ops work on this machine."""
    device = misc.get_device(device)
    torch.manual_seed(seed)
    start = time.time()
    click.echo(f'torch {torch.__version__}, device {device}, CUDA available: {torch.cuda.is_available()}, '
               f'reference ops forced: {custom_ops.reference_ops_forced()}')
    x = torch.randn(4, 32, 16, 16, device=device)
    b = torch.randn(32, device=device)
    w = torch.randn(16, 32, 3, 3, device=device)
    f = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    checks = [
        ('bias_act lrelu', lambda x, impl: bias_act.bias_act(x, b, act='lrelu', clamp=256, impl=impl), 1e-5),
        ('upsample2d', lambda x, impl: upfirdn2d.upsample2d(x, f, impl=impl), 1e-5),
        ('downsample2d', lambda x, impl: upfirdn2d.downsample2d(x, f, impl=impl), 1e-5),
        ('conv2d up2', lambda x, impl: _with_impl(impl, conv2d_resample.conv2d_resample, x, w, f=f, up=2, padding=1),
         1e-4),
    ]
    ok = all(_compare(name, fn, x, tol) for name, fn, tol in checks)
    ok = _generate_pair(device, seed, out) and ok
    click.echo(f'Self-check {"passed" if ok else "FAILED"} in {time.time() - start:.1f} s.')
    return 0 if ok else 1


def _to_uint8(img):
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _generate_pair(device, seed, out):
    """A tiny random dual-branch G: one z gives an RGB and an NIR image; a snapshot round trip must not change it."""
    torch.manual_seed(seed)
    G = networks.Generator(z_dim=64, w_dim=64, c_dim=0, img_resolution=64, img_channels=3,
                           mapping_kwargs=dict(num_layers=2), synthesis_kwargs=dict(channel_base=2048, channel_max=64))
    G = G.eval().requires_grad_(False).to(device)
    z = torch.randn([1, G.z_dim], device=device)
    rgb, nir = G(z, None, noise_mode='const')
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'snapshot.pkl')
        legacy.save_network_pkl(path, dict(G=G, D=None, G_ema=G))
        with open(path, 'rb') as f:
            G2 = pickle.load(f)['G_ema'].to(device)
    rgb2, nir2 = G2(z, None, noise_mode='const')
    same = torch.equal(rgb, rgb2) and torch.equal(nir, nir2)
    pair = np.concatenate([_to_uint8(rgb[0]), np.repeat(_to_uint8(nir[0]), 3, axis=2)], axis=1)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(pair, 'RGB').save(out)
    click.echo(f'  generator        RGB {tuple(rgb.shape)} + NIR {tuple(nir.shape)}, snapshot round trip '
               f'{"identical" if same else "DIFFERS"}; saved {out}')
    return same


def main(argv=None) -> int:
    """Run the command line; returns the exit code (1 when a check fails, 2 for bad input such as an unknown
    device)."""
    return dnnlib.cli.run(cli, argv, prog_name='self_check.py', user_errors=(misc.DeviceError,))


if __name__ == '__main__':
    sys.exit(main())
