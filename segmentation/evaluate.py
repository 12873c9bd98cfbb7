"""Scoring a segmenter checkpoint (or a folder of predicted masks) against an annotated set, with class remapping.

Class numbering differs between palettes (the demo renderer: 0 skin, 1 sclera, 2 iris, 3 pupil; ``ocular_4class``:
0 background, 1 iris, 2 pupil, 3 sclera). A ``ClassMap`` translates the *truth* masks into the model's numbering:
a JSON object ``{"<truth id>": <model id> | "ignore", ...}`` (optionally under a ``"map"`` key, with an optional
``"classes"`` list naming the model's classes). Every truth value that occurs must be mapped; an unmapped one is an
error naming the mask file, never a silently wrong score.
"""

import json
import os

import numpy as np
import torch

import dnnlib
from segmentation import data as seg_data
from segmentation.classmap import ClassMap
from segmentation.metrics import ConfusionMeter, confusion_markdown, markdown_table, scores
from segmentation.plots import evaluation_grid
from segmentation.train import SegmentationError, check_labels, model_from_checkpoint, predict


def check_class_names(model_names, data_names, data_path, class_map):
    """Names recorded with the model and the data must agree unless the user mapped the classes explicitly."""
    if class_map is not None or not model_names or not data_names:
        return
    if list(model_names) != list(data_names):
        raise SegmentationError(os.path.join(data_path, 'classes.json'),
                                f'names the classes {data_names}, but the model was trained on {list(model_names)}; '
                                f'pass --class_map to say how they correspond')


def write_report(outdir, name, matrix, result, class_names, grid=None, extra=None):
    """``<name>.json`` (scores, confusion matrix, ``extra``), ``<name>.md`` and ``<name>.png`` (the grid)."""
    os.makedirs(outdir, exist_ok=True)
    payload = dict(result, confusion_matrix=np.asarray(matrix).tolist(), classes=list(class_names), **(extra or {}))
    with dnnlib.util.atomic_write(os.path.join(outdir, f'{name}.json'), 'w') as f:
        json.dump(payload, f, indent=1)
    md = [f'# {name}', '', markdown_table({name: result}, list(class_names)), '',
          'Confusion matrix (rows: truth, columns: prediction, % of each row):', '',
          confusion_markdown(matrix, class_names), '']
    with dnnlib.util.atomic_write(os.path.join(outdir, f'{name}.md'), 'w') as f:
        f.write('\n'.join(md))
    if grid is not None:
        with dnnlib.util.atomic_write(os.path.join(outdir, f'{name}.png'), 'wb') as f:
            grid.save(f, format='png')
    return payload


def _input_views(image, modality):
    """uint8 [C, H, W] -> the arrays to show: RGB and/or NIR."""
    views = []
    if modality in ('rgb', 'rgbnir'):
        views.append(image[:3].transpose(1, 2, 0))
    if modality in ('nir', 'rgbnir'):
        views.append(image[-1])
    return views


def evaluate_checkpoint(checkpoint, data, outdir=None, class_map=None, device=None, batch=16, grid_rows=8,
                        name='evaluation', expect_input=None, expect_arch=None, progress=False):
    """Score ``checkpoint`` on the annotated paired set ``data``; returns the report dict (and writes it to
    ``outdir`` when given). ``expect_input``/``expect_arch``: what the caller thinks the checkpoint is."""
    device = torch.device(device) if device else torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    model, ckpt = model_from_checkpoint(checkpoint, device)
    cfg = ckpt['model_config']
    modality = ckpt['input']
    if expect_arch is not None and cfg['arch'] != expect_arch:
        raise SegmentationError(checkpoint, f'holds a {cfg["arch"]} model, not {expect_arch}')
    if expect_input is not None and modality != expect_input:
        raise SegmentationError(checkpoint, f'was trained on {modality} input ({cfg["in_channels"]} channels), '
                                            f'not {expect_input} ({seg_data.INPUTS[expect_input]})')
    k = cfg['num_classes']
    names = list(ckpt.get('class_names') or [str(i) for i in range(k)])
    if isinstance(class_map, (str, os.PathLike)):
        class_map = ClassMap.load(class_map)
    if class_map is not None:
        class_map.check_model(k)
        if class_map.classes is not None and ckpt.get('class_names') and list(class_map.classes) != names:
            raise SegmentationError(class_map.source, f'maps into the classes {class_map.classes}, but the model '
                                                      f'was trained on {names}')
    dataset = seg_data.SegmentationSet(data, modality, class_map=class_map, progress=progress)
    check_class_names(names, dataset.class_names, dataset.path, class_map)
    check_labels(dataset, k, hint='; pass --class_map to map it')
    meter = ConfusionMeter(k)
    rows = []
    for i in range(0, len(dataset), batch):
        items = [dataset[j] for j in range(i, min(i + batch, len(dataset)))]
        images = torch.stack([it[0] for it in items])
        truth = torch.stack([it[1] for it in items])
        pred = predict(model, images, device, batch=batch)
        meter.update(truth, pred)
        for j in range(len(items)):
            if len(rows) < grid_rows:
                rows.append({'images': _input_views(images[j].numpy(), modality), 'truth': truth[j].numpy(),
                             'pred': pred[j].numpy(), 'name': dataset.names[i + j]})
    result = scores(meter.matrix, names)
    extra = {'checkpoint': os.fspath(checkpoint), 'data': os.fspath(data), 'samples': len(dataset),
             'input': modality, 'arch': cfg['arch'],
             'class_map': None if class_map is None else {str(a): b for a, b in class_map.mapping.items()}}
    if outdir is None:
        return dict(result, confusion_matrix=meter.matrix.tolist(), classes=names, **extra)
    grid = evaluation_grid(rows) if rows else None
    return write_report(outdir, name, meter.matrix, result, names, grid=grid, extra=extra)
