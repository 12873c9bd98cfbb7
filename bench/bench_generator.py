"""Generator inference speed and peak memory at 256x256 (paper256 config: z = w = 512, 8 mapping layers,
channel_base 16384, channel_max 512, num_fp16_res 4, conv_clamp 256).

Each configuration runs in its own subprocess so that peak memory is measured cleanly. On CPU the variants are the
default path and the reference ops (identical on CPU, where no plugin exists) with fused and non-fused modulated
convolution. On CUDA: CUDA ops vs reference ops, each with fp16 blocks and forced fp32. Prints a Markdown table and
writes JSON.

    python bench/bench_generator.py [--device cpu|cuda] [--batch 4] [--reps 3] [--out bench/results/...json]
"""

import argparse
import json
import os
import resource
import sys
import time

from bench_common import default_device, run_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER256 = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
                mapping_kwargs=dict(num_layers=8),
                synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))


def variants(device):
    if device == 'cpu':
        return [dict(name='default (fused modconv)', ref_ops=False, force_fp32=True, fused=None),
                dict(name='reference ops, fused', ref_ops=True, force_fp32=True, fused=None),
                dict(name='reference ops, non-fused', ref_ops=True, force_fp32=True, fused=False)]
    return [dict(name='CUDA ops, fp16 blocks', ref_ops=False, force_fp32=False, fused=None),
            dict(name='reference ops, fp16 blocks', ref_ops=True, force_fp32=False, fused=None),
            dict(name='CUDA ops, fp32', ref_ops=False, force_fp32=True, fused=None),
            dict(name='reference ops, fp32', ref_ops=True, force_fp32=True, fused=None)]


def worker(args):
    """Runs in a subprocess: builds G, times it, prints one JSON line."""
    sys.path.insert(0, REPO)
    import torch

    from torch_utils import custom_ops
    from training import networks

    spec = json.loads(args.worker)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    G = networks.Generator(**PAPER256).eval().requires_grad_(False).to(device)
    z = torch.randn([args.batch, G.z_dim], device=device)
    kwargs = dict(noise_mode='const', force_fp32=spec['force_fp32'])
    if spec['fused'] is not None:
        kwargs['fused_modconv'] = spec['fused']

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    times = []
    with torch.no_grad(), custom_ops.reference_ops(spec['ref_ops']):
        for i in range(args.warmup + args.reps):
            sync()
            start = time.perf_counter()
            G(z, None, **kwargs)
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps(dict(spec, batch=args.batch, median_s=median, images_per_s=args.batch / median,
                          peak_bytes=peak, threads=torch.get_num_threads())))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if available)")
    parser.add_argument('--batch', type=int, default=4, help='images per forward pass')
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions (median reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed repetitions first')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'bench_generator.json'))
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = default_device(args.device)
    if args.worker:
        return worker(args)

    rows = []
    for spec in variants(args.device):
        cmd = [sys.executable, __file__, '--device', args.device, '--batch', str(args.batch), '--reps',
               str(args.reps), '--warmup', str(args.warmup), '--worker', json.dumps(spec)]
        rows.append(run_worker(cmd, spec['name']))

    base = rows[1]['median_s'] if len(rows) > 1 else rows[0]['median_s']
    print(f'\nGenerator inference, paper256 (256x256), device {args.device}, batch {args.batch}, '
          f'{rows[0]["threads"]} threads\n')
    print('| variant | s / batch | images / s | vs reference ops | peak memory |')
    print('|---|---:|---:|---:|---:|')
    for r in rows:
        print(f'| {r["name"]} | {r["median_s"]:.3f} | {r["images_per_s"]:.2f} | {base / r["median_s"]:.2f}x | '
              f'{r["peak_bytes"] / 2**20:.0f} MiB |')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(device=args.device, batch=args.batch, config=PAPER256, rows=rows), f, indent=2)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
