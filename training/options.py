"""Training configurations, the exact continuation of a saved run, and launching: what ``train_db_stylegan2.py``
turns its flags into.

The cfg table is StyleGAN2-ADA's with the dual-branch papers' ``auto`` (kimg 10000, 8 mapping layers), BiFaceGAN's
``biface256``, and ``tiny``, a small network for CPU work (a few kimg at 32x32 in about a minute on 2 cores).
"""

import copy
import json
import os
import re

import torch

import dnnlib
from torch_utils import distributed, training_stats
from training import dataset as dataset_module
from training import training_loop as loop
from training.image_pairs import DatasetError
from training.legacy import CheckpointError

CFG_SPECS = {
    # ref_gpus, kimg, mb, mbstd, fmaps, lrate, gamma, ema, ramp, map (and overrides for the small config)
    'auto':      dict(ref_gpus=-1, kimg=10000, mb=-1, mbstd=-1, fmaps=-1, lrate=-1, gamma=-1, ema=-1, ramp=0.05, map=8),
    'stylegan2': dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=10, ema=10, ramp=None, map=8),
    'paper256':  dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None,
                      map=8),
    'paper512':  dict(ref_gpus=8, kimg=25000, mb=64, mbstd=8, fmaps=1, lrate=0.0025, gamma=0.5, ema=20, ramp=None,
                      map=8),
    'paper1024': dict(ref_gpus=8, kimg=25000, mb=32, mbstd=4, fmaps=1, lrate=0.002, gamma=2, ema=10, ramp=None, map=8),
    'cifar':     dict(ref_gpus=2, kimg=100000, mb=64, mbstd=32, fmaps=1, lrate=0.0025, gamma=0.01, ema=500, ramp=0.05,
                      map=2),
    'biface256': dict(ref_gpus=1, kimg=25000, mb=12, mbstd=4, fmaps=0.5, lrate=0.0025, gamma=1, ema=20, ramp=None,
                      map=8),
    # tiny: lrate 0.005, twice upstream's: at 10 kimg on 2 CPU cores the eyes have lids and irises instead of a
    # near-identical blur, and over 3 demo seeds the segmenter trained on its data beat the 8-annotated one each time.
    'tiny':      dict(ref_gpus=1, kimg=100, mb=8, mbstd=4, fmaps=None, lrate=0.005, gamma=-1, ema=-1, ramp=0.05, map=2,
                      z_dim=64, channel_base=512, channel_max=32, num_fp16_res=0),
}

RESUME_SPECS = {
    'ffhq256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/'
               'ffhq-res256-mirror-paper256-noaug.pkl',
    'ffhq512': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/'
               'ffhq-res512-mirror-stylegan2-noaug.pkl',
    'ffhq1024': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/'
                'ffhq-res1024-mirror-stylegan2-noaug.pkl',
    'celebahq256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/'
                   'celebahq-res256-mirror-paper256-kimg100000-ada-target0.5.pkl',
    'lsundog256': 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/'
                  'lsundog-res256-paper256-kimg100000-noaug.pkl',
}

AUGPIPES = ('blit', 'geom', 'color', 'filter', 'noise', 'cutout', 'bg', 'bgc', 'bgcf', 'bgcfn', 'bgcfnc')


class UserError(ValueError):
    """An invalid combination of options; the message is shown as is."""


# User errors a training rank can hit (passed on to the launching process as they are).
_RANK_ERRORS = (UserError, DatasetError, CheckpointError)
# What the training command line reports as one `error: ...` line (exit code 2; a failed rank: the job ends with its
# exit code): bad options, data, checkpoints, downloads and launches.
USER_ERRORS = _RANK_ERRORS + (dnnlib.util.OfflineDownloadError, distributed.DistributedError, distributed.RankFailed)


