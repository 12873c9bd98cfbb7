"""Mask generation with the pixel-classifier ensemble, dense reference vs fast path, and the training-time feature
store: time per sample and peak memory at 256x256 with the paper256 features (14 maps, 4992 channels).

Paths:

* ``dense``: the reference, as the originals: every map upsampled to 256x256 and concatenated into a
  [65536, 4992] matrix, every classifier run on all of it.
* ``fast``: ``EnsemblePredictor(fast=True)``: each classifier's first layer applied at the maps' native
  resolutions, only its 128-channel result upsampled, band by band (on CPU through the C upsampling kernel).
* ``fast_torch`` (CPU): the same with the kernel off, i.e. the PyTorch fallback used where no C compiler exists.
* ``generator`` (with ``--features generator`` or ``--generator``): the paper256 generator's forward pass with its
  feature maps, common to both paths and reported separately.
* ``train``: ``NativeFeatureStore`` of 8 annotated samples plus ``--train-batches`` batches of 64 random pixels
  gathered from it, each followed by one Adam step of a classifier (the originals' training loop).

Speed: one worker runs every path in interleaved rounds (dense, fast, fast_torch, dense, ...; the fast paths best
of ``--fast-tries`` per round) and the speed-up is the median over rounds of dense / path. Shared machines drift by
tens of percent within minutes, so only times taken side by side are compared. Memory: each path in a process of
its own (one warm-up sample, then ``--memory-reps``).

The classifiers have the originals' shape (4992 -> 128 -> 32 -> C, C = 4 by default) with their init (Linear
weights N(0, 0.02), biases 0; BatchNorm defaults) from fixed seeds; the features are random tensors of the exact
shapes (default) or a real paper256 generator's output (``--features generator``, random weights, fixed z). All
paths use the same features and models; the table reports how many labels agree.

Peak memory: CPU peak RSS (``resource.getrusage``; the kernel's peak counter is reset right before the measured
section where Linux allows it) minus the RSS at that point, i.e. what the path itself needs on top of the
features and models; the absolute process peak is in the JSON. CUDA: ``torch.cuda.max_memory_allocated`` minus
the allocation at that point.

    python bench/bench_interpreter.py [--device cpu|cuda] [--models 10] [--reps 5] [--out ...json]
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

from bench_common import default_device, run_worker, sync, timed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER256 = dict(z_dim=512, w_dim=512, c_dim=0, img_resolution=256, img_channels=3,
                mapping_kwargs=dict(num_layers=8),
                synthesis_kwargs=dict(channel_base=16384, channel_max=512, num_fp16_res=4, conv_clamp=256))
LAYOUT = [(c, r) for r, c in {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}.items() for _ in range(2)]
OUT_RES = 256
VARIANTS = ('dense', 'fast', 'fast_torch')
NAMES = dict(dense='dense reference', fast='fast (native-resolution first layer, C upsampling kernel)',
             fast_torch='fast, PyTorch only (the fallback without a C compiler)')


# ----------------------------------------------------------------------------------------------- measurements


def rss_bytes():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def reset_peak_rss():
    """Reset the kernel's peak-RSS counter (Linux >= 4.0); False where that is not allowed."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Memory:
    """Peak memory of a section, above what was in use when it started."""

    def __init__(self, device):
        self.device = device

    def start(self):
        import torch
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.reset = reset_peak_rss()
            self.base = rss_bytes()
        return self

    def stop(self):
        import torch
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return dict(peak_bytes=peak - self.base, base_bytes=self.base, process_peak_bytes=peak,
                        peak_reset=True)
        peak = peak_rss_bytes()
        return dict(peak_bytes=peak - self.base, base_bytes=self.base, process_peak_bytes=peak,
                    peak_reset=self.reset)


# ---------------------------------------------------------------------------------------------------- workers


def make_models(num_models, num_class, device):
    import torch
    import torch.nn as nn
    models = []
    for k in range(num_models):
        torch.manual_seed(1000 + k)
        h1, h2 = (128, 32) if num_class < 32 else (256, 128)
        m = nn.Sequential(nn.Linear(4992, h1), nn.ReLU(), nn.BatchNorm1d(h1), nn.Linear(h1, h2), nn.ReLU(),
                          nn.BatchNorm1d(h2), nn.Linear(h2, num_class))
        for mod in m:
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, 0.0, 0.02)
                nn.init.zeros_(mod.bias)
        models.append(m.eval().to(device))
    return models


