"""Training speed of the dual-branch StyleGAN2: the fast path against the reference ops, in interleaved rounds.

For each configuration a subprocess builds G, D and D_NIR exactly as ``train_db_stylegan2.py`` would (on the built-in
demo eyes at the configuration's resolution) and times the training step: each round runs ``--iters`` iterations of
the real phase schedule (Gmain every iteration, path-length Greg every 4th, Dmain every iteration, R1 Dreg every 16th;
16 iterations hold each once in proportion), with backward passes and optimiser steps, first on the reference ops
(``torch_utils.custom_ops.reference_ops()``) and then on the default fast path, alternating. The speed-up is the
median (and range) of the per-round ratios, so machine noise hits both paths alike. Prints a Markdown table and
writes JSON.

    python bench/bench_train.py [--device cpu|cuda] [--configs tiny32,auto64] [--rounds 5] [--iters 16]

One process against several (``--gpus N``) for training and generation: ``bench/bench_scaleout.py``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench_common import default_device, peak_memory, run_worker, timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {  # name: (cfg, resolution, batch on CPU, batch on CUDA)
    'tiny32': ('tiny', 32, 8, 32),
    'auto64': ('auto', 64, 4, 32),
    'auto256': ('auto', 256, 4, 16),
    'paper256': ('paper256', 256, 4, 64),
}


def build(args, tmp):
    """Networks, loss, optimisers and phases as the training loop builds them; returns a step function."""
    import torch

    import dnnlib
    from torch_utils.ops import conv2d_gradfix
    from training import options

    cfg, res, batch_cpu, batch_cuda = CONFIGS[args.worker]
    batch = batch_cuda if args.device == 'cuda' else batch_cpu
    data = os.path.join(tmp, 'eyes')
    subprocess.run([sys.executable, os.path.join(REPO, 'dataset_tool.py'), 'demo', '--dest', data, '--count',
                    str(max(2 * batch, 16)), '--resolution', str(res), '--seed', '0'], check=True, capture_output=True)
    _desc, c = options.setup_training_options(data=data, cfg=cfg, batch=batch, metrics=[], workers=0,
                                              device=args.device)
    device = torch.device(args.device)
    conv2d_gradfix.enabled = True
    torch.manual_seed(0)
    common = dict(c_dim=0, img_resolution=res)
    G = dnnlib.util.construct_class_by_name(**c.G_kwargs, **common, img_channels=3, nir_channels=1)
    D = dnnlib.util.construct_class_by_name(**c.D_kwargs, **common, img_channels=3)
    D_NIR = dnnlib.util.construct_class_by_name(**c.D_kwargs, **common, img_channels=1)
    G, D, D_NIR = (m.train().requires_grad_(False).to(device) for m in (G, D, D_NIR))
    loss = dnnlib.util.construct_class_by_name(device=device, G_mapping=G.mapping, G_synthesis=G.synthesis, D=D,
                                               D_NIR=D_NIR, **c.loss_kwargs)
    opt_kwargs = dict(c.G_opt_kwargs, betas=[float(b) for b in c.G_opt_kwargs.betas])
    opts = {name: dnnlib.util.construct_class_by_name(params=m.parameters(), **opt_kwargs)
            for name, m in (('G', G), ('D', D), ('D_NIR', D_NIR))}
    phases = [('Gmain', [G], ['G'], 1), ('Greg', [G], ['G'], 4), ('Dmain', [D, D_NIR], ['D', 'D_NIR'], 1),
              ('Dreg', [D, D_NIR], ['D', 'D_NIR'], 16)]
    real_img = torch.randn([batch, 3, res, res], device=device)
    real_nir = torch.randn([batch, 1, res, res], device=device)
    no_c = torch.zeros([batch, 0], device=device)

    def steps(iters):
        for it in range(iters):
            for name, modules, keys, interval in phases:
                if it % interval != 0:
                    continue
                for m in modules:
                    m.requires_grad_(True)
                for k in keys:
                    opts[k].zero_grad(set_to_none=True)
                gen_z = torch.randn([batch, G.z_dim], device=device)
                loss.accumulate_gradients(phase=name, real_img=real_img, real_nir=real_nir, real_c=no_c,
                                          gen_z=gen_z, gen_c=no_c, sync=True, gain=interval)
                for m in modules:
                    m.requires_grad_(False)
                for k in keys:
                    opts[k].step()

    return lambda iters: timed(device, lambda: steps(iters))[0], dict(cfg=cfg, resolution=res, batch=batch)


def worker(args):
    sys.path.insert(0, REPO)
    import torch

    from torch_utils import custom_ops
    with tempfile.TemporaryDirectory() as tmp:
        run, info = build(args, tmp)
        for ref in (True, False):  # warm-up, untimed
            with custom_ops.reference_ops(ref):
                run(2)
        rounds = []
        for _ in range(args.rounds):
            times = {}
            for name, ref in (('reference', True), ('fast', False)):
                with custom_ops.reference_ops(ref):
                    times[name] = run(args.iters)
            rounds.append(times)
    batch = info['batch']
    ratios = sorted(r['reference'] / r['fast'] for r in rounds)
    sec_per_kimg = {k: statistics.median(r[k] for r in rounds) / (args.iters * batch) * 1000
                    for k in ('reference', 'fast')}
    peak = peak_memory(torch.device(args.device))
    print(json.dumps(dict(config=args.worker, **info, device=args.device, rounds=rounds, ratios=ratios,
                          speedup_median=statistics.median(ratios), sec_per_kimg=sec_per_kimg, peak_bytes=peak,
                          threads=torch.get_num_threads())))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if available)")
    parser.add_argument('--configs', default='tiny32,auto64', help=f'comma list of {", ".join(CONFIGS)}')
    parser.add_argument('--rounds', type=int, default=5, help='interleaved rounds (reference, then fast)')
    parser.add_argument('--iters', type=int, default=16, help='training iterations per path and round')
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
        cmd = [sys.executable, __file__, '--device', args.device, '--rounds', str(args.rounds), '--iters',
               str(args.iters), '--worker', name]
        rows.append(run_worker(cmd, name))

    print(f'\nDual-branch StyleGAN2 training step, device {args.device}, {rows[0]["threads"]} threads, '
          f'{args.rounds} interleaved rounds of {args.iters} iterations (G, path length every 4th, D, R1 every 16th)\n')
    print('| config | cfg | resolution | batch | reference sec/kimg | fast sec/kimg | speed-up (median) | range |'
          ' peak memory |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f'| {r["config"]} | {r["cfg"]} | {r["resolution"]} | {r["batch"]} | '
              f'{r["sec_per_kimg"]["reference"]:.1f} | {r["sec_per_kimg"]["fast"]:.1f} | '
              f'{r["speedup_median"]:.2f}x | {r["ratios"][0]:.2f}-{r["ratios"][-1]:.2f} | '
              f'{r["peak_bytes"] / 2**20:.0f} MiB |')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(device=args.device, rows=rows), f, indent=2)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
