"""Translating the class ids of masks from one numbering into a model's: ``ClassMap``.

Class numbering differs between palettes (the demo renderer: 0 skin, 1 sclera, 2 iris, 3 pupil; ``ocular_4class``:
0 background, 1 iris, 2 pupil, 3 sclera). A class map is a JSON object ``{"<mask id>": <model id> | "ignore", ...}``
(optionally under a ``"map"`` key, with an optional ``"classes"`` list naming the model's classes). Every mask value
that occurs must be mapped; an unmapped one is an error naming the mask file, never a silently wrong label. Used by
the evaluation (truth masks into the model's numbering) and by training (a training set in another numbering).
"""

import json
import os
from typing import Dict, List, Optional

import numpy as np

from segmentation.errors import SegmentationError
from segmentation.metrics import IGNORE_INDEX


class ClassMap:
    """Truth value -> model class id lookup (``IGNORE_INDEX`` for 'ignore')."""

    def __init__(self, mapping: Dict[int, int], source='class map', classes: Optional[List[str]] = None):
        self.mapping = dict(mapping)
        self.source = source
        self.classes = classes
        self.table = np.full(max(list(self.mapping) + [IGNORE_INDEX]) + 1, -1, np.int64)
        for k, v in self.mapping.items():
            self.table[k] = v
        self.table[IGNORE_INDEX] = IGNORE_INDEX  # ignored truth stays ignored

    @classmethod
    def load(cls, path):
        path = os.fspath(path)
        try:
            with open(path) as f:
                obj = json.load(f)
        except FileNotFoundError:
            raise SegmentationError(path, 'class map not found') from None
        except (OSError, ValueError) as e:
            raise SegmentationError(path, f'is not a JSON file ({e})') from None
        if not isinstance(obj, dict):
            raise SegmentationError(path, 'must hold a JSON object {"<truth id>": <model id>, ...}')
        classes = obj.get('classes')
        if 'map' in obj:
            unknown = sorted(set(obj) - {'map', 'classes', 'description'})
            if unknown:
                raise SegmentationError(path, f'unknown key {unknown[0]!r} (allowed: map, classes, description)')
            obj = obj['map']
            if not isinstance(obj, dict):
                raise SegmentationError(path, '"map" must be an object {"<truth id>": <model id>, ...}')
        if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
            raise SegmentationError(path, '"classes" must be a list of class names')
        mapping = {}
        for key, value in obj.items():
            try:
                truth = int(key)
            except ValueError:
                raise SegmentationError(path, f'key {key!r} is not a truth class id') from None
            if not 0 <= truth < IGNORE_INDEX:
                raise SegmentationError(path, f'truth class {truth} is outside 0..{IGNORE_INDEX - 1}')
            if value == 'ignore' or value is None:
                value = IGNORE_INDEX
            elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SegmentationError(path, f'truth class {truth} maps to {value!r}; expected a model class id '
                                              f'or "ignore"')
            mapping[truth] = value
        if not mapping:
            raise SegmentationError(path, 'maps no classes')
        return cls(mapping, source=path, classes=classes)

    def check_model(self, num_classes):
        bad = [(k, v) for k, v in self.mapping.items() if v != IGNORE_INDEX and v >= num_classes]
        if bad:
            raise SegmentationError(self.source, f'maps truth class {bad[0][0]} to {bad[0][1]}, but the model has '
                                                 f'{num_classes} classes (0..{num_classes - 1})')

    def apply(self, mask, file):
        if mask.max() >= len(self.table) or (self.table[mask] < 0).any():
            missing = sorted(int(v) for v in np.unique(mask) if v >= len(self.table) or self.table[v] < 0)
            raise SegmentationError(file, f'holds class {missing[0]}, which the class map {self.source} does not '
                                          f'map')
        return self.table[mask]
