"""Quick self-check of an installation: runs every custom op on random data and reports which path it used.

On a CUDA machine the CUDA plugins are built (once, cached) and compared against the reference paths.
Exit code 0 when everything agrees, 1 otherwise.
"""

import sys
import time

import click
import torch

from torch_utils import custom_ops
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d


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
def main(device, seed):
    """Check that PyTorch and the project's custom ops work on this machine."""
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
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
        ('conv2d up2', lambda x, impl: conv2d_resample.conv2d_resample(x, w, f=f, up=2, padding=1), 1e-4),
    ]
    ok = all(_compare(name, fn, x, tol) for name, fn, tol in checks)
    click.echo(f'Self-check {"passed" if ok else "FAILED"} in {time.time() - start:.1f} s.')
    sys.exit(0 if ok else 1)


if __name__ == '__main__':
    main()
