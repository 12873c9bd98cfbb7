"""One process against several: GAN training (sec/kimg) and step-4 generation (samples/s) on the same machine.

Each measurement is the project's own command in a fresh subprocess (``--gpus N``, so the script starts the N
processes itself; on the CPU the cores are split between them, one thread each with two processes on two cores):

* ``train``: ``train_db_stylegan2.py`` on the built-in demo eyes (``--cfg tiny``, 32x32 by default), sec/kimg as the
  median of the ticks after the first (which includes start-up);
* ``generate``: ``train_interpreter.py --generate_data`` with a random tiny generator and a random 10-classifier
  ensemble (the speed does not depend on the weights), samples/s over the whole command (start-up included).

The process counts run in interleaved rounds (1, N, 1, N, ...) and the speed-up is the median of the per-round
ratios, so that drift of a shared machine cancels out. Prints a Markdown table, writes JSON.

    python bench/bench_scaleout.py [--device cpu|cuda] [--processes 1,2] [--rounds 3] [--kimg 1] [--samples 300]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _run(cmd, env=None):
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f'benchmark command failed: {" ".join(cmd)}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}')
    return out


def _env(processes, device):
    env = dict(os.environ)
    if device == 'cpu':  # the cores split between the processes, as torchrun would
        env['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) // processes))
    return env


def make_experiment(root, resolution, num_models=10, num_class=4):
    """A random generator pickle and ensemble plus the interpreter config naming them."""
    import torch

    from interpreter import classifier
    from training import legacy, networks
    torch.manual_seed(0)
    G = networks.Generator(z_dim=64, w_dim=64, c_dim=0, img_resolution=resolution, img_channels=3,
                           mapping_kwargs=dict(num_layers=2),
                           synthesis_kwargs=dict(channel_base=512, channel_max=32)).eval()
    D = networks.Discriminator(c_dim=0, img_resolution=resolution, img_channels=3, channel_base=512, channel_max=32)
    legacy.save_network_pkl(os.path.join(root, 'G.pkl'), dict(G=G, D=D, G_ema=G))
    channels = sum(f.shape[1] for f in G.synthesis(G.mapping(torch.zeros(1, 64), None), return_features=True)[2])
    exp = os.path.join(root, 'exp')
    os.makedirs(os.path.join(exp, 'models'))
    for k in range(num_models):
        model = classifier.PixelClassifier(num_class, channels)
        model.init_weights()
        classifier.save_classifier(os.path.join(exp, 'models', f'model_{k}.pth'), model.eval())
    cfg = dict(exp_dir=exp, dim=[resolution, resolution, channels], stylegan_checkpoint=os.path.join(root, 'G.pkl'),
               stylegan_ver='2', number_class=num_class, max_training=8, model_num=num_models, batch_size=64,
               upsample_mode='bilinear', annotation_mask_path='annotations',
               annotation_image_latent_path='annotations/latent_stylegan.npy', uncertainty_portion=0.1)
    path = os.path.join(exp, 'train_datagan.json')
    with open(path, 'w') as f:
        json.dump(cfg, f)
    return path


def time_train(data, processes, args, tmp):
    outdir = tempfile.mkdtemp(dir=tmp)
    _run([sys.executable, 'train_db_stylegan2.py', f'--outdir={outdir}', f'--data={data}', '--cfg=tiny',
          f'--kimg={args.kimg}', f'--batch={args.batch}', f'--tick={args.kimg / 4:g}', '--snap=1000',
          '--metrics=none', '--aug=noaug', '--workers=0', f'--device={args.device}', f'--gpus={processes}'],
         env=_env(processes, args.device))
    (run,) = os.listdir(outdir)
    with open(os.path.join(outdir, run, 'stats.jsonl')) as f:
        ticks = [json.loads(line) for line in f]
    return statistics.median(t['Timing/sec_per_kimg']['mean'] for t in ticks[1:])


def time_generate(cfg_path, processes, args, tmp):
    out = tempfile.mkdtemp(dir=tmp)
    start = time.perf_counter()
    _run([sys.executable, 'train_interpreter.py', '--exp', cfg_path, '--generate_data', 'True', '--num_sample',
          str(args.samples), '--out', out, '--device', args.device, '--gpus', str(processes)],
         env=_env(processes, args.device))
    return args.samples / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    parser.add_argument('--processes', default='1,2', help='the two process counts to compare, e.g. 1,2 or 1,8')
    parser.add_argument('--rounds', type=int, default=3, help='interleaved rounds')
    parser.add_argument('--resolution', type=int, default=32)
    parser.add_argument('--kimg', type=int, default=1, help='training length per measurement')
    parser.add_argument('--batch', type=int, default=16, help='training batch (total over the processes)')
    parser.add_argument('--samples', type=int, default=300, help='generated samples per measurement')
    parser.add_argument('--parts', default='train,generate')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'bench_scaleout.json'))
    args = parser.parse_args()
    counts = [int(p) for p in args.processes.split(',')]
    parts = args.parts.split(',')
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, 'eyes')
        _run([sys.executable, 'dataset_tool.py', 'demo', '--dest', data, '--count', '64', '--resolution',
              str(args.resolution), '--seed', '0'])
        cfg_path = make_experiment(tmp, args.resolution)
        results = {part: {n: [] for n in counts} for part in parts}
        for r in range(args.rounds):
            for part in parts:
                for n in counts:
                    value = time_train(data, n, args, tmp) if part == 'train' else time_generate(cfg_path, n, args,
                                                                                                tmp)
                    results[part][n].append(value)
                    print(f'round {r + 1}: {part} with {n} process(es): {value:.2f}', flush=True)

    one, many = counts[0], counts[-1]
    rows = []
    for part in parts:
        if part == 'train':  # sec/kimg: lower is better
            ratios = [a / b for a, b in zip(results[part][one], results[part][many])]
            unit = 'sec/kimg'
        else:  # samples/s: higher is better
            ratios = [b / a for a, b in zip(results[part][one], results[part][many])]
            unit = 'samples/s'
        rows.append(dict(part=part, unit=unit, **{f'p{n}': statistics.median(results[part][n]) for n in counts},
                         speedup_median=statistics.median(ratios), speedup_min=min(ratios), speedup_max=max(ratios),
                         rounds=results[part]))
    print(f'\nOne vs {many} processes, device {args.device}, {os.cpu_count()} CPU cores, {args.resolution}x'
          f'{args.resolution}, {args.rounds} interleaved rounds\n')
    print(f'| step | unit | {one} process | {many} processes | speed-up (median) | range |')
    print('|---|---|---:|---:|---:|---:|')
    for r in rows:
        print(f'| {r["part"]} | {r["unit"]} | {r[f"p{one}"]:.2f} | {r[f"p{many}"]:.2f} | {r["speedup_median"]:.2f}x '
              f'| {r["speedup_min"]:.2f}-{r["speedup_max"]:.2f} |')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(device=args.device, processes=counts, cpu_count=os.cpu_count(), rows=rows,
                       settings=vars(args)), f, indent=2)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