def make_generator(device):
    import torch

    from training import networks
    torch.manual_seed(0)
    return networks.Generator(**PAPER256).eval().requires_grad_(False).to(device)


def generator_features(G, seed, device):
    import torch
    z = torch.randn([1, G.z_dim], generator=torch.Generator().manual_seed(seed)).to(device)
    with torch.no_grad():
        ws = G.mapping(z, None)
        _, _, feats = G.synthesis(ws, noise_mode='const', return_features=True)
    return feats


def random_features(seed, device):
    import torch
    g = torch.Generator().manual_seed(seed)
    return [torch.randn([1, c, r, r], generator=g).to(device) for c, r in LAYOUT]


def run_generator(args, device):
    G = make_generator(device)
    mem = Memory(device).start()
    times = [timed(device, lambda: generator_features(G, i, device))[0] for i in range(args.warmup + args.reps)]
    return dict(times_s=times[args.warmup:], **mem.stop())


def load_features(args, device):
    if args.features == 'generator':
        G = make_generator(device)
        feats = generator_features(G, 0, device)
        del G
        return [f.float() for f in feats]
    return random_features(0, device)


def make_predictor(args, models, variant):
    """``fast_torch`` keeps the fast path off the C kernel (its PyTorch fallback)."""
    from interpreter.ensemble import EnsemblePredictor
    if variant == 'dense':
        return EnsemblePredictor(models, OUT_RES, 'bilinear', fast=False)
    kwargs = dict(models_per_pass=args.models_per_pass)  # None: the predictor's choice
    if args.chunk:
        kwargs['chunk'] = args.chunk
    return EnsemblePredictor(models, OUT_RES, 'bilinear', fast=True, use_kernel=False if variant == 'fast_torch'
                             else None, **kwargs)


def run_predictor(args, device, variant):
    """Peak memory (and times) of one path in a process of its own."""
    import numpy as np
    feats = load_features(args, device)
    models = make_models(args.models, args.classes, device)
    mem = Memory(device).start()
    predictor = make_predictor(args, models, variant)
    times = []
    for _ in range(args.warmup + args.memory_reps):
        t, result = timed(device, lambda: predictor(feats))
        times.append(t)
    out = dict(times_s=times[args.warmup:], **mem.stop())
    if variant == 'dense':  # how much of the dense time is building the feature matrix
        from interpreter.feature_maps import dense_features
        out['feature_matrix_s'] = timed(device, lambda: dense_features(feats, OUT_RES))[0]
    if variant != 'dense':
        out['kernel'] = predictor._plan.kernel is not None
        out['models_per_pass'] = len(predictor._passes[0][0].members)
        out['chunk'] = predictor.chunk
    np.save(os.path.join(args.tmp, f'labels_{variant}.npy'), result.labels.cpu().numpy())
    out['score'] = result.score
    out['js_mean'] = float(result.js.mean())
    return out


def run_speed(args, device):
    """All paths in one process, in interleaved rounds (dense, fast, fast_torch, dense, ...): this machine's speed
    drifts by tens of percent over minutes, so a speed-up is only meaningful between times taken side by side."""
    feats = load_features(args, device)
    models = make_models(args.models, args.classes, device)
    variants = [v for v in VARIANTS if v in args.variants.split(',')]
    predictors = {v: make_predictor(args, models, v) for v in variants}
    for v in variants:
        for _ in range(args.warmup):
            predictors[v](feats)
    rounds = []
    for _ in range(args.reps):
        # the fast paths: best of a few per round (they are short)
        times = {v: min(timed(device, lambda: predictors[v](feats))[0]
                        for _ in range(1 if v == 'dense' else args.fast_tries)) for v in variants}
        rounds.append(times)
        print(json.dumps(times), file=sys.stderr, flush=True)
    return dict(rounds=rounds)


