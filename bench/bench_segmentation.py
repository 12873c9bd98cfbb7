"""Segmenter speed and peak memory at 256x256: training images/s (forward, backward, AdamW step, with the training
augmentation) and inference images/s, for the U-Net and DeepLabV3-ResNet50 (output stride 16 and 8) on 4-channel
RGB + NIR input; torchvision's DeepLabV3-ResNet50 too where torchvision imports.

Each configuration runs in its own subprocess so that peak memory is measured cleanly (CPU: the process's maximum
resident set; CUDA: ``torch.cuda.max_memory_allocated``). CUDA runs use bfloat16 autocast, as training does.
Prints a Markdown table and writes JSON.

    python bench/bench_segmentation.py [--device cpu|cuda] [--batch 4] [--reps 3] [--res 256] [--out ...json]
"""

import argparse
import json
import os
import resource
import sys
import time

from bench_common import default_device, run_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = 4


def variants():
    specs = [dict(name='U-Net (width 32, depth 4)', arch='unet', output_stride=None),
             dict(name='DeepLabV3-ResNet50, OS 16', arch='deeplabv3_resnet50', output_stride=16),
             dict(name='DeepLabV3-ResNet50, OS 8', arch='deeplabv3_resnet50', output_stride=8)]
    try:
        import torchvision.models.segmentation  # noqa: F401
        specs.append(dict(name='torchvision DeepLabV3-ResNet50', arch='deeplabv3_resnet50_tv', output_stride=8))
    except Exception:  # not importable here: skipped, as the model is optional
        pass
    return specs


def worker(args):
    sys.path.insert(0, REPO)
    import torch
    import torch.nn.functional as F

    from segmentation.augment import AugmentOptions, augment
    from segmentation.models import build_model, count_parameters
    from segmentation.train import autocast, to_input

    spec = json.loads(args.worker)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(spec['arch'], 4, CLASSES, output_stride=spec['output_stride'] or 16).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (args.batch, 4, args.res, args.res), dtype=torch.uint8, device=device)
    m = torch.randint(0, CLASSES, (args.batch, args.res, args.res), device=device)
    gen = torch.Generator().manual_seed(0)
    aug = AugmentOptions()

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize()

    def train_step():
        xa, ma = augment(x.float() / 255, m, 'rgbnir', aug, gen)
        with autocast(device, True):
            logits = model(to_input(xa))
        loss = F.cross_entropy(logits.float(), ma, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad(), autocast(device, True):
            model(to_input(x)).argmax(1)

    result = dict(spec, batch=args.batch, res=args.res, params=count_parameters(model),
                  threads=torch.get_num_threads())
    for phase, step in (('train', train_step), ('infer', infer_step)):
        model.train(phase == 'train')
        times = []
        for i in range(args.warmup + args.reps):
            sync()
            start = time.perf_counter()
            step()
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
        times.sort()
        result[f'{phase}_median_s'] = times[len(times) // 2]
        result[f'{phase}_images_per_s'] = args.batch / times[len(times) // 2]
    if device.type == 'cuda':
        result['peak_bytes'] = torch.cuda.max_memory_allocated(device)
    else:
        result['peak_bytes'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda if available)")
    parser.add_argument('--batch', type=int, default=4, help='images per step')
    parser.add_argument('--res', type=int, default=256, help='image size')
    parser.add_argument('--reps', type=int, default=3, help='timed repetitions (median reported)')
    parser.add_argument('--warmup', type=int, default=1, help='untimed repetitions first')
    parser.add_argument('--out', default=os.path.join(REPO, 'bench', 'results', 'bench_segmentation.json'))
    parser.add_argument('--worker', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.device = default_device(args.device)
    if args.worker:
        return worker(args)

    rows = []
    for spec in variants():
        cmd = [sys.executable, __file__, '--device', args.device, '--batch', str(args.batch), '--res', str(args.res),
               '--reps', str(args.reps), '--warmup', str(args.warmup), '--worker', json.dumps(spec)]
        rows.append(run_worker(cmd, spec['name']))

    print(f'\nSegmenters at {args.res}x{args.res}, RGB + NIR input (4 channels), {CLASSES} classes, device '
          f'{args.device}, batch {args.batch}, {rows[0]["threads"]} threads\n')
    print('| model | parameters | train images / s | inference images / s | peak memory |')
    print('|---|---:|---:|---:|---:|')
    for r in rows:
        print(f'| {r["name"]} | {r["params"] / 1e6:.1f} M | {r["train_images_per_s"]:.2f} | '
              f'{r["infer_images_per_s"]:.2f} | {r["peak_bytes"] / 2**20:.0f} MiB |')
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(dict(device=args.device, batch=args.batch, res=args.res, rows=rows), f, indent=2)
    print(f'\nWrote {args.out}')


if __name__ == '__main__':
    main()
