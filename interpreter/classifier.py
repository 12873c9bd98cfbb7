"""The pixel classifier of DatasetGAN / BiOcularGAN: a small MLP from one pixel's feature vector to class logits.

Layout (``layers`` is an ``nn.Sequential``, indices 0..6), as in the originals:

* fewer than 32 classes: ``Linear(dim, 128) - ReLU - BatchNorm1d(128) - Linear(128, 32) - ReLU - BatchNorm1d(32) -
  Linear(32, numpy_class)``;
* 32 classes or more: ``Linear(dim, 256) - ReLU - BatchNorm1d(256) - Linear(256, 128) - ReLU - BatchNorm1d(128) -
  Linear(128, numpy_class)``.

Checkpoints are ``{'model_state_dict': {'module.layers.0.weight': ..., ...}}``: the originals saved the model
wrapped in ``nn.DataParallel``, hence the ``module.`` prefix, which ``save_classifier`` writes too so that the
originals' scripts read this project's checkpoints. ``load_classifier`` reads both prefixed and plain keys, only
through ``torch.load(weights_only=True)`` (no code in a checkpoint is ever run), and raises
``training.legacy.CheckpointError`` with a one-line message naming the file for anything it cannot use.
"""

import os
from typing import List, Optional

import torch
import torch.nn as nn

import dnnlib
from training.legacy import CheckpointError

_LINEAR_INDICES = (0, 3, 6)
_BATCHNORM_INDICES = (2, 5)


def _hidden_sizes(numpy_class: int):
    return (128, 32) if numpy_class < 32 else (256, 128)


class PixelClassifier(nn.Module):
    """MLP over per-pixel features; ``forward(x)`` maps ``[N, dim]`` to logits ``[N, numpy_class]``.

    As in the originals the constructor leaves PyTorch's default initialisation; call ``init_weights()`` before
    training (the originals did).
    """

    def __init__(self, numpy_class: int, dim: int):
        super().__init__()
        if isinstance(numpy_class, bool) or not isinstance(numpy_class, int) or numpy_class < 1:
            raise ValueError(f'numpy_class must be a positive integer, got {numpy_class!r}')
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f'dim must be a positive integer, got {dim!r}')
        self.numpy_class = numpy_class
        self.dim = dim
        h1, h2 = _hidden_sizes(numpy_class)
        self.layers = nn.Sequential(
            nn.Linear(dim, h1),
            nn.ReLU(),
            nn.BatchNorm1d(num_features=h1),
            nn.Linear(h1, h2),
            nn.ReLU(),
            nn.BatchNorm1d(num_features=h2),
            nn.Linear(h2, numpy_class),
        )

    def init_weights(self, init_type: str = 'normal', gain: float = 0.02,
                     generator: Optional[torch.Generator] = None) -> None:
        """Re-initialise every Linear layer: weights by ``init_type``, biases 0.

        ``normal``: N(0, gain); ``xavier``: Xavier-normal with ``gain``; ``kaiming``: Kaiming-normal (fan_in, a=0);
        ``orthogonal``: orthogonal with ``gain``. The originals' BatchNorm rule only matched ``BatchNorm2d``, so the
        BatchNorm1d layers keep PyTorch's defaults (weight 1, bias 0); so do they here.
        """
        for module in self.modules():
            if not isinstance(module, nn.Linear):
                continue
            if init_type == 'normal':
                nn.init.normal_(module.weight, 0.0, gain, generator=generator)
            elif init_type == 'xavier':
                nn.init.xavier_normal_(module.weight, gain=gain, generator=generator)
            elif init_type == 'kaiming':
                nn.init.kaiming_normal_(module.weight, a=0, mode='fan_in', generator=generator)
            elif init_type == 'orthogonal':
                nn.init.orthogonal_(module.weight, gain=gain, generator=generator)
            else:
                raise ValueError(f"init_type must be 'normal', 'xavier', 'kaiming' or 'orthogonal', got {init_type!r}")
            if module.bias is not None:
                nn.init.constant_(module.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def extra_repr(self) -> str:
        return f'numpy_class={self.numpy_class}, dim={self.dim}'


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else model


def save_classifier(path, model: nn.Module) -> None:
    """Write ``{'model_state_dict': {'module.layers.*': cpu tensors}}`` atomically (readable by the originals)."""
    model = _unwrap(model)
    state = {f'module.{k}': v.detach().to('cpu').clone() for k, v in model.state_dict().items()}
    with dnnlib.util.atomic_write(path, 'wb') as f:
        torch.save({'model_state_dict': state}, f)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_state_dict(path: str):
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f'{path}: file not found') from None
    except IsADirectoryError:
        raise CheckpointError(f'{path}: is a folder, not a checkpoint') from None
    except Exception as exc:  # torch raises many types for corrupt or non-weights files
        raise CheckpointError(f'{path}: not a readable classifier checkpoint ({type(exc).__name__}: '
                              f'{_first_line(exc)})') from None
    if isinstance(obj, dict) and 'model_state_dict' in obj:
        obj = obj['model_state_dict']
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f'{path}: expected {{"model_state_dict": {{"module.layers.*": tensors}}}}')
    state = {}
    for key, value in obj.items():
        name = key[len('module.'):] if key.startswith('module.') else key
        if not name.startswith('layers.'):
            raise CheckpointError(f'{path}: unexpected entry {key!r}; a pixel classifier has only layers.* tensors')
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f'{path}: {key} is a {type(value).__name__}, not a tensor')
        if name in state:
            raise CheckpointError(f'{path}: {name} appears twice (with and without the module. prefix)')
        state[name] = value
    return state