def run_train(args, device):
    import torch
    import torch.nn as nn

    from interpreter.feature_store import NativeFeatureStore
    hw = OUT_RES * OUT_RES
    mem = Memory(device).start()
    start = time.perf_counter()
    store = NativeFeatureStore(out_res=OUT_RES, mode='bilinear', device=device, capacity=args.train_samples)
    G = make_generator(device) if args.features == 'generator' else None
    for s in range(args.train_samples):
        feats = generator_features(G, s, device) if G is not None else random_features(s, device)
        store.add(feats)
        del feats
    del G
    fill_s = time.perf_counter() - start
    model = make_models(1, args.classes, device)[0].train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, args.classes, (args.train_samples * hw,), generator=g)
    gather_s = step_s = 0.0
    for _ in range(args.train_batches):
        index = torch.randint(0, args.train_samples * hw, (64,), generator=g)
        t0 = time.perf_counter()
        x = store.gather_flat(index)
        sync(device)
        t1 = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(x), labels[index].to(device))
        loss.backward()
        optimizer.step()
        sync(device)
        gather_s += t1 - t0
        step_s += time.perf_counter() - t1
    return dict(store_bytes=store.nbytes, fill_s=fill_s, gather_ms=1000 * gather_s / args.train_batches,
                step_ms=1000 * step_s / args.train_batches, batches=args.train_batches,
                samples=args.train_samples, **mem.stop())


def worker(args):
    sys.path.insert(0, REPO)
    import torch
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad() if args.worker != 'train' else torch.enable_grad():
        if args.worker == 'generator':
            out = run_generator(args, device)
        elif args.worker in VARIANTS:
            out = run_predictor(args, device, args.worker)
        elif args.worker == 'speed':
            out = run_speed(args, device)
        else:
            out = run_train(args, device)
    out.update(path=args.worker, threads=torch.get_num_threads())
    print(json.dumps(out))


