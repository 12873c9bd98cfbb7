"""Is the annotation set big enough? Cross-validation of the Semantic Mask Generator over its annotated samples,
and scoring generated masks against reference masks.

``cross_validate``: the annotated samples are split into folds (leave-one-out by default); for each fold an ensemble
is trained on the other samples exactly as ``train_ensemble`` would (same config, seeds and stop rule), and the held-out
samples, regenerated from their latents, are segmented like generated samples (``EnsemblePredictor``) and scored
against their annotations. The report lists per-class IoU and mIoU per held-out sample and pooled over all of them
(one confusion matrix over every held-out pixel), in ``<exp_dir>/cross_validation.json`` and ``.md``. Nothing in
``<exp_dir>/models`` is touched.

``eval_masks``: score the masks of a generated folder against a folder of reference masks with the same names
(``000012.png`` or ``000012.npy``), e.g. a person's (or the demo annotator's) labels of some generated images.
"""

import json
import os
import re
import time
from typing import Dict, List, Optional

import numpy as np
import torch

import dnnlib
from interpreter import ensemble
from interpreter import latents as latents_module
from interpreter.train import AnnotatedSet, AnnotationSetError, train_classifier
from segmentation.data import read_mask
from segmentation.metrics import ConfusionMeter, confusion_markdown, markdown_table, scores


def make_folds(n: int, folds: Optional[int] = None, seed: int = 0) -> List[List[int]]:
    """Held-out index lists: leave-one-out for ``folds`` None or >= n, else ``folds`` near-equal random folds."""
    if n < 2:
        raise ValueError(f'cross-validation needs at least 2 annotated samples, got {n}')
    if folds is None or folds >= n:
        return [[i] for i in range(n)]
    if folds < 2:
        raise ValueError(f'folds must be at least 2, got {folds}')
    order = np.random.RandomState(seed).permutation(n)
    return [sorted(int(i) for i in part) for part in np.array_split(order, folds)]


class _TrainingView:
    """The annotated set restricted to some samples, as ``train_classifier`` reads it (masks, store, sizes)."""

    def __init__(self, data, keep):
        self.masks = data.masks[keep]
        self.store = data.store.subset(keep)
        self.num_class, self.out_res = data.num_class, data.out_res

    def __len__(self):
        return len(self.masks)


def _sample_row(name, result):
    return {'sample': name, 'miou': result['miou'],
            'iou': {c['class']: c['iou'] for c in result['per_class']}}


def _write_report(path_stem, title, pooled_matrix, pooled, rows, class_names, extra):
    payload = dict(pooled, confusion_matrix=np.asarray(pooled_matrix).tolist(), classes=class_names, samples=rows,
                   **extra)
    with dnnlib.util.atomic_write(path_stem + '.json', 'w') as f:
        json.dump(payload, f, indent=1)
    table = {'all (pooled)': pooled}
    table.update({r['sample']: r['result'] for r in rows if 'result' in r})
    md = [f'# {title}', '', markdown_table(table, class_names), '',
          'Pooled confusion matrix (rows: truth, columns: prediction, % of each row):', '',
          confusion_markdown(pooled_matrix, class_names), '']
    with dnnlib.util.atomic_write(path_stem + '.md', 'w') as f:
        f.write('\n'.join(md))
    for r in rows:
        r.pop('result', None)
    return payload


