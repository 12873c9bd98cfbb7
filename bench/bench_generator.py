"""Generator inference speed and peak memory at 256x256 (paper256 config: z = w = 512, 8 mapping layers,
channel_base 16384, channel_max 512, num_fp16_res 4, conv_clamp 256): the default path against the reference ops.

Speed: one subprocess times every variant in interleaved rounds (each round runs each variant once, in turn), so a
noisy machine slows all of them alike; the speed-up of a variant is the median (and range) of its per-round ratio to
the reference ops. On CPU the variants are the default (fast) path and the reference ops, fused and non-fused
modulated convolution; on CUDA, CUDA ops vs reference ops, each with fp16 blocks and forced fp32. Peak memory: each
variant once more in a subprocess of its own. Prints a Markdown table and writes JSON.

    python bench/bench_generator.py [--device cpu|cuda] [--batch 4] [--rounds 5] [--out bench/results/...json]
"""

import argparse
import json
import os
import statistics
import sys

from bench_common import default_device, peak_memory, run_worker, timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER256 = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
                mapping_kwargs=dict(num_layers=8),
                synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))


def variants(device):
    if device == 'cpu':
        return [dict(name='default (fast path)', ref_ops=False, force_fp32=True, fused=None),
                dict(name='reference ops, fused', ref_ops=True, force_fp32=True, fused=None),
                dict(name='reference ops, non-fused', ref_ops=True, force_fp32=True, fused=False)]
    return [dict(name='CUDA ops, fp16 blocks', ref_ops=False, force_fp32=False, fused=None),
            dict(name='reference ops, fp16 blocks', ref_ops=True, force_fp32=False, fused=None),
            dict(name='CUDA ops, fp32', ref_ops=False, force_fp32=True, fused=None),
            dict(name='reference ops, fp32', ref_ops=True, force_fp32=True, fused=None)]


def _setup(args):
    sys.path.insert(0, REPO)
    import torch

    from training import networks

    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    G = networks.Generator(**PAPER256).eval().requires_grad_(False).to(device)
    z = torch.randn([args.batch, G.z_dim], device=device)
    return torch, G, z, device


def _timed_call(torch, G, z, device, spec):
    """Seconds for one forward pass of ``spec``'s variant."""
    from torch_utils import custom_ops

    kwargs = dict(noise_mode='const', force_fp32=spec['force_fp32'])
    if spec['fused'] is not None:
        kwargs['fused_modconv'] = spec['fused']
    with torch.no_grad(), custom_ops.reference_ops(spec['ref_ops']):
        return timed(device, lambda: G(z, None, **kwargs))[0]


def worker(args):
    """Runs in a subprocess: every variant in interleaved rounds (after a warm-up), one JSON line."""
    torch, G, z, device = _setup(args)
    specs = variants(args.device)
    for spec in specs:
        for _ in range(args.warmup):
            _timed_call(torch, G, z, device, spec)
    rounds = [[_timed_call(torch, G, z, device, spec) for spec in specs] for _ in range(args.rounds)]
    print(json.dumps(dict(rounds=rounds, threads=torch.get_num_threads())))


def memory_worker(args):
    """Runs in a subprocess: one variant once, its peak memory as one JSON line."""
    torch, G, z, device = _setup(args)
    _timed_call(torch, G, z, device, json.loads(args.memory_worker))
    print(json.dumps(dict(peak_bytes=peak_memory(device))))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if available)")
    parser.add_argument('--batch', type=int, default=4, help='images per forward pass')
    parser.add_argument('--rounds', type=int, default=5, help='interleaved timing rounds')
    parser.add_argument('--warmup', type=int, default=1, help='untimed passes of each variant first')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'bench_generator.json'))
    parser.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--memory-worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = default_device(args.device)
    if args.worker:
        return worker(args)
    if args.memory_worker:
        return memory_worker(args)

    common = [sys.executable, __file__, '--device', args.device, '--batch', str(args.batch)]
    timing = run_worker(common + ['--rounds', str(args.rounds), '--warmup', str(args.warmup), '--worker'], 'timing')
    specs = variants(args.device)
    base = [r[1] for r in timing['rounds']]  # the reference ops (fp16 blocks on CUDA, fused on CPU)
    rows = []
    for k, spec in enumerate(specs):
        times = sorted(r[k] for r in timing['rounds'])
        ratios = sorted(b / r[k] for b, r in zip(base, timing['rounds']))
        memory = run_worker(common + ['--memory-worker', json.dumps(spec)], spec['name'])
        rows.append(dict(spec, median_s=statistics.median(times), images_per_s=args.batch / statistics.median(times),
                         speedup_median=statistics.median(ratios), speedup_range=[ratios[0], ratios[-1]],
                         peak_bytes=memory['peak_bytes']))

    print(f'\nGenerator inference, paper256 (256x256), device {args.device}, batch {args.batch}, '
          f'{timing["threads"]} threads, {args.rounds} interleaved rounds\n')
    print('| variant | s / batch (median) | images / s | vs reference ops (median of rounds) | range | peak memory |')
    print('|---|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f'| {r["name"]} | {r["median_s"]:.3f} | {r["images_per_s"]:.2f} | {r["speedup_median"]:.2f}x | '
              f'{r["speedup_range"][0]:.2f}-{r["speedup_range"][1]:.2f} | {r["peak_bytes"] / 2**20:.0f} MiB |')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(device=args.device, batch=args.batch, config=PAPER256, rounds=timing['rounds'], rows=rows), f,
                  indent=2)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
