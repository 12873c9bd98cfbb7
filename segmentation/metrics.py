"""Segmentation scores from a confusion matrix: per-class IoU and F1, mean IoU, pixel accuracy.

``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``. A class that is absent from the truth *and*
never predicted has no defined IoU/F1: it scores ``None`` and is left out of the means (the usual convention; scoring
it 1 or 0 would move mIoU by an arbitrary amount). A class absent from the truth but predicted scores 0. Pixels whose
truth is ``IGNORE_INDEX`` are not counted at all.
"""

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

IGNORE_INDEX = 255


def confusion_matrix(truth, pred, num_classes, ignore_index=IGNORE_INDEX):
    """int64 ``[num_classes, num_classes]`` tensor from integer tensors of any equal shape."""
    truth = torch.as_tensor(truth).reshape(-1).long()
    pred = torch.as_tensor(pred).reshape(-1).long().to(truth.device)
    if truth.shape != pred.shape:
        raise ValueError(f'truth has {truth.numel()} pixels but the prediction {pred.numel()}')
    keep = truth != ignore_index
    truth, pred = truth[keep], pred[keep]
    for name, t in (('truth', truth), ('prediction', pred)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f'{name} holds class {int(t.max()) if int(t.max()) >= num_classes else int(t.min())}, '
                             f'outside 0..{num_classes - 1}')
    flat = torch.bincount(truth * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


class ConfusionMeter:
    """Accumulates a confusion matrix over batches (on the batch's device, read back once)."""

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = None

    def update(self, truth, pred):
        m = confusion_matrix(truth, pred, self.num_classes, self.ignore_index)
        self._matrix = m if self._matrix is None else self._matrix + m.to(self._matrix.device)

    @property
    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            return np.zeros((self.num_classes, self.num_classes), np.int64)
        return self._matrix.cpu().numpy().astype(np.int64)


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def scores(matrix, class_names: Optional[Sequence[str]] = None) -> Dict:
    """Per-class and mean scores of a confusion matrix, as a JSON-ready dict."""
    m = np.asarray(matrix, dtype=np.float64)
    k = m.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f'{len(names)} class names for a {k}-class confusion matrix')
    tp = np.diag(m)
    truth = m.sum(axis=1)
    pred = m.sum(axis=0)
    per_class = []
    for c in range(k):
        union = truth[c] + pred[c] - tp[c]
        defined = union > 0
        per_class.append({
            'class': names[c], 'id': c,
            'iou': float(tp[c] / union) if defined else None,
            'f1': float(2 * tp[c] / (truth[c] + pred[c])) if defined else None,
            'pixels': int(truth[c]), 'predicted': int(pred[c]),
        })
    total = m.sum()
    return {
        'miou': _mean([c['iou'] for c in per_class]),
        'mean_f1': _mean([c['f1'] for c in per_class]),
        'pixel_accuracy': float(tp.sum() / total) if total else None,
        'pixels': int(total),
        'per_class': per_class,
    }


def _fmt(v):
    return '–' if v is None else f'{v:.3f}'


def markdown_table(results: Dict[str, Dict], classes: List[str]) -> str:
    """One row per named result (``scores`` dicts): mIoU, per-class IoU, mean F1, pixel accuracy."""
    head = ['', 'mIoU'] + [f'IoU {c}' for c in classes] + ['mean F1', 'pixel acc.']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, s in results.items():
        by_name = {c['class']: c['iou'] for c in s['per_class']}
        row = [name, _fmt(s['miou'])] + [_fmt(by_name.get(c)) for c in classes] + [_fmt(s['mean_f1']),
                                                                                  _fmt(s['pixel_accuracy'])]
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def confusion_markdown(matrix, class_names: Sequence[str]) -> str:
    """The confusion matrix as a Markdown table, rows = truth, columns = prediction, in percent of each row."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    pct = np.divide(m * 100, rows, out=np.zeros_like(m), where=rows > 0)
    lines = ['| truth \\ predicted | ' + ' | '.join(class_names) + ' |', '|' + '---|' * (len(class_names) + 1)]
    for c, name in enumerate(class_names):
        lines.append(f'| {name} | ' + ' | '.join(f'{v:.1f}%' for v in pct[c]) + ' |')
    return '\n'.join(lines)