def _cfg_values(cfg, res, gpus):
    spec = dnnlib.EasyDict(CFG_SPECS[cfg])
    if cfg == 'auto':
        spec.ref_gpus = gpus
        spec.mb = max(min(gpus * min(4096 // res, 32), 64), gpus)
        spec.mbstd = min(spec.mb // gpus, 4)
        spec.fmaps = 1 if res >= 512 else 0.5
        spec.lrate = 0.002 if res >= 1024 else 0.0025
    if spec.gamma == -1:
        spec.gamma = 0.0002 * (res ** 2) / spec.mb
    if spec.ema == -1:
        spec.ema = spec.mb * 10 / 32
    return spec


def setup_training_options(
    data, gpus=1, snap=50, metrics=('fid50k_full',), seed=0, cond=False, subset=None, mirror=False, cfg='auto',
    gamma=None, kimg=None, batch=None, aug='ada', p=None, target=None, augpipe='bgc', resume=None, freezed=0,
    fp32=False, nhwc=False, nobench=False, allow_tf32=False, workers=None, nir_weight=1.0, nir_r1=True, tick=None,
    device=None, detector_dir=None, given=(),
):
    """Turn the command-line options into ``(description, training_loop kwargs)``; opens the dataset once to
    learn its size, resolution and labels (raising its one-line DatasetError on bad data).

    ``given`` lists the options the user set explicitly (they enter the run name, as upstream).
    """
    c = dnnlib.EasyDict()
    if gpus < 1 or (gpus & (gpus - 1)) != 0:
        raise UserError('--gpus must be a power of two')
    if snap < 1:
        raise UserError('--snap must be at least 1')
    c.num_gpus = gpus
    c.image_snapshot_ticks = c.network_snapshot_ticks = snap
    c.metrics = list(metrics)
    c.random_seed = seed

    c.training_set_kwargs = dnnlib.EasyDict(class_name='training.dataset.PairedImageDataset', path=data,
                                            use_labels=True, max_size=None, xflip=False)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=True, num_workers=workers, prefetch_factor=2)
    training_set = dataset_module.PairedImageDataset(**{k: v for k, v in c.training_set_kwargs.items()
                                                        if k != 'class_name'})
    c.training_set_kwargs.resolution = training_set.resolution
    c.training_set_kwargs.use_labels = training_set.has_labels
    c.training_set_kwargs.max_size = len(training_set)
    desc = training_set.name
    if cond:
        if not training_set.has_labels:
            raise UserError('--cond=True requires labels specified in dataset.json')
        desc += '-cond'
    else:
        c.training_set_kwargs.use_labels = False
    if subset is not None:
        if not 1 <= subset <= c.training_set_kwargs.max_size:
            raise UserError(f'--subset must be between 1 and {c.training_set_kwargs.max_size}')
        desc += f'-subset{subset}'
        if subset < c.training_set_kwargs.max_size:
            c.training_set_kwargs.max_size = subset
            c.training_set_kwargs.random_seed = seed
    if mirror:
        desc += '-mirror'
        c.training_set_kwargs.xflip = True

    res = training_set.resolution
    spec = _cfg_values(cfg, res, gpus)
    desc += f'-{cfg}' + (str(gpus) if cfg == 'auto' else '')
    z_dim = spec.get('z_dim', 512)
    channel_base = spec.get('channel_base') or int(spec.fmaps * 32768)
    channel_max = spec.get('channel_max', 512)
    num_fp16_res = spec.get('num_fp16_res', 4)
    c.G_kwargs = dnnlib.EasyDict(class_name='training.networks.Generator', z_dim=z_dim, w_dim=z_dim,
                                 mapping_kwargs=dnnlib.EasyDict(num_layers=spec.map),
                                 synthesis_kwargs=dnnlib.EasyDict(channel_base=channel_base, channel_max=channel_max,
                                                                  num_fp16_res=num_fp16_res, conv_clamp=256))
    c.D_kwargs = dnnlib.EasyDict(class_name='training.networks.Discriminator', block_kwargs=dnnlib.EasyDict(),
                                 mapping_kwargs=dnnlib.EasyDict(),
                                 epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=spec.mbstd),
                                 channel_base=channel_base, channel_max=channel_max, num_fp16_res=num_fp16_res,
                                 conv_clamp=256)
    # foreach: the same steps as the per-tensor loop, bit for bit, in a few calls instead of several per tensor
    # (PyTorch's default on CUDA already; on the CPU it saves about 1.3 ms per step of the tiny generator).
    c.G_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=spec.lrate, betas=[0, 0.99], eps=1e-8,
                                     foreach=True)
    c.D_opt_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=spec.lrate, betas=[0, 0.99], eps=1e-8,
                                     foreach=True)
    c.loss_kwargs = dnnlib.EasyDict(class_name='training.loss.StyleGAN2Loss', r1_gamma=spec.gamma,
                                    nir_weight=nir_weight, nir_r1=nir_r1)
    c.total_kimg = spec.kimg
    c.batch_size = spec.mb
    c.batch_gpu = max(spec.mb // spec.ref_gpus, 1)
    c.ema_kimg = spec.ema
    c.ema_rampup = spec.ramp
    if cfg == 'cifar':
        c.loss_kwargs.pl_weight = 0
        c.loss_kwargs.style_mixing_prob = 0
        c.D_kwargs.architecture = 'orig'

    if gamma is not None:
        if gamma < 0:
            raise UserError('--gamma must be non-negative')
        desc += f'-gamma{gamma:g}'
        c.loss_kwargs.r1_gamma = gamma
    if kimg is not None:
        if kimg < 1:
            raise UserError('--kimg must be at least 1')
        desc += f'-kimg{kimg}'
        c.total_kimg = kimg
    if batch is not None:
        if not (batch >= 1 and batch % gpus == 0):
            raise UserError('--batch must be at least 1 and divisible by --gpus')
        desc += f'-batch{batch}'
        c.batch_size = batch
        c.batch_gpu = batch // gpus
    if c.batch_size % (c.batch_gpu * gpus) != 0:
        raise UserError(f'the batch {c.batch_size} must be a multiple of batch_gpu x gpus = {c.batch_gpu * gpus}')
    if nir_weight != 1.0:
        desc += f'-nirweight{nir_weight:g}'
    if not nir_r1:
        desc += '-nonirr1'

    if aug not in ('noaug', 'ada', 'fixed'):
        raise UserError(f'--aug must be noaug, ada or fixed, got {aug!r}')
    if 'aug' in given:
        desc += f'-{aug}'
    if aug == 'ada':
        c.ada_target = 0.6
    elif aug == 'fixed':
        if p is None:
            raise UserError('--aug=fixed requires specifying --p')
    if p is not None:
        if aug != 'fixed':
            raise UserError('--p can only be specified with --aug=fixed')
        if not 0 <= p <= 1:
            raise UserError('--p must be between 0 and 1')
        desc += f'-p{p:g}'
        c.augment_p = p
    if target is not None:
        if aug != 'ada':
            raise UserError('--target can only be specified with --aug=ada')
        if not 0 <= target <= 1:
            raise UserError('--target must be between 0 and 1')
        desc += f'-target{target:g}'
        c.ada_target = target
    if augpipe not in AUGPIPES:
        raise UserError(f'--augpipe must be one of {", ".join(AUGPIPES)}')
    if 'augpipe' in given:
        if aug == 'noaug':
            raise UserError('--augpipe cannot be specified with --aug=noaug')
        desc += f'-{augpipe}'
    if aug != 'noaug':
        from training import augment
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', **augment.augpipe_specs[augpipe])

    if resume is None or resume == 'noresume':
        if resume == 'noresume' and 'resume' in given:
            desc += '-noresume'
    else:
        if resume in RESUME_SPECS:
            desc += f'-resume{resume}'
            c.resume_pkl = RESUME_SPECS[resume]
        else:
            desc += '-resumecustom'
            c.resume_pkl = resume
        c.ada_kimg = 100  # make ADA react faster at the beginning
        c.ema_rampup = None  # disable EMA ramp-up

    if freezed:
        if freezed < 0:
            raise UserError('--freezed must be non-negative')
        desc += f'-freezed{freezed}'
        c.D_kwargs.block_kwargs.freeze_layers = freezed
    if fp32:
        c.G_kwargs.synthesis_kwargs.num_fp16_res = c.D_kwargs.num_fp16_res = 0
        c.G_kwargs.synthesis_kwargs.conv_clamp = c.D_kwargs.conv_clamp = None
    if nhwc:
        c.G_kwargs.synthesis_kwargs.fp16_channels_last = c.D_kwargs.block_kwargs.fp16_channels_last = True
    if nobench:
        c.cudnn_benchmark = False
    if allow_tf32:
        c.allow_tf32 = True
    if workers is None:  # upstream's 3, but never more than the CPUs (more only slows a small machine down)
        workers = min(3, os.cpu_count() or 1)
    if workers < 0:
        raise UserError('--workers must be non-negative')
    c.data_loader_kwargs.num_workers = workers
    if tick is not None:
        if tick <= 0:
            raise UserError('--tick must be positive')
        c.kimg_per_tick = tick
    if device is not None:
        c.device_type = device
    if detector_dir is not None:
        c.metrics_kwargs = dnnlib.EasyDict(detector_dir=detector_dir)
    return desc, c


def resolve_continuation(resume):
    """If ``resume`` names a run directory or a snapshot with a training state beside it, return
    ``(snapshot_pkl, state_path, previous_options)``; otherwise None (plain weight transfer)."""
    if resume is None or resume in RESUME_SPECS or dnnlib.util.is_url(resume):
        return None
    if os.path.isdir(resume):
        snapshot = loop.latest_snapshot(resume)
        if snapshot is None:
            raise UserError(f'{resume}: no network-snapshot-*.pkl with its training-state-*.pt in this run directory')
    elif os.path.isfile(resume):
        snapshot = resume
        if not os.path.isfile(loop.state_path_for(snapshot)):
            return None
    else:
        raise UserError(f'{resume}: no such file or directory')
    options_path = os.path.join(os.path.dirname(os.path.abspath(snapshot)), 'training_options.json')
    if not os.path.isfile(options_path):
        raise UserError(f'{options_path}: missing; cannot continue the run without its options')
    with open(options_path) as f:
        previous = json.load(f, object_hook=dnnlib.EasyDict)
    return os.path.abspath(snapshot), loop.state_path_for(os.path.abspath(snapshot)), previous


def continue_run(resume, gpus=None, kimg=None, given=(), log=print):
    """The exact continuation of the run ``resume`` names (its directory, or a snapshot with its training state):
    ``(description, training_loop kwargs)`` from its saved options; None when ``resume`` is no such run (a
    pretrained name, URL or plain pickle: weight transfer). ``gpus`` must match the saved run's process count;
    ``kimg`` may extend it. Other options the user set in ``given`` are ignored, with a note through ``log``."""
    continuation = resolve_continuation(resume)
    if continuation is None:
        return None
    snapshot, state, c = continuation
    processes = c.num_gpus if gpus is None else gpus
    if processes != c.num_gpus:
        raise UserError(f'{state}: saved by a run of {c.num_gpus} process(es); an exact continuation needs as many, '
                        f'not {processes} (--gpus {c.num_gpus}, or torchrun with {c.num_gpus} processes in all)')
    if kimg is not None:
        c.total_kimg = kimg  # the one option that may change: train for longer
    c.resume_pkl, c.resume_state = snapshot, state
    c.pop('run_dir', None)
    desc = re.sub(r'^\d+-', '', os.path.basename(os.path.dirname(snapshot))) + '-continued'
    ignored = sorted(set(given) - {'resume', 'kimg', 'outdir', 'gpus'})
    if ignored:
        log(f'Note: continuing {snapshot} with its own options; ignoring --{", --".join(ignored)}')
    return desc, c


def options_from_command_line(options, log=print):
    """What ``train_db_stylegan2.py``'s options ask for: ``(description, training_loop kwargs)`` of a new run, or of
    the exact continuation of the run ``--resume`` names. ``options`` maps the option names to their values, None
    for those not given; under torchrun the process count is its world size."""
    given = {k for k, v in options.items() if v is not None}
    kwargs = {k: v for k, v in options.items() if v is not None}
    world = distributed.from_environment()
    if world is not None:
        if kwargs.get('gpus', world.size) != world.size:
            raise UserError(f'--gpus {kwargs["gpus"]} disagrees with torchrun\'s world size {world.size}; leave '
                            f'--gpus out under torchrun')
        kwargs['gpus'] = world.size
    continued = continue_run(kwargs.get('resume'), gpus=kwargs.get('gpus'), kimg=kwargs.get('kimg'), given=given,
                             log=log)
    if continued is not None:
        return continued
    if kwargs.get('data') is None:
        raise UserError('--data is required (unless --resume names a run to continue)')
    return setup_training_options(given=given, **kwargs)


def next_run_dir(outdir, desc):
    prev_ids = []
    if os.path.isdir(outdir):
        prev_ids = [int(m.group()) for m in (re.match(r'^\d+', x) for x in os.listdir(outdir)) if m]
    cur_id = max(prev_ids, default=-1) + 1
    return os.path.join(outdir, f'{cur_id:05d}-{desc}')


def _create_run_dir(c, desc, outdir, dry_run):
    """Print the options, then (unless a dry run) create the run directory and write ``training_options.json``.
    Only rank 0 calls this: the directory is decided once, then shared with every rank."""
    c.run_dir = next_run_dir(outdir, desc)
    print()
    print('Training options:')
    print(json.dumps(c, indent=2))
    print()
    print(f'Output directory:   {c.run_dir}')
    print(f'Training data:      {c.training_set_kwargs.path}')
    print(f'Training duration:  {c.total_kimg} kimg')
    print(f'Number of GPUs:     {c.num_gpus}')
    print(f'Number of images:   {c.training_set_kwargs.max_size}')
    print(f'Image resolution:   {c.training_set_kwargs.resolution}')
    print(f'Conditional model:  {c.training_set_kwargs.use_labels}')
    print(f'Dataset x-flips:    {c.training_set_kwargs.xflip}')
    print()
    if dry_run:
        print('Dry run; exiting.')
        return None
    print('Creating output directory...')
    os.makedirs(c.run_dir)
    with dnnlib.util.atomic_write(os.path.join(c.run_dir, 'training_options.json'), 'w') as f:
        json.dump(c, f, indent=2)
    print('Launching processes...')
    return c.run_dir


def _train_rank(world, c, desc, outdir, device_type):
    """One rank of a training job (of any launcher): rank 0 creates the run directory, every rank trains."""
    from torch_utils import custom_ops
    c = copy.deepcopy(c)
    run_dir = _create_run_dir(c, desc, outdir, dry_run=False) if world.is_main else None
    c.run_dir = distributed.broadcast_object(run_dir, world)
    c.pop('device_type', None)  # saved with the options; the loop takes the device itself
    if not world.is_main:
        custom_ops.verbosity = 'none'
    device = world.device(device_type)
    if world.distributed:
        training_stats.init_multiprocessing(rank=world.rank, sync_device=device)
    log_file = os.path.join(c.run_dir, 'log.txt') if world.is_main else None  # other nodes may not share the disk
    with dnnlib.util.Logger(file_name=log_file, file_mode='a', should_flush=True):
        loop.training_loop(rank=world.rank, device=device, **c)
    return c.run_dir


def launch_training(c, desc, outdir, dry_run=False, timeout_s=None):
    """Train ``c`` in a new run directory under ``outdir``: in this process, in ``c.num_gpus`` processes spawned
    here, or on every rank of a torchrun job (whose world size must then equal ``c.num_gpus``). Returns the run
    directory (None for a dry run, and on the ranks of a torchrun job other than 0). ``timeout_s``: how long a rank
    waits for a silent peer [default: ``distributed.DEFAULT_TIMEOUT_S``]."""
    c = dnnlib.EasyDict(c)
    timeout_s = distributed.DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    world = distributed.from_environment()
    if dry_run:
        if world is None or world.is_main:
            _create_run_dir(c, desc, outdir, dry_run=True)
        return None
    if world is not None and world.size != c.num_gpus:
        raise UserError(f'torchrun started {world.size} processes but the run is set up for {c.num_gpus}')
    device_type = c.get('device_type') or ('cuda' if torch.cuda.is_available() else 'cpu')
    return distributed.launch(_train_rank, args=(c, desc, outdir, device_type),
                              gpus=None if world is not None else c.num_gpus, device_type=device_type,
                              timeout_s=timeout_s, user_errors=_RANK_ERRORS)