def load_classifier(path, numpy_class: Optional[int] = None, dim: Optional[int] = None,
                    device='cpu') -> PixelClassifier:
    """Load a DatasetGAN / BiOcularGAN / this project's pixel-classifier checkpoint, in eval mode on ``device``.

    ``numpy_class`` and ``dim`` are inferred from the tensor shapes when not given, and checked when given.
    """
    path = os.fspath(path)
    state = _read_state_dict(path)
    for key in ('layers.0.weight', 'layers.6.weight'):
        if key not in state or state[key].ndim != 2:
            raise CheckpointError(f'{path}: {key} missing or not a matrix; not a pixel-classifier checkpoint')
    found_dim = int(state['layers.0.weight'].shape[1])
    found_class = int(state['layers.6.weight'].shape[0])
    if dim is not None and dim != found_dim:
        raise CheckpointError(f'{path}: the classifier takes {found_dim} features, but {dim} were expected (dim[2])')
    if numpy_class is not None and numpy_class != found_class:
        raise CheckpointError(f'{path}: the classifier has {found_class} classes, but {numpy_class} were expected '
                              f'(number_class)')
    h1 = int(state['layers.0.weight'].shape[0])
    expected_h1 = _hidden_sizes(found_class)[0]
    if h1 != expected_h1:
        raise CheckpointError(f'{path}: layers.0.weight has {h1} rows, but a {found_class}-class classifier has '
                              f'{expected_h1}')
    model = PixelClassifier(found_class, found_dim)
    for idx in _BATCHNORM_INDICES:  # very old checkpoints may lack the BatchNorm step counter
        state.setdefault(f'layers.{idx}.num_batches_tracked', torch.tensor(0, dtype=torch.long))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0] if lines else 'state dict mismatch'
        raise CheckpointError(f'{path}: does not fit a {found_class}-class, {found_dim}-feature pixel classifier '
                              f'({detail})') from None
    return model.to(device).eval()


def load_ensemble(exp_dir, model_num: int, numpy_class: Optional[int] = None, dim: Optional[int] = None,
                  device='cpu') -> List[PixelClassifier]:
    """Load ``<exp_dir>/models/model_{k}.pth`` for k = 0 .. model_num-1; all must agree in classes and features."""
    if isinstance(model_num, bool) or not isinstance(model_num, int) or model_num < 1:
        raise ValueError(f'model_num must be a positive integer, got {model_num!r}')
    paths = [os.path.join(os.fspath(exp_dir), 'models', f'model_{k}.pth') for k in range(model_num)]
    for path in paths:  # report a missing member before loading any
        if not os.path.isfile(path):
            raise CheckpointError(f'{path}: file not found (model_num is {model_num})')
    models = []
    for path in paths:
        model = load_classifier(path, numpy_class=numpy_class, dim=dim, device=device)
        numpy_class, dim = model.numpy_class, model.dim  # later members must match the first
        models.append(model)
    return models
