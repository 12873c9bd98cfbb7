"""Custom-op speed: the CUDA plugins against the reference paths, on StyleGAN2 shapes at 256x256.

Ops: bias_act (lrelu, bias, clamp 256), upsample2d and downsample2d with the [1,3,3,1] filter, the
separable 12-tap up/down passes of the augmentation pipeline, and conv2d_resample's up (G conv0, 3x3) and
down (D conv1, 3x3) paths, whose FIR filtering runs through upfirdn2d. Shapes follow the paper256 config:
batch 8, 512 channels at 4..32 px, 256 at 64, 128 at 128, 64 at 256 (the 12-tap passes run on 3-channel
images). Each op is timed forward only and forward + backward; the median of ``--reps`` timed repetitions
after warm-up is reported, with ``torch.cuda.synchronize()`` around every repetition.

On CUDA the table compares impl='ref' with impl='cuda' (TF32 off). On CPU only the reference path exists:
the script then runs a few small shapes so that it stays usable as a smoke test.

    python bench/bench_ops.py [--device cuda|cpu] [--reps 20] [--dtype fp32|fp16|both] [--channels-last]
                              [--out bench/results/bench_ops.json]
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from torch_utils import custom_ops  # noqa: E402
from torch_utils.ops import bias_act, conv2d_resample, upfirdn2d  # noqa: E402

# (resolution, channels) of the paper256 generator/discriminator blocks.
GPU_SHAPES = [(4, 512), (8, 512), (16, 512), (32, 512), (64, 256), (128, 128), (256, 64)]
CPU_SHAPES = [(8, 64), (32, 32), (64, 16)]


def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _time(fn, device, reps, warmup):
    """Median wall time of fn() in milliseconds."""
    times = []
    for i in range(warmup + reps):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _cases(device, dtype, batch, shapes, memory_format):
    """(label, shape, input maker, op(x, impl)) for every benchmarked op."""
    gen = torch.Generator(device=device).manual_seed(0)
    f4 = upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    sym6 = [0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
            0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
            -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148]
    f12 = upfirdn2d.setup_filter(sym6, device=device)

    def maker(shape):
        def make():
            x = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 2
            return x.to(dtype).contiguous(memory_format=memory_format)
        return make

    def ref_switch(op):
        # conv2d_resample has no impl argument: force every op onto its reference path instead.
        def run(x, impl):
            with custom_ops.reference_ops(impl == 'ref'):
                return op(x)
        return run

    cases = []
    for res, ch in shapes:
        b = torch.randn([ch], generator=gen, device=device, dtype=torch.float32).to(dtype)
        cases.append(('bias_act lrelu clamp=256', [batch, ch, res, res], maker([batch, ch, res, res]),
                      lambda x, impl, b=b: bias_act.bias_act(x, b, act='lrelu', clamp=256, impl=impl)))
        if res >= 8:
            lo = res // 2
            cases.append(('upsample2d [1,3,3,1]', [batch, ch, lo, lo], maker([batch, ch, lo, lo]),
                          lambda x, impl: upfirdn2d.upsample2d(x, f4, impl=impl)))
            cases.append(('downsample2d [1,3,3,1]', [batch, ch, res, res], maker([batch, ch, res, res]),
                          lambda x, impl: upfirdn2d.downsample2d(x, f4, impl=impl)))
            w_up = (torch.randn([ch, ch, 3, 3], generator=gen, device=device) / (3 * ch ** 0.5)).to(dtype)
            cases.append(('conv2d_resample up=2 3x3', [batch, ch, lo, lo], maker([batch, ch, lo, lo]),
                          ref_switch(lambda x, w=w_up: conv2d_resample.conv2d_resample(
                              x, w, f=f4, up=2, padding=1, flip_weight=False))))
            cases.append(('conv2d_resample down=2 3x3', [batch, ch, res, res], maker([batch, ch, res, res]),
                          ref_switch(lambda x, w=w_up: conv2d_resample.conv2d_resample(
                              x, w, f=f4, down=2, padding=1))))
        if res >= 32:
            img = [batch, 3, res, res]
            cases.append(('upsample2d sym6 (separable, 3 ch)', img, maker(img),
                          lambda x, impl: upfirdn2d.upsample2d(x, f12, impl=impl)))
            cases.append(('downsample2d sym6 (separable, 3 ch)', img, maker(img),
                          lambda x, impl: upfirdn2d.downsample2d(x, f12, impl=impl)))
    return cases


def _bench_case(label, shape, make, op, impl, device, reps, warmup, backward):
    x = make()
    if not backward:
        with torch.no_grad():
            return _time(lambda: op(x, impl), device, reps, warmup)
    x.requires_grad_(True)
    with torch.no_grad():
        dy = torch.randn_like(op(x, impl))

    def step():
        x.grad = None
        op(x, impl).backward(dy)
    return _time(step, device, reps, warmup)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help="'cuda' or 'cpu' (default: cuda if available)")
    parser.add_argument('--reps', type=int, default=None, help='timed repetitions, median reported '
                        '(default: 20 on CUDA, 3 on CPU)')
    parser.add_argument('--warmup', type=int, default=None, help='untimed repetitions first (default: 5 / 1)')
    parser.add_argument('--batch', type=int, default=None, help='batch size (default: 8 on CUDA, 2 on CPU)')
    parser.add_argument('--dtype', choices=['fp32', 'fp16', 'both'], default=None,
                        help='(default: both on CUDA, fp32 on CPU)')
    parser.add_argument('--channels-last', action='store_true', help='use channels_last tensors')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'bench_ops.json'),
                        help='JSON output path')
    args = parser.parse_args()

    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    on_cuda = device.type == 'cuda'
    reps = args.reps or (20 if on_cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    batch = args.batch or (8 if on_cuda else 2)
    dtypes = {'fp32': [torch.float32], 'fp16': [torch.float16], 'both': [torch.float32, torch.float16],
              None: [torch.float32, torch.float16] if on_cuda else [torch.float32]}[args.dtype]
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    shapes = GPU_SHAPES if on_cuda else CPU_SHAPES

    plugins = {}
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        plugins = {'bias_act': bias_act._plugin_available(), 'upfirdn2d': upfirdn2d._plugin_available()}
        if not all(plugins.values()):
            print(f'WARNING: CUDA plugins not all available ({plugins}); "cuda" timings are the reference path.',
                  file=sys.stderr)
    impls = ['ref', 'cuda'] if on_cuda else ['ref']

    rows = []
    for dtype in dtypes:
        for label, shape, make, op in _cases(device, dtype, batch, shapes, memory_format):
            for backward in (False, True):
                row = dict(op=label, shape=shape, dtype=str(dtype).replace('torch.', ''),
                           mode='fwd+bwd' if backward else 'fwd')
                for impl in impls:
                    row[f'{impl}_ms'] = _bench_case(label, shape, make, op, impl, device, reps, warmup, backward)
                if 'cuda_ms' in row:
                    row['speedup'] = row['ref_ms'] / row['cuda_ms']
                rows.append(row)
                if on_cuda:
                    torch.cuda.empty_cache()

    name = torch.cuda.get_device_name(device) if on_cuda else platform.processor() or platform.machine()
    print(f'\nCustom ops, {device.type} ({name}), batch {batch}, '
          f'{"channels_last" if args.channels_last else "contiguous"}, median of {reps} reps\n')
    print('| shape | op | dtype | pass | ref ms | cuda ms | speed-up |')
    print('|---|---|---|---|---:|---:|---:|')
    for r in rows:
        cuda_ms = f'{r["cuda_ms"]:.3f}' if 'cuda_ms' in r else '-'
        speedup = f'{r["speedup"]:.2f}x' if 'speedup' in r else '-'
        shape = 'x'.join(str(s) for s in r['shape'])
        print(f'| {shape} | {r["op"]} | {r["dtype"]} | {r["mode"]} | {r["ref_ms"]:.3f} | {cuda_ms} | {speedup} |')

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(device=device.type, device_name=name, torch=torch.__version__, cuda=torch.version.cuda,
                       plugins=plugins, batch=batch, reps=reps, warmup=warmup,
                       memory_format='channels_last' if args.channels_last else 'contiguous', rows=rows), f, indent=2)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
