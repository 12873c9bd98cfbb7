"""Training a segmentation network on a dataset folder, with exact resume.

A run folder holds ``options.json`` (what was asked), ``log.txt`` (one line per epoch), ``history.json``,
``curves.png`` (losses and validation mIoU per epoch), ``checkpoint-last.pt`` (written atomically after every epoch)
and ``checkpoint-best.pt`` (the epoch with the best validation mIoU; the last epoch when there is no validation set).

Resuming is exact: every epoch draws its sample order, augmentation and dropout from generators seeded by
``(seed, epoch)``, and the checkpoint holds the model, optimizer and schedule position, so a run killed at any moment
and resumed gives the same weights as one that never stopped (bit for bit on the CPU).

Checkpoints are plain tensors and Python values, read with ``torch.load(weights_only=True)``: nothing in them runs.
"""

import dataclasses
import json
import math
import os
import time
from typing import Callable, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

import dnnlib
from segmentation import data as seg_data
from segmentation.augment import AugmentOptions, augment
from segmentation.classmap import ClassMap
from segmentation.errors import SegmentationError
from segmentation.metrics import IGNORE_INDEX, ConfusionMeter, scores
from segmentation.models import ModelError, build_model

CHECKPOINT_FORMAT = 'bigan-segmenter-1'
CLASS_WEIGHTS = ('none', 'inverse', 'sqrt')


# What the command lines report as one-line errors (exit code 2): bad files, models, options.
USER_ERRORS = (SegmentationError, seg_data.DatasetError, ModelError)


@dataclasses.dataclass
class TrainOptions:
    data: str
    outdir: str
    arch: str = 'unet'
    width: Optional[int] = None
    depth: Optional[int] = None
    output_stride: int = 16
    input: str = 'rgbnir'
    epochs: int = 30
    repeat: int = 1  # passes over the training set per epoch (for tiny sets: fewer checkpoints, same steps)
    batch: int = 8
    lr: float = 1e-2
    weight_decay: float = 1e-4
    val: Optional[str] = None
    val_fraction: float = 0.0
    class_weights: str = 'none'
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    class_map: Optional[str] = None  # JSON: the training masks' ids -> the model's (see segmentation.classmap)
    all_samples: bool = False
    hflip: bool = True
    vflip: bool = False
    scale: float = 1.25
    jitter: float = 0.2
    seed: int = 0
    amp: bool = True
    workers: int = 0
    device: Optional[str] = None

    # Options that may differ when a run is resumed (they do not change what is computed).
    RESUMABLE_CHANGES = ('workers', 'device', 'outdir')

    def augment_options(self):
        return AugmentOptions(hflip=self.hflip, vflip=self.vflip, scale=self.scale, jitter=self.jitter)

    def to_json(self):
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------------ helpers


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 or [0, 1] float images -> the network's input range [-1, 1]."""
    if images.dtype == torch.uint8:
        images = images.float() / 255
    return images * 2 - 1


def class_weights(counts: np.ndarray, mode: str) -> Optional[torch.Tensor]:
    """Loss weights per class from pixel counts: 'inverse' frequency or its 'sqrt', normalised so the weighted mean
    over pixels is 1; classes with no pixels get weight 0 (they contribute no loss anyway)."""
    if mode == 'none':
        return None
    if mode not in CLASS_WEIGHTS:
        raise ValueError(f'class_weights must be one of {", ".join(CLASS_WEIGHTS)}, got {mode!r}')
    counts = np.asarray(counts, np.float64)
    freq = counts / counts.sum()
    w = np.zeros_like(freq)
    present = counts > 0
    w[present] = 1 / freq[present]
    if mode == 'sqrt':
        w = np.sqrt(w)
    w /= (w * freq).sum()
    return torch.tensor(w, dtype=torch.float32)


def poly_lr(base_lr, step, total_steps, power=0.9):
    """DeepLab's 'poly' schedule, a function of the global step alone (so resuming needs no scheduler state)."""
    return base_lr * (1 - min(step, total_steps - 1) / total_steps) ** power


