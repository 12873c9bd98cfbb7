"""Training speed (sec/kimg) and peak memory of the dual-branch StyleGAN2, on the built-in demo eyes.

Each configuration runs the real training loop in its own subprocess (clean peak-memory figures): the demo dataset is
rendered at the configuration's resolution, training runs for a few ticks of a few iterations each, and the median
sec/kimg of the ticks after the first (which includes start-up) is reported. Prints a Markdown table, writes JSON.

    python bench/bench_train.py [--device cpu|cuda] [--configs tiny32,auto256] [--ticks 3] [--iters-per-tick 2]

One process against several (``--gpus N``) for training and generation: ``bench/bench_scaleout.py``.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

from bench_common import default_device, run_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {  # name: (cfg, resolution, batch on CPU, batch on CUDA)
    'tiny32': ('tiny', 32, 8, 32),
    'auto256': ('auto', 256, 4, 16),
    'paper256': ('paper256', 256, 4, 64),
}


def worker(args):
    sys.path.insert(0, REPO)
    import torch

    from training import options
    from training import training_loop as loop

    cfg, res, batch_cpu, batch_cuda = CONFIGS[args.worker]
    batch = batch_cuda if args.device == 'cuda' else batch_cpu
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'eyes')
        subprocess.run([sys.executable, os.path.join(REPO, 'dataset_tool.py'), 'demo', '--dest', data, '--count',
                        str(max(2 * batch, 16)), '--resolution', str(res), '--seed', '0'], check=True,
                       capture_output=True)
        _desc, c = options.setup_training_options(data=data, cfg=cfg, batch=batch, metrics=[], workers=0,
                                                  device=args.device)
        c.pop('device_type', None)
        c.kimg_per_tick = batch * args.iters_per_tick / 1000
        c.total_kimg = c.kimg_per_tick * args.ticks + batch / 1000  # tick 0 is one iteration
        c.image_snapshot_ticks = c.network_snapshot_ticks = None
        run_dir = os.path.join(tmp, 'run')
        os.makedirs(run_dir)
        device = torch.device(args.device)
        loop.training_loop(run_dir=run_dir, device=device, **c)
        with open(os.path.join(run_dir, 'stats.jsonl')) as f:
            ticks = [json.loads(line) for line in f]
    sec_per_kimg = [t['Timing/sec_per_kimg']['mean'] for t in ticks[1:]]
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(dict(config=args.worker, cfg=cfg, resolution=res, batch=batch, device=args.device,
                          sec_per_kimg=statistics.median(sec_per_kimg), ticks=sec_per_kimg, peak_bytes=peak,
                          threads=torch.get_num_threads())))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if available)")
    parser.add_argument('--configs', default='tiny32,auto256', help=f'comma list of {", ".join(CONFIGS)}')
    parser.add_argument('--ticks', type=int, default=3, help='measured ticks after tick 0')
    parser.add_argument('--iters-per-tick', type=int, default=2, help='iterations per tick')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'bench_train.json'))
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = default_device(args.device)
    if args.worker:
        return worker(args)

    rows = []
    for name in args.configs.split(','):
        if name not in CONFIGS:
            sys.exit(f'unknown config {name!r}; choose from {", ".join(CONFIGS)}')
        cmd = [sys.executable, __file__, '--device', args.device, '--ticks', str(args.ticks), '--iters-per-tick',
               str(args.iters_per_tick), '--worker', name]
        rows.append(run_worker(cmd, name))

    print(f'\nDual-branch StyleGAN2 training, device {args.device}, {rows[0]["threads"]} threads '
          f'(median of {args.ticks} ticks x {args.iters_per_tick} iterations)\n')
    print('| config | cfg | resolution | batch | sec/kimg | kimg/hour | peak memory |')
    print('|---|---|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f'| {r["config"]} | {r["cfg"]} | {r["resolution"]} | {r["batch"]} | {r["sec_per_kimg"]:.1f} | '
              f'{3600 / r["sec_per_kimg"]:.1f} | {r["peak_bytes"] / 2**20:.0f} MiB |')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(device=args.device, rows=rows), f, indent=2)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