# ------------------------------------------------------------------------------------------------------- main


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if available)")
    parser.add_argument('--models', type=int, default=10, help='classifiers in the ensemble (default 10)')
    parser.add_argument('--classes', type=int, default=4, help='classes per pixel (default 4, the ocular set)')
    parser.add_argument('--reps', type=int, default=5, help='interleaved timing rounds (medians reported)')
    parser.add_argument('--fast-tries', type=int, default=3, help='fast paths: best of this many per round')
    parser.add_argument('--memory-reps', type=int, default=1, help='samples per memory worker after the warm-up')
    parser.add_argument('--warmup', type=int, default=1, help='untimed samples first')
    parser.add_argument('--features', choices=['random', 'generator'], default='random',
                        help='random tensors of the paper256 shapes, or a paper256 generator forward pass')
    parser.add_argument('--generator', action='store_true', help='also time the generator forward pass')
    parser.add_argument('--threads', type=int, default=None, help='CPU threads (default: torch default)')
    parser.add_argument('--models-per-pass', type=int, default=None,
                        help="fast paths: classifiers per pass (default: EnsemblePredictor's choice)")
    parser.add_argument('--chunk', type=int, default=None,
                        help="fast paths: pixels per band (default: EnsemblePredictor's)")
    parser.add_argument('--skip-dense', action='store_true', help='leave out the (slow, 1.3 GB) dense reference')
    parser.add_argument('--train-samples', type=int, default=8, help='annotated samples in the training store')
    parser.add_argument('--train-batches', type=int, default=2000, help='gather + Adam steps of 64 pixels')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'bench_interpreter.json'))
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--variants', default=','.join(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument('--tmp', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = default_device(args.device)
    if args.worker:
        return worker(args)

    variants = [v for v in VARIANTS if not (v == 'dense' and args.skip_dense)
                and not (v == 'fast_torch' and args.device != 'cpu')]  # the C kernel is CPU only
    paths = variants + ['speed', 'train']
    if args.generator or args.features == 'generator':
        paths.insert(0, 'generator')
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            cmd = [sys.executable, os.path.abspath(__file__), '--device', args.device, '--models', str(args.models),
                   '--classes', str(args.classes), '--reps', str(args.reps), '--warmup', str(args.warmup),
                   '--fast-tries', str(args.fast_tries), '--memory-reps', str(args.memory_reps),
                   '--features', args.features, '--train-samples', str(args.train_samples),
                   '--train-batches', str(args.train_batches), '--variants', ','.join(variants), '--worker', path,
                   '--tmp', tmp]
            for flag, value in (('--threads', args.threads), ('--models-per-pass', args.models_per_pass),
                                ('--chunk', args.chunk)):
                if value:
                    cmd += [flag, str(value)]
            print(f'running {path} ...', file=sys.stderr, flush=True)
            rows[path] = run_worker(cmd, path)
        agree = {}
        if 'dense' in rows:
            import numpy as np
            a = np.load(os.path.join(tmp, 'labels_dense.npy'))
            for v in variants[1:]:
                agree[v] = float((a == np.load(os.path.join(tmp, f'labels_{v}.npy'))).mean())

    mb = 2 ** 20
    rounds = rows['speed']['rounds']
    for v in variants:
        rows[v]['median_s'] = median([r[v] for r in rounds])
        if 'dense' in variants:
            rows[v]['speedup'] = median([r['dense'] / r[v] for r in rounds])
            rows[v]['speedup_range'] = [min(r['dense'] / r[v] for r in rounds), max(r['dense'] / r[v] for r in rounds)]
    if 'generator' in rows:
        rows['generator']['median_s'] = median(rows['generator']['times_s'])
    threads = rows['fast']['threads']
    print(f'\nMask generation, {args.models} classifiers (4992 -> 128 -> 32 -> {args.classes}), paper256 features '
          f'({args.features}), 256x256, device {args.device}, {threads} threads; {len(rounds)} interleaved rounds '
          f'(median; fast paths best of {args.fast_tries} per round); fast paths: '
          + ', '.join(f'{v} {rows[v]["models_per_pass"]} models per pass' for v in variants if v != 'dense')
          + f', chunk {rows["fast"]["chunk"]}\n')
    print('| path | ms / sample | speed-up (min-max) | peak MiB | peak ratio |')
    print('|---|---:|---:|---:|---:|')
    dense = rows.get('dense')
    for v in variants:
        r = rows[v]
        speed = f'{r["speedup"]:.1f}x ({r["speedup_range"][0]:.1f}-{r["speedup_range"][1]:.1f})' if dense else '-'
        ratio = f'{r["peak_bytes"] / dense["peak_bytes"]:.3f}' if dense else '-'
        print(f'| {NAMES[v]} | {1000 * r["median_s"]:.0f} | {speed} | {r["peak_bytes"] / mb:.0f} | {ratio} |')
    if 'generator' in rows:
        r = rows['generator']
        print(f'| generator forward (common to both) | {1000 * r["median_s"]:.0f} | | {r["peak_bytes"] / mb:.0f} | |')
    if dense and 'feature_matrix_s' in dense:
        print(f'\nOf the dense time, building the [65536, 4992] feature matrix takes '
              f'{1000 * dense["feature_matrix_s"]:.0f} ms (one measurement).')
    if args.device == 'cpu' and not rows['fast'].get('kernel'):
        print('\nNote: the C upsampling kernel was not available; the fast row ran on the PyTorch fallback.')
    for v, a in agree.items():
        print(f'\nLabels identical between dense and {v}: {100 * a:.4f} % of pixels.')
    t = rows['train']
    print(f'\nTraining store: {t["samples"]} samples, {t["store_bytes"] / mb:.0f} MiB (float32); '
          f'{t["batches"]} batches of 64 pixels: gather {t["gather_ms"]:.2f} ms, Adam step {t["step_ms"]:.2f} ms '
          f'per batch; peak {t["peak_bytes"] / mb:.0f} MiB above the start, process peak '
          f'{t["process_peak_bytes"] / mb:.0f} MiB.')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + '.tmp', 'w') as f:
        json.dump(dict(device=args.device, models=args.models, classes=args.classes, features=args.features,
                       out_res=OUT_RES, layout=LAYOUT, threads=threads, label_agreement=agree, rows=rows), f,
                  indent=2)
    os.replace(args.out + '.tmp', args.out)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