def epoch_generator(seed, epoch, stream):
    """A CPU generator for one epoch and purpose; independent streams so that e.g. adding validation does not
    change the training order."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 101 + stream) % (2 ** 63))
    return g


def autocast(device, enabled):
    """bfloat16 autocast on CUDA (no loss scaling needed); nothing on the CPU, where it would only be slower."""
    if enabled and device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def predict(model, images, device, batch=16, amp=True):
    """uint8 images [N, C, H, W] -> int64 class ids [N, H, W] (on the CPU)."""
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_input(images[i:i + batch].to(device))
            with autocast(device, amp):
                logits = model(x)
            out.append(logits.argmax(1).cpu())
    return torch.cat(out) if out else torch.zeros((0,) + tuple(images.shape[2:]), dtype=torch.long)


def evaluate_set(model, dataset, num_classes, device, batch=16, amp=True, class_names=None):
    """Confusion matrix, scores and mean cross-entropy of ``model`` on a ``SegmentationSet``."""
    meter = ConfusionMeter(num_classes)
    loss_sum, pixels = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(dataset), batch):
            items = [dataset[j] for j in range(i, min(i + batch, len(dataset)))]
            x = to_input(torch.stack([it[0] for it in items]).to(device))
            m = torch.stack([it[1] for it in items]).to(device)
            with autocast(device, amp):
                logits = model(x)
            logits = logits.float()
            loss_sum += float(F.cross_entropy(logits, m, ignore_index=IGNORE_INDEX, reduction='sum'))
            pixels += int((m != IGNORE_INDEX).sum())
            meter.update(m, logits.argmax(1))
    result = scores(meter.matrix, class_names)
    result['loss'] = loss_sum / max(1, pixels)
    return meter.matrix, result


# ------------------------------------------------------------------------------------------------ checkpoints


def save_checkpoint(path, payload):
    with dnnlib.util.atomic_write(path, 'wb') as f:
        torch.save(payload, f)


def load_checkpoint(path):
    """The checkpoint dict, or ``SegmentationError`` for a file that is not a segmenter checkpoint of this project."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SegmentationError(path, 'checkpoint not found')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SegmentationError(path, f'cannot be read as a weights-only segmenter checkpoint ({first})') from None
    if not isinstance(ckpt, dict) or ckpt.get('format') != CHECKPOINT_FORMAT:
        raise SegmentationError(path, f'is not a segmentation checkpoint of this project (no format '
                                      f'{CHECKPOINT_FORMAT!r})')
    return ckpt


