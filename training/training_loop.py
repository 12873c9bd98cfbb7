"""The training loop of the dual-branch StyleGAN2 (StyleGAN2-ADA's loop with an NIR head and a second D).

Behaviour follows upstream: lazy regularisation with rescaled Adam hyper-parameters, gradient accumulation over
``batch_gpu`` chunks, G_ema with ramp-up, ADA, ticks, image grids, ``stats.jsonl``, snapshots and metrics. Added:
D_NIR is trained, snapshotted and resumed like D; every network snapshot has a ``training-state-*.pt`` beside it
(optimisers, counters, and every rank's pl_mean, ADA accumulator and RNG states) so that a resumed run continues
exactly where the snapshot was taken; snapshots are written atomically; nothing is tied to a fixed device.
"""

import copy
import json
import os
import random
import resource
import time

import numpy as np
import PIL.Image
import torch

import dnnlib
from torch_utils import misc, training_stats
from torch_utils.ops import conv2d_gradfix, grid_sample_gradfix
from training import legacy

STATE_VERSION = 1

# --------------------------------------------------------------------------------------------- image grids


def setup_snapshot_image_grid(training_set, random_seed=0):
    """Pick the real pairs shown in the grids: upstream's layout (grouped by label when there are labels)."""
    rnd = np.random.RandomState(random_seed)
    gw = int(np.clip(7680 // training_set.image_shape[2], 7, 32))
    gh = int(np.clip(4320 // training_set.image_shape[1], 4, 32))

    if not training_set.has_labels:
        all_indices = list(range(len(training_set)))
        rnd.shuffle(all_indices)
        grid_indices = [all_indices[i % len(all_indices)] for i in range(gw * gh)]
    else:
        label_groups = {}
        for idx in range(len(training_set)):
            label = tuple(training_set.get_details(idx).raw_label.flat[::-1])
            label_groups.setdefault(label, []).append(idx)
        label_order = sorted(label_groups.keys())
        for label in label_order:
            rnd.shuffle(label_groups[label])
        grid_indices = []
        for y in range(gh):
            indices = label_groups[label_order[y % len(label_order)]]
            grid_indices += [indices[x % len(indices)] for x in range(gw)]
            label_groups[label_order[y % len(label_order)]] = [indices[(i + gw) % len(indices)]
                                                               for i in range(len(indices))]

    items = [training_set[i] for i in grid_indices]
    images, nirs, labels = zip(*[item[:3] for item in items])
    return (gw, gh), np.stack(images), np.stack(nirs), np.stack(labels)


def save_image_grid(img, fname, drange, grid_size):
    """Tile a batch [N, C, H, W] (C = 1 or 3) into one PNG, written atomically."""
    lo, hi = drange
    img = np.asarray(img, dtype=np.float32)
    img = (img - lo) * (255 / (hi - lo))
    img = np.rint(img).clip(0, 255).astype(np.uint8)
    gw, gh = grid_size
    _n, channels, height, width = img.shape
    img = img.reshape([gh, gw, channels, height, width]).transpose(0, 3, 1, 4, 2)
    img = img.reshape([gh * height, gw * width, channels])
    if channels not in (1, 3):
        raise ValueError(f'cannot save a grid of {channels}-channel images')
    with dnnlib.util.atomic_write(fname, 'wb') as f:
        PIL.Image.fromarray(img[:, :, 0] if channels == 1 else img, 'L' if channels == 1 else 'RGB').save(f, 'PNG')


def _generate_grid(G_ema, grid_z, grid_c):
    with torch.no_grad():
        pairs = [G_ema(z=z, c=c, noise_mode='const') for z, c in zip(grid_z, grid_c)]
    return (torch.cat([p[0] for p in pairs]).cpu().numpy(), torch.cat([p[1] for p in pairs]).cpu().numpy())


# ------------------------------------------------------------------------------------------ training state


def _rng_state(device):
    state = {'torch': torch.get_rng_state(), 'python': random.getstate()}
    np_state = np.random.get_state()
    state['numpy'] = {'key': torch.from_numpy(np_state[1].astype(np.int64)), 'pos': int(np_state[2]),
                      'has_gauss': int(np_state[3]), 'cached_gaussian': float(np_state[4])}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    random.setstate(_as_tuple(state['python']))
    npst = state['numpy']
    np.random.set_state(('MT19937', npst['key'].numpy().astype(np.uint32), npst['pos'], npst['has_gauss'],
                         npst['cached_gaussian']))
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def state_path_for(snapshot_pkl):
    """``.../network-snapshot-000123.pkl`` -> ``.../training-state-000123.pt``."""
    folder, name = os.path.split(snapshot_pkl)
    return os.path.join(folder, name.replace('network-snapshot-', 'training-state-').replace('.pkl', '.pt'))


def load_training_state(path):
    """Read a training-state file with the restricted (weights-only) loader."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    if not isinstance(state, dict) or state.get('version') != STATE_VERSION:
        raise ValueError(f'{path}: not a training-state file of this project (version {STATE_VERSION})')
    return state


# ------------------------------------------------------------------------------------------------- sampler


class _SkipSampler(torch.utils.data.Sampler):
    """Yields the items of ``sampler`` after skipping the first ``skip``: the data order of a resumed run."""

    def __init__(self, sampler, skip):
        super().__init__()
        self.sampler = sampler
        self.skip = skip

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.skip):
            next(it)
        yield from it


def _copy_trained(src, dst, skip=None):
    """Copy every tensor of ``dst`` that ``src`` has under the same name (and shape), except names with ``skip``."""
    src_tensors = dict(misc.named_params_and_buffers(src))
    with torch.no_grad():
        for name, tensor in misc.named_params_and_buffers(dst):
            if name in src_tensors and (skip is None or skip not in name):
                if src_tensors[name].shape != tensor.shape:
                    raise ValueError(f'cannot resume {name}: shape {tuple(src_tensors[name].shape)} in the checkpoint, '
                                     f'{tuple(tensor.shape)} here (different resolution or config?)')
                tensor.copy_(src_tensors[name].detach())


def _cpu_mem_gb():
    try:
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**30
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# ---------------------------------------------------------------------------------------------------- loop


def training_loop(
    run_dir='.',                # Output directory.
    training_set_kwargs={},     # Options for the paired training set.
    data_loader_kwargs={},      # Options for torch.utils.data.DataLoader.
    G_kwargs={},                # Options for the generator network.
    D_kwargs={},                # Options for the RGB discriminator.
    D_NIR_kwargs=None,          # Options for the NIR discriminator (None: the same as D_kwargs).
    G_opt_kwargs={},            # Options for the generator optimiser.
    D_opt_kwargs={},            # Options for both discriminator optimisers.
    augment_kwargs=None,        # Options for the augmentation pipeline (None: no augmentation).
    loss_kwargs={},             # Options for the loss function.
    metrics=[],                 # Metrics to evaluate at network snapshots.
    random_seed=0,              # Global random seed.
    num_gpus=1,                 # Number of processes taking part.
    rank=0,                     # Rank of this process.
    device=None,                # torch.device of this process (default: cuda:rank if available, else cpu).
    batch_size=4,               # Total batch size of one iteration, over all processes.
    batch_gpu=4,                # Samples per process and accumulation round.
    ema_kimg=10,                # Half-life of the generator EMA.
    ema_rampup=None,            # EMA ramp-up coefficient (None: no ramp-up).
    G_reg_interval=4,           # Lazy path-length regularisation interval (None: not lazy).
    D_reg_interval=16,          # Lazy R1 interval (None: not lazy).
    augment_p=0,                # Initial augmentation probability.
    ada_target=None,            # ADA target for sign(D(real)) (None: fixed p).
    ada_interval=4,             # Iterations between ADA adjustments.
    ada_kimg=500,               # ADA speed: kimg for p to go from 0 to 1.
    total_kimg=25000,           # Training length in thousands of real images shown.
    kimg_per_tick=4,            # Progress reporting interval.
    image_snapshot_ticks=50,    # Image grids every this many ticks (None: never).
    network_snapshot_ticks=50,  # Snapshots (and metrics) every this many ticks (None: never).
    resume_pkl=None,            # Weights to start from: a snapshot or an upstream pickle (path or URL).
    resume_state=None,          # A training-state file: continue that run exactly (needs its snapshot as resume_pkl).
    cudnn_benchmark=True,       # cuDNN autotuning.
    allow_tf32=False,           # TF32 in matmul and convolutions.
    metrics_kwargs=None,        # Extra options for metric_main.calc_metric (e.g. detector_dir).
    abort_fn=None,              # Called every tick; True stops training after a final snapshot.
    progress_fn=None,           # Called as progress_fn(cur_kimg, total_kimg).
):
    start_time = time.time()
    if device is None:
        device = torch.device('cuda', rank) if torch.cuda.is_available() else torch.device('cpu')
    device = torch.device(device)
    seed = random_seed * num_gpus + rank
    np.random.seed(seed)
    torch.manual_seed(seed)
    random.seed(seed)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    conv2d_gradfix.enabled = True
    grid_sample_gradfix.enabled = True
    state = load_training_state(resume_state) if resume_state is not None else None
    if state is not None and (state['num_gpus'] != num_gpus or state['batch_size'] != batch_size):
        raise ValueError(f'{resume_state}: saved with {state["num_gpus"]} processes and batch {state["batch_size"]}; '
                         f'resume it with the same settings')

    # Data. A resumed run skips exactly the items the interrupted run had consumed.
    training_set = dnnlib.util.construct_class_by_name(**training_set_kwargs)
    sampler = misc.InfiniteSampler(dataset=training_set, rank=rank, num_replicas=num_gpus, seed=random_seed)
    if state is not None:
        sampler = _SkipSampler(sampler, state['cur_nimg'] // num_gpus)
    loader_kwargs = dict(data_loader_kwargs)
    if loader_kwargs.get('num_workers', 0) == 0:
        loader_kwargs.pop('prefetch_factor', None)
        loader_kwargs.pop('persistent_workers', None)
    if device.type != 'cuda':
        loader_kwargs.pop('pin_memory', None)
    training_set_iterator = iter(torch.utils.data.DataLoader(dataset=training_set, sampler=sampler,
                                                             batch_size=batch_size // num_gpus, **loader_kwargs))
    if rank == 0:
        print(f'Num images:  {len(training_set)}')
        print(f'Image shape: {training_set.image_shape} + NIR {training_set.nir_shape}')
        print(f'Label shape: {training_set.label_shape}')
        print()

    # Networks.
    common = dict(c_dim=training_set.label_dim, img_resolution=training_set.resolution)
    G = dnnlib.util.construct_class_by_name(**G_kwargs, **common, img_channels=training_set.num_channels,
                                            nir_channels=training_set.nir_channels)
    D = dnnlib.util.construct_class_by_name(**D_kwargs, **common, img_channels=training_set.num_channels)
    D_NIR = dnnlib.util.construct_class_by_name(**(D_NIR_kwargs if D_NIR_kwargs is not None else D_kwargs),
                                                **common, img_channels=training_set.nir_channels)
    G = G.train().requires_grad_(False).to(device)
    D = D.train().requires_grad_(False).to(device)
    D_NIR = D_NIR.train().requires_grad_(False).to(device)
    G_ema = copy.deepcopy(G).eval()

    resume_p = None
    if resume_pkl is not None and rank == 0:
        print(f'Resuming from "{resume_pkl}"')
        with dnnlib.util.open_url(resume_pkl) as f:
            resume_data = legacy.load_network_pkl(f)
        fresh = set(resume_data['initialised_fresh'])
        for name, module in [('G', G), ('D', D), ('G_ema', G_ema), ('D_NIR', D_NIR)]:
            if name not in fresh:  # fresh parts carry nothing trained: keep this run's own seeded initialisation
                _copy_trained(resume_data[name], module, skip='.tonir.' if f'{name}.tonir' in fresh else None)
        if fresh:
            print(f'Initialised fresh (not in the checkpoint): {", ".join(sorted(fresh))}')
        if state is not None and resume_data.get('augment_pipe') is not None:
            resume_p = resume_data['augment_pipe'].p.detach().clone()
        del resume_data

    if rank == 0:
        z = torch.zeros([batch_gpu, G.z_dim], device=device)
        c = torch.zeros([batch_gpu, G.c_dim], device=device)
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
            G_summary = copy.deepcopy(G).eval()  # a copy: the summary pass must not update w_avg
            img, nir = misc.print_module_summary(G_summary, [z, c])
            misc.print_module_summary(D, [img, c])
            misc.print_module_summary(D_NIR, [nir, c])
            del G_summary

    # Augmentation.
    augment_pipe = None
    if augment_kwargs is not None and (augment_p > 0 or ada_target is not None):
        augment_pipe = dnnlib.util.construct_class_by_name(**augment_kwargs).train().requires_grad_(False).to(device)
        augment_pipe.p.copy_(torch.as_tensor(augment_p) if resume_p is None else resume_p)

    # Distribute. Every rank starts from rank 0's weights and buffers (fresh or resumed); DDP itself no longer
    # broadcasts buffers when broadcast_buffers=False, so do it explicitly.
    if num_gpus > 1:
        for module in (G, D, D_NIR, G_ema, augment_pipe):
            for tensor in misc.params_and_buffers(module) if module is not None else []:
                torch.distributed.broadcast(tensor.data, src=0)
    ddp_modules = {}
    for name, module in [('G_mapping', G.mapping), ('G_synthesis', G.synthesis), ('D', D), ('D_NIR', D_NIR),
                         (None, G_ema), ('augment_pipe', augment_pipe)]:
        if num_gpus > 1 and module is not None and len(list(module.parameters())) != 0:
            module.requires_grad_(True)
            module = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[device] if device.type == 'cuda' else None, broadcast_buffers=False)
            module.requires_grad_(False)
        if name is not None:
            ddp_modules[name] = module

    loss = dnnlib.util.construct_class_by_name(device=device, **ddp_modules, **loss_kwargs)

    # Optimisers and phases. Lazy regularisation rescales lr and betas by mb_ratio = R / (R + 1).
    phases = []
    optimizers = {}
    for name, modules, opt_kwargs, reg_interval in [('G', {'G': G}, G_opt_kwargs, G_reg_interval),
                                                    ('D', {'D': D, 'D_NIR': D_NIR}, D_opt_kwargs, D_reg_interval)]:
        opt_kwargs = dnnlib.EasyDict(opt_kwargs)
        if reg_interval is not None:
            mb_ratio = reg_interval / (reg_interval + 1)
            opt_kwargs.lr = opt_kwargs.lr * mb_ratio
            opt_kwargs.betas = [beta ** mb_ratio for beta in opt_kwargs.betas]
        opts = {key: dnnlib.util.construct_class_by_name(params=m.parameters(), **opt_kwargs)
                for key, m in modules.items()}
        optimizers.update(opts)
        if reg_interval is None:
            phases.append(dnnlib.EasyDict(name=name + 'both', modules=modules, opts=opts, interval=1))
        else:
            phases.append(dnnlib.EasyDict(name=name + 'main', modules=modules, opts=opts, interval=1))
            phases.append(dnnlib.EasyDict(name=name + 'reg', modules=modules, opts=opts, interval=reg_interval))

    # Counters, and the exact continuation of an interrupted run.
    cur_nimg = 0
    cur_tick = 0
    batch_idx = 0
    elapsed_before = 0.0
    if state is not None:
        for key, opt in optimizers.items():
            opt.load_state_dict(state['optimizers'][key])
        # Each rank keeps its own path-length mean and ADA accumulator; older states hold rank 0's only.
        ranks = state.get('per_rank') or [dict(pl_mean=state['pl_mean'], ada_signs=state['ada_signs'])] * num_gpus
        loss.pl_mean.copy_(ranks[rank]['pl_mean'])
        loss.ada_signs.copy_(ranks[rank]['ada_signs'])
        cur_nimg, cur_tick, batch_idx = state['cur_nimg'], state['cur_tick'], state['batch_idx']
        elapsed_before = float(state.get('elapsed_sec', 0.0))
        if rank == 0:
            print(f'Continuing the saved run at kimg {cur_nimg / 1000:.1f}, tick {cur_tick}')

    # Grids.
    grid_size = grid_z = grid_c = None
    if rank == 0 and image_snapshot_ticks is not None:
        print('Exporting sample images...')
        grid_size, images, nirs, labels = setup_snapshot_image_grid(training_set=training_set)
        save_image_grid(images, os.path.join(run_dir, 'reals.png'), drange=[0, 255], grid_size=grid_size)
        save_image_grid(nirs, os.path.join(run_dir, 'reals_nir.png'), drange=[0, 255], grid_size=grid_size)
        generator = torch.Generator().manual_seed(random_seed)  # own stream: the grids never move the main RNG
        grid_batch = max(batch_gpu, min(64, 2**20 // training_set.resolution**2))  # small images: fewer, larger calls
        grid_z = torch.randn([labels.shape[0], G.z_dim], generator=generator).to(device).split(grid_batch)
        grid_c = torch.from_numpy(labels).to(device).split(grid_batch)
        rgb, nir = _generate_grid(G_ema, grid_z, grid_c)
        save_image_grid(rgb, os.path.join(run_dir, 'fakes_init.png'), drange=[-1, 1], grid_size=grid_size)
        save_image_grid(nir, os.path.join(run_dir, 'fakes_init_nir.png'), drange=[-1, 1], grid_size=grid_size)

    # Logs.
    if rank == 0:
        print('Initializing logs...')
    stats_collector = training_stats.Collector(regex='.*')
    stats_metrics = {}
    stats_jsonl = None
    stats_tfevents = None
    if rank == 0:
        stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
        try:
            import torch.utils.tensorboard as tensorboard
            stats_tfevents = tensorboard.SummaryWriter(run_dir)
        except ImportError:
            pass

    if state is not None:  # last: everything above may have drawn random numbers
        _set_rng_state(state['rng'][rank], device)
        del state

    # Train.
    if rank == 0:
        print(f'Training for {total_kimg} kimg...')
        print()
    tick_start_nimg = cur_nimg
    tick_start_time = time.time()
    maintenance_time = tick_start_time - start_time
    if progress_fn is not None:
        progress_fn(cur_nimg // 1000, total_kimg)

    while True:
        # Fetch data.
        with torch.autograd.profiler.record_function('data_fetch'):
            phase_real_img, phase_real_nir, phase_real_c = next(training_set_iterator)[:3]
            phase_real_img = (phase_real_img.to(device).to(torch.float32) / 127.5 - 1).split(batch_gpu)
            phase_real_nir = (phase_real_nir.to(device).to(torch.float32) / 127.5 - 1).split(batch_gpu)
            phase_real_c = phase_real_c.to(device).split(batch_gpu)
            all_gen_z = torch.randn([len(phases) * batch_size, G.z_dim], device=device)
            all_gen_z = [phase_gen_z.split(batch_gpu) for phase_gen_z in all_gen_z.split(batch_size)]
            all_gen_c = [training_set.get_label(np.random.randint(len(training_set)))
                         for _ in range(len(phases) * batch_size)]
            all_gen_c = torch.from_numpy(np.stack(all_gen_c)).pin_memory() if device.type == 'cuda' \
                else torch.from_numpy(np.stack(all_gen_c))
            all_gen_c = [phase_gen_c.to(device).split(batch_gpu) for phase_gen_c in all_gen_c.split(batch_size)]

        # Execute the phases.
        for phase, phase_gen_z, phase_gen_c in zip(phases, all_gen_z, all_gen_c):
            if batch_idx % phase.interval != 0:
                continue
            for opt in phase.opts.values():
                opt.zero_grad(set_to_none=True)
            for module in phase.modules.values():
                module.requires_grad_(True)
            rounds = list(zip(phase_real_img, phase_real_nir, phase_real_c, phase_gen_z, phase_gen_c))
            for round_idx, (real_img, real_nir, real_c, gen_z, gen_c) in enumerate(rounds):
                sync = (round_idx == batch_size // (batch_gpu * num_gpus) - 1)
                loss.accumulate_gradients(phase=phase.name, real_img=real_img, real_nir=real_nir, real_c=real_c,
                                          gen_z=gen_z, gen_c=gen_c, sync=sync, gain=phase.interval)
            with torch.autograd.profiler.record_function(phase.name + '_opt'):
                for key, module in phase.modules.items():
                    module.requires_grad_(False)
                    for param in module.parameters():
                        if param.grad is not None:
                            torch.nan_to_num(param.grad, nan=0, posinf=1e5, neginf=-1e5, out=param.grad)
                    phase.opts[key].step()

        # G_ema: a running average of G whose half-life is ema_kimg.
        with torch.autograd.profiler.record_function('Gema'):
            ema_nimg = ema_kimg * 1000
            if ema_rampup is not None:
                ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
            ema_beta = 0.5 ** (batch_size / max(ema_nimg, 1e-8))
            with torch.no_grad():
                for p_ema, p in zip(G_ema.parameters(), G.parameters()):
                    p_ema.copy_(p.lerp(p_ema, ema_beta))
                for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                    b_ema.copy_(b)

        cur_nimg += batch_size
        batch_idx += 1

        # ADA: nudge p towards the target sign of D(real RGB).
        if augment_pipe is not None and ada_target is not None and batch_idx % ada_interval == 0:
            signs = loss.ada_signs.clone()
            if num_gpus > 1:
                torch.distributed.all_reduce(signs)
            if signs[1] > 0:
                from training import augment
                augment_pipe.p.copy_(augment.adjust_p(augment_pipe.p, float(signs[0] / signs[1]), ada_target,
                                                      batch_size, ada_interval, ada_kimg))
            loss.ada_signs.zero_()

        # Tick?
        done = (cur_nimg >= total_kimg * 1000)
        if (not done) and (cur_tick != 0) and (cur_nimg < tick_start_nimg + kimg_per_tick * 1000):
            continue

        # Status.
        tick_end_time = time.time()
        total_sec = tick_end_time - start_time + elapsed_before
        fields = [
            f"tick {training_stats.report0('Progress/tick', cur_tick):<5d}",
            f"kimg {training_stats.report0('Progress/kimg', cur_nimg / 1e3):<8.1f}",
            f"time {dnnlib.util.format_time(training_stats.report0('Timing/total_sec', total_sec)):<12s}",
            f"sec/tick {training_stats.report0('Timing/sec_per_tick', tick_end_time - tick_start_time):<7.1f}",
            f"sec/kimg {training_stats.report0('Timing/sec_per_kimg', (tick_end_time - tick_start_time) / max(cur_nimg - tick_start_nimg, 1) * 1e3):<7.2f}",  # noqa: E501
            f"maintenance {training_stats.report0('Timing/maintenance_sec', maintenance_time):<6.1f}",
            f"cpumem {training_stats.report0('Resources/cpu_mem_gb', _cpu_mem_gb()):<6.2f}",
        ]
        if device.type == 'cuda':
            gpu_gb = torch.cuda.max_memory_allocated(device) / 2**30
            fields.append(f"gpumem {training_stats.report0('Resources/peak_gpu_mem_gb', gpu_gb):<6.2f}")
            torch.cuda.reset_peak_memory_stats(device)
        p_value = float(augment_pipe.p.cpu()) if augment_pipe is not None else 0
        fields.append(f"augment {training_stats.report0('Progress/augment', p_value):.3f}")
        training_stats.report0('Timing/total_hours', total_sec / (60 * 60))
        training_stats.report0('Timing/total_days', total_sec / (24 * 60 * 60))
        if rank == 0:
            print(' '.join(fields), flush=True)

        if (not done) and (abort_fn is not None) and abort_fn():
            done = True
            if rank == 0:
                print()
                print('Aborting...')

        # Image snapshot.
        if rank == 0 and image_snapshot_ticks is not None and (done or cur_tick % image_snapshot_ticks == 0):
            rgb, nir = _generate_grid(G_ema, grid_z, grid_c)
            save_image_grid(rgb, os.path.join(run_dir, f'fakes{cur_nimg // 1000:06d}.png'), drange=[-1, 1],
                            grid_size=grid_size)
            save_image_grid(nir, os.path.join(run_dir, f'fakes{cur_nimg // 1000:06d}_nir.png'), drange=[-1, 1],
                            grid_size=grid_size)

        # Network snapshot and training state.
        snapshot_pkl = None
        snapshot_data = None
        if network_snapshot_ticks is not None and (done or cur_tick % network_snapshot_ticks == 0):
            snapshot_data = dict(training_set_kwargs=dict(training_set_kwargs))
            for name, module in [('G', G), ('D', D), ('G_ema', G_ema), ('augment_pipe', augment_pipe),
                                 ('D_NIR', D_NIR)]:
                if module is not None:
                    if num_gpus > 1:
                        misc.check_ddp_consistency(module, ignore_regex=r'.*\.w_avg')
                    module = copy.deepcopy(module).eval().requires_grad_(False).cpu()
                snapshot_data[name] = module
            own = dict(rng=_rng_state(device), pl_mean=loss.pl_mean.detach().cpu(),
                       ada_signs=loss.ada_signs.detach().cpu())
            per_rank = [own]
            if num_gpus > 1:
                per_rank = [None] * num_gpus
                torch.distributed.all_gather_object(per_rank, own)
            rng_states = [r['rng'] for r in per_rank]
            snapshot_pkl = os.path.join(run_dir, f'network-snapshot-{cur_nimg // 1000:06d}.pkl')
            if rank == 0:
                train_state = dict(
                    version=STATE_VERSION, cur_nimg=cur_nimg, cur_tick=cur_tick + 1, batch_idx=batch_idx,
                    num_gpus=num_gpus, batch_size=batch_size, random_seed=random_seed, elapsed_sec=total_sec,
                    optimizers={k: opt.state_dict() for k, opt in optimizers.items()},
                    pl_mean=loss.pl_mean.detach().cpu(), ada_signs=loss.ada_signs.detach().cpu(),
                    per_rank=[dict(pl_mean=r['pl_mean'].cpu(), ada_signs=r['ada_signs'].cpu()) for r in per_rank],
                    rng=[{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in s.items()}
                         for s in rng_states],
                    snapshot=os.path.basename(snapshot_pkl))
                # The state goes first: a snapshot with no state beside it is only ever a weights checkpoint.
                with dnnlib.util.atomic_write(state_path_for(snapshot_pkl), 'wb') as f:
                    torch.save(train_state, f)
                legacy.save_network_pkl(snapshot_pkl, snapshot_data)

        # Metrics, on their own random stream so that they never change the training.
        if snapshot_data is not None and len(metrics) > 0:
            from metrics import metric_main
            if rank == 0:
                print('Evaluating metrics...')
            for metric in metrics:
                with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
                    try:
                        result_dict = metric_main.calc_metric(metric=metric, G=snapshot_data['G_ema'],
                                                              dataset_kwargs=training_set_kwargs,
                                                              num_gpus=num_gpus, rank=rank, device=device,
                                                              **(metrics_kwargs or {}))
                    except metric_main.DetectorUnavailable as exc:
                        if rank == 0:
                            print(f'Skipping metric {metric}: {exc}')
                        continue
                if rank == 0:
                    metric_main.report_metric(result_dict, run_dir=run_dir, snapshot_pkl=snapshot_pkl)
                stats_metrics.update(result_dict.results)
        del snapshot_data

        # Statistics.
        stats_collector.update()
        stats_dict = stats_collector.as_dict()
        timestamp = time.time()
        if stats_jsonl is not None:
            fields = dict(stats_dict, timestamp=timestamp)
            stats_jsonl.write(json.dumps(fields) + '\n')
            stats_jsonl.flush()
        if stats_tfevents is not None:
            global_step = int(cur_nimg / 1e3)
            walltime = timestamp - start_time
            for name, value in stats_dict.items():
                stats_tfevents.add_scalar(name, value.mean, global_step=global_step, walltime=walltime)
            for name, value in stats_metrics.items():
                stats_tfevents.add_scalar(f'Metrics/{name}', value, global_step=global_step, walltime=walltime)
            stats_tfevents.flush()
        if progress_fn is not None:
            progress_fn(cur_nimg // 1000, total_kimg)

        # Next tick.
        cur_tick += 1
        tick_start_nimg = cur_nimg
        tick_start_time = time.time()
        maintenance_time = tick_start_time - tick_end_time
        if done:
            break

    if stats_jsonl is not None:
        stats_jsonl.close()
    if rank == 0:
        print()
        print('Exiting...')
    return dict(G=G, D=D, D_NIR=D_NIR, G_ema=G_ema, cur_nimg=cur_nimg)


def latest_snapshot(run_dir):
    """The newest ``network-snapshot-*.pkl`` of a run directory that has its training state, or None."""
    names = sorted(n for n in os.listdir(run_dir) if n.startswith('network-snapshot-') and n.endswith('.pkl'))
    for name in reversed(names):
        path = os.path.join(run_dir, name)
        if os.path.isfile(state_path_for(path)):
            return path
    return None