def cross_validate(cfg, folds: Optional[int] = None, device=None, stop_rule='original', model_num=None,
                   progress=True, log=print, class_names=None):
    """Train one ensemble per fold and score its held-out annotations; returns the report dict."""
    device = latents_module.pick_device(device)
    G = latents_module.load_generator(cfg.stylegan_checkpoint, key=cfg.generator_key, device=device)
    cfg.check_generator(G, features=True)
    data = AnnotatedSet(cfg, G, device, progress=progress)
    n, k = len(data), data.num_class
    if n < 2:  # the user's annotation set, not a wrong call of make_folds
        raise AnnotationSetError(f'{cfg.annotation_mask_path}: cross-validation needs at least 2 annotated samples, '
                                 f'got {n}')
    parts = make_folds(n, folds, cfg.seed)
    model_num = model_num or cfg.model_num
    names = list(class_names) if class_names else [str(c) for c in range(k)]
    log(f'cross-validation: {n} annotated samples, {len(parts)} folds, {model_num} classifiers per fold')
    pooled = ConfusionMeter(k)
    rows = []
    start = time.time()
    for f, held in enumerate(parts):
        keep = [i for i in range(n) if i not in held]
        view = _TrainingView(data, keep)
        models = [train_classifier(view, cfg, m, device, stop_rule=stop_rule, progress=progress,
                                   log=lambda s: None).to(device) for m in range(model_num)]
        predictor = ensemble.EnsemblePredictor(models, out_res=data.out_res, mode=cfg.upsample_mode)
        for i in held:
            _, _, feats = data.synthesize(G, i)
            labels = predictor([x[0] for x in feats]).labels.cpu()
            truth = torch.from_numpy(data.masks[i])
            meter = ConfusionMeter(k)
            meter.update(truth, labels)
            pooled.update(truth, labels)
            result = scores(meter.matrix, names)
            rows.append(dict(_sample_row(f'image_mask{i}', result), fold=f, result=result))
            miou = '–' if result['miou'] is None else f'{result["miou"]:.3f}'
            log(f'fold {f + 1}/{len(parts)}: held-out image_mask{i}.npy mIoU {miou}')
    result = scores(pooled.matrix, names)
    extra = {'folds': [list(p) for p in parts], 'model_num': model_num, 'stop_rule': stop_rule,
             'seconds': round(time.time() - start, 1)}
    report = _write_report(os.path.join(cfg.exp_dir, 'cross_validation'), 'Mask generator cross-validation',
                           pooled.matrix, result, rows, names, extra)
    log(f'pooled held-out mIoU {result["miou"]:.4f}; report in {cfg.exp_dir}/cross_validation.md')
    return report


# ------------------------------------------------------------------------------------------------ --eval_masks

_MASK_FILE = re.compile(r'^(.+)\.(png|npy)$', re.IGNORECASE)


def _mask_files(folder) -> Dict[str, str]:
    if not os.path.isdir(folder):
        raise AnnotationSetError(f'{folder}: mask folder not found')
    found = {}
    for name in sorted(os.listdir(folder)):
        m = _MASK_FILE.match(name)
        if m:
            found.setdefault(m.group(1), os.path.join(folder, name))
    return found


def eval_masks(generated_dir, reference_dir, num_classes=None, class_names=None, log=print):
    """Score ``<generated_dir>/masks/*`` against the reference masks of the same names; writes
    ``<generated_dir>/mask_evaluation.json`` and ``.md`` and returns the report."""
    masks_dir = os.path.join(generated_dir, 'masks')
    predicted = _mask_files(masks_dir)
    reference = _mask_files(reference_dir)
    if not reference:
        raise AnnotationSetError(f'{reference_dir}: holds no .png or .npy masks')
    pairs = []
    for stem, ref in reference.items():
        if stem not in predicted:
            raise AnnotationSetError(f'{ref}: no generated mask {stem}.png in {masks_dir}')
        truth, pred = read_mask(ref), read_mask(predicted[stem])
        if truth.shape != pred.shape:
            raise AnnotationSetError(f'{ref}: is {truth.shape[1]}x{truth.shape[0]}, but the generated mask '
                                     f'{predicted[stem]} is {pred.shape[1]}x{pred.shape[0]}')
        pairs.append((stem, ref, truth, pred))
    k = num_classes or max(int(max(t.max(), p.max())) for _, _, t, p in pairs) + 1
    k = max(k, 2)
    for stem, ref, truth, pred in pairs:
        for arr, file in ((truth, ref), (pred, predicted[stem])):
            if arr.max() >= k:
                raise AnnotationSetError(f'{file}: holds class {int(arr.max())}, but there are {k} classes')
    names = list(class_names) if class_names else [str(c) for c in range(k)]
    pooled = ConfusionMeter(k)
    rows = []
    for stem, _, truth, pred in pairs:
        meter = ConfusionMeter(k)
        meter.update(torch.from_numpy(truth), torch.from_numpy(pred))
        pooled.update(torch.from_numpy(truth), torch.from_numpy(pred))
        result = scores(meter.matrix, names)
        rows.append(dict(_sample_row(stem, result), result=result))
    result = scores(pooled.matrix, names)
    report = _write_report(os.path.join(generated_dir, 'mask_evaluation'), 'Generated masks against reference masks',
                           pooled.matrix, result, rows, names,
                           {'generated': os.fspath(generated_dir), 'reference': os.fspath(reference_dir)})
    log(f'{len(pairs)} generated masks scored against {reference_dir}: mIoU {result["miou"]:.4f}; report in '
        f'{generated_dir}/mask_evaluation.md')
    return report