def model_from_checkpoint(path, device='cpu'):
    """``(model, ckpt)``: the network rebuilt from the checkpoint's ``model_config`` with its weights, in eval mode."""
    ckpt = load_checkpoint(path)
    try:
        model = build_model(**ckpt['model_config'])
        model.load_state_dict(ckpt['model'])
    except (ModelError, RuntimeError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SegmentationError(path, f'weights do not fit its model config ({first})') from None
    # What the evaluation feeds the model and how it names the outputs come from these fields, not the config.
    modality, names = ckpt.get('input'), ckpt.get('class_names')
    if modality not in seg_data.INPUTS or seg_data.INPUTS[modality] != model.config['in_channels']:
        raise SegmentationError(path, f'records the input {modality!r}, but its model takes '
                                      f'{model.config["in_channels"]} channels')
    if names is not None and (not isinstance(names, list) or len(names) != model.config['num_classes']):
        raise SegmentationError(path, f'records the class names {names!r} for a model with '
                                      f'{model.config["num_classes"]} classes')
    return model.to(device).eval(), ckpt


# ------------------------------------------------------------------------------------------------ the run


def check_labels(dataset, num_classes, hint=''):
    """Every mask value must be a model class; the first one that is not is an error naming its mask file."""
    for value, file in sorted(dataset.labels_present().items()):
        if value >= num_classes:
            raise SegmentationError(file, f'holds class {value}, but the model has only {num_classes} classes '
                                          f'(0..{num_classes - 1}){hint}')


def _resolve_classes(opts, train_set, class_map=None):
    data_names = train_set.class_names if class_map is None else None  # mapped: the data's names are not the model's
    names = opts.class_names or (class_map.classes if class_map is not None else None) or data_names
    if opts.num_classes is not None:
        k = opts.num_classes
    elif names:
        k = len(names)
    else:
        k = train_set.max_label + 1
    k = max(k, 2)
    if names is not None and len(names) != k:
        raise SegmentationError(train_set.path, f'{len(names)} class names for {k} classes')
    return k, list(names) if names else [str(i) for i in range(k)]


class Run:
    """One training run in ``opts.outdir``; ``run()`` trains (resuming when the folder holds a checkpoint and
    ``resume`` is set) and returns the final history."""

    def __init__(self, opts: TrainOptions, resume=False, log: Callable[[str], None] = print, progress=True,
                 on_epoch_end: Callable[[int], None] = None):
        self.opts = opts
        self.log = log
        self.progress = progress
        self.on_epoch_end = on_epoch_end  # test hook (e.g. simulate a kill after an epoch)
        self.out = os.fspath(opts.outdir)
        self.last = os.path.join(self.out, 'checkpoint-last.pt')
        self.best = os.path.join(self.out, 'checkpoint-best.pt')
        self.resume = resume
        if os.path.exists(self.last) and not resume:
            raise SegmentationError(self.out, 'already holds a training run; pass --resume to continue it or '
                                              'choose another --outdir')

    def _setup(self):
        o = self.opts
        seg_data.input_channels(o.input)
        if o.class_weights not in CLASS_WEIGHTS:
            raise ValueError(f'class_weights must be one of {", ".join(CLASS_WEIGHTS)}, got {o.class_weights!r}')
        o.augment_options()  # validates
        self.device = torch.device(o.device) if o.device else torch.device('cuda' if torch.cuda.is_available()
                                                                           else 'cpu')
        cmap = ClassMap.load(o.class_map) if o.class_map else None
        full = seg_data.SegmentationSet(o.data, o.input, all_samples=o.all_samples, progress=self.progress,
                                        class_map=cmap)
        self.num_classes, self.class_names = _resolve_classes(o, full, cmap)
        if cmap is not None:
            cmap.check_model(self.num_classes)
        check_labels(full, self.num_classes)
        if o.val:
            if o.val_fraction > 0:
                raise SegmentationError('give either --val or --val_fraction, not both')
            self.train_set = full
            self.val_set = seg_data.SegmentationSet(o.val, o.input, progress=self.progress, class_map=cmap)
            if self.val_set.shape != full.shape:
                raise SegmentationError(self.val_set.samples[0].mask_file,
                                        f'is {self.val_set.shape[1]}x{self.val_set.shape[0]}, but the training '
                                        f'pairs are {full.shape[1]}x{full.shape[0]}')
            check_labels(self.val_set, self.num_classes)
        elif o.val_fraction > 0:
            if len(full) < 2:
                raise SegmentationError(o.data, 'holds one sample; a validation split needs at least two')
            train_idx, val_idx = seg_data.split_indices(len(full), o.val_fraction, o.seed)
            self.train_set = torch.utils.data.Subset(full, train_idx)
            self.val_set = torch.utils.data.Subset(full, val_idx)
        else:
            self.train_set, self.val_set = full, None
        self.full = full
        counts = full.class_counts(self.num_classes)
        self.weights = class_weights(counts, o.class_weights)
        # The initial weights come from the run's seed too, not from whatever state the global generator is in: the
        # same options give the same run (also within one process), another seed another run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(o.seed)
            model = build_model(o.arch, seg_data.INPUTS[o.input], self.num_classes, width=o.width,
                                output_stride=o.output_stride, depth=o.depth)
        self.model = model.to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        if not isinstance(o.repeat, int) or o.repeat < 1:
            raise ValueError(f'repeat must be a positive integer, got {o.repeat!r}')
        self.steps_per_epoch = math.ceil(len(self.train_set) * o.repeat / o.batch)
        self.total_steps = self.steps_per_epoch * o.epochs
        self.history, self.best_score, self.start_epoch = [], None, 0

    def _payload(self, epoch):
        return {
            'format': CHECKPOINT_FORMAT, 'model_config': self.model.config, 'model': self.model.state_dict(),
            'optimizer': self.optimizer.state_dict(), 'epoch': epoch, 'history': self.history,
            'best': self.best_score, 'class_names': self.class_names, 'input': self.opts.input,
            'resolution': list(self.full.shape), 'options': self.opts.to_json(),
        }

    def _restore(self):
        ckpt = load_checkpoint(self.last)
        saved = dict(ckpt['options'])
        now = self.opts.to_json()
        defaults = TrainOptions(data='', outdir='').to_json()  # options added since the checkpoint: their defaults
        changed = [k for k in now if k not in TrainOptions.RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]]
        if changed:
            k = changed[0]
            raise SegmentationError(self.last, f'was trained with {k}={saved.get(k)!r}, not {now[k]!r}; resume '
                                               f'with the same options')
        self.model.load_state_dict(ckpt['model'])
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.history, self.best_score, self.start_epoch = list(ckpt['history']), ckpt['best'], int(ckpt['epoch'])
        self.log(f'resuming {self.last} after epoch {self.start_epoch}')

    def _train_epoch(self, epoch):
        o = self.opts
        self.model.train()
        order_gen = epoch_generator(o.seed, epoch, 0)
        order = [i for _ in range(o.repeat) for i in torch.randperm(len(self.train_set), generator=order_gen).tolist()]
        aug_gen = epoch_generator(o.seed, epoch, 1)
        torch.manual_seed(int(torch.randint(2 ** 62, (1,), generator=epoch_generator(o.seed, epoch, 2))))  # dropout
        loader = torch.utils.data.DataLoader(self.train_set, batch_size=o.batch, sampler=order,
                                             num_workers=o.workers, drop_last=False)
        weights = None if self.weights is None else self.weights.to(self.device)
        bar = loader
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(loader, desc=f'epoch {epoch + 1}/{o.epochs}', unit='batch', leave=False, dynamic_ncols=True,
                       disable=None)  # None: only on a terminal
        loss_sum, pixels = 0.0, 0
        for i, (x, m) in enumerate(bar):
            step = epoch * self.steps_per_epoch + i
            for group in self.optimizer.param_groups:
                group['lr'] = poly_lr(o.lr, step, self.total_steps)
            x = x.to(self.device).float() / 255
            m = m.to(self.device)
            x, m = augment(x, m, o.input, o.augment_options(), aug_gen)
            with autocast(self.device, o.amp):
                logits = self.model(to_input(x))
            loss = F.cross_entropy(logits.float(), m, weight=weights, ignore_index=IGNORE_INDEX)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = int((m != IGNORE_INDEX).sum())
            loss_sum += float(loss.detach()) * n
            pixels += n
            if self.progress:
                bar.set_postfix(loss=f'{float(loss.detach()):.4f}')
        return loss_sum / max(1, pixels)

    def _write_reports(self):
        with dnnlib.util.atomic_write(os.path.join(self.out, 'history.json'), 'w') as f:
            json.dump(self.history, f, indent=1)
        from segmentation.plots import line_chart
        series = {'train loss': [h['train_loss'] for h in self.history]}
        if self.val_set is not None:
            series['val loss'] = [h['val_loss'] for h in self.history]
            series['val mIoU'] = [h['val_miou'] for h in self.history]
        img = line_chart(series, title=f'{self.opts.arch} on {os.path.basename(self.opts.data.rstrip("/"))}')
        with dnnlib.util.atomic_write(os.path.join(self.out, 'curves.png'), 'wb') as f:
            img.save(f, format='png')

    def run(self):
        self._setup()
        os.makedirs(self.out, exist_ok=True)
        if self.resume and os.path.exists(self.last):
            self._restore()
        else:
            with dnnlib.util.atomic_write(os.path.join(self.out, 'options.json'), 'w') as f:
                json.dump(self.opts.to_json(), f, indent=2)
            n_val = 0 if self.val_set is None else len(self.val_set)
            self.log(f'{self.full.kind} dataset {self.opts.data}: {len(self.train_set)} training pairs, {n_val} '
                     f'validation pairs, {self.full.shape[1]}x{self.full.shape[0]}, {self.num_classes} classes; '
                     f'{self.opts.arch} on {self.device}')
        o = self.opts
        with open(os.path.join(self.out, 'log.txt'), 'a') as logf:
            for epoch in range(self.start_epoch, o.epochs):
                t0 = time.time()
                entry = {'epoch': epoch + 1, 'train_loss': self._train_epoch(epoch)}
                if self.val_set is not None:
                    _, res = evaluate_set(self.model, self.val_set, self.num_classes, self.device, amp=o.amp,
                                          class_names=self.class_names)
                    entry.update(val_loss=res['loss'], val_miou=res['miou'],
                                 val_iou={c['class']: c['iou'] for c in res['per_class']})
                entry['seconds'] = round(time.time() - t0, 3)
                self.history.append(entry)
                score = entry.get('val_miou')
                improved = self.val_set is None or (score is not None and (self.best_score is None or
                                                                           score > self.best_score['miou']))
                if improved:
                    self.best_score = {'epoch': epoch + 1, 'miou': score}
                payload = self._payload(epoch + 1)
                # Best before last: a kill in between redoes this epoch on resume (same result), so it is not lost.
                if improved:
                    save_checkpoint(self.best, payload)
                    dnnlib.util.copy_atomic(self.best, self.last)
                else:
                    save_checkpoint(self.last, payload)
                self._write_reports()
                line = f'epoch {epoch + 1}/{o.epochs}  train loss {entry["train_loss"]:.4f}'
                if self.val_set is not None:
                    miou = '–' if score is None else f'{score:.4f}'
                    line += f'  val loss {entry["val_loss"]:.4f}  val mIoU {miou}'
                line += f'  ({entry["seconds"]:.1f} s)'
                self.log(line)
                logf.write(line + '\n')
                logf.flush()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(epoch + 1)
        return self.history
