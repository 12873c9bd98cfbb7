"""Load and save ArcFace backbone weights safely.

Checkpoints are read with ``weights_only=True`` only, so a downloaded file can never run code; anything that does not
fit the chosen architecture is reported as one line naming the file, instead of a multi-page PyTorch traceback.
"""

import os
import pickle

import torch
from torch import nn

import dnnlib
from apf.backbones import ARCHITECTURES, get_model

__all__ = ['ApfError', 'load_backbone', 'save_backbone']

# Where training checkpoints (not plain state dicts) keep the backbone weights; insightface uses the last one.
_WRAPPER_KEYS = ('state_dict', 'model', 'backbone', 'model_state_dict', 'state_dict_backbone')
_MAX_LISTED = 3


class ApfError(dnnlib.util.FileError):
    """A backbone file (or the requested architecture) is unusable; ``str(e)`` is one line."""


def _first_line(text: str, limit: int = 200) -> str:
    line = (str(text).strip().splitlines() or [''])[0]
    return line if len(line) <= limit else line[:limit - 3] + '...'


def _describe_load_error(e: Exception) -> str:
    """One line for a failed ``torch.load(weights_only=True)``: refused code, or a damaged / foreign file."""
    text = str(e)
    # The weights-only unpickler wraps its reason in several paragraphs of advice; keep only the reason.
    _, marker, rest = text.partition('WeightsUnpickler error:')
    reason = next((ln.strip() for ln in rest.splitlines() if ln.strip()), '?') if marker else None
    if isinstance(e, pickle.UnpicklingError) and reason is not None:
        # 'Unsupported global: GLOBAL mod.Name was not ...' (torch >= 2.5) or 'Unsupported class mod.Name' (older).
        if reason.startswith(('Unsupported global', 'Unsupported class')):
            name = reason.split(' ', 2)[-1].lstrip(': ').split(' was ', 1)[0].strip()
            return (f'holds pickled objects that need code to load ({name}); refusing, only plain tensors and '
                    f'containers are read (weights_only=True)')
        return f'cannot read as a PyTorch checkpoint (corrupt?): {_first_line(reason)}'
    return f'cannot read as a PyTorch checkpoint (corrupt?): {type(e).__name__}: {_first_line(text)}'


def _listing(names) -> str:
    names = list(names)
    shown = ', '.join(names[:_MAX_LISTED])
    return shown + (', ...' if len(names) > _MAX_LISTED else '')


def _is_tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _extract_state_dict(obj, path: str) -> dict:
    """Find the backbone's tensors in a plain state dict or in a training checkpoint that wraps one."""
    if not isinstance(obj, dict):
        raise ApfError(path, f'not a state dict (the file holds a {type(obj).__name__})')
    if _is_tensor_dict(obj):
        state = obj
    else:
        state = next((obj[k] for k in _WRAPPER_KEYS if _is_tensor_dict(obj.get(k))), None)
        if state is None:
            keys = _listing(repr(k) for k in obj)
            raise ApfError(path, f'holds no state dict of tensors (top-level keys: {keys or "none"}; looked for a '
                                 f'plain state dict or one under {", ".join(_WRAPPER_KEYS)})')
    # DataParallel / DistributedDataParallel save every key under 'module.'.
    return {(k[len('module.'):] if k.startswith('module.') else k): v for k, v in state.items()}


def _check_fit(state: dict, model: nn.Module, path: str, arch: str) -> dict:
    """Compare names and shapes with the model; return the state dict completed with any absent BN step counters."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; it has no effect in eval mode.
    counters = [k for k in missing if k.endswith('.num_batches_tracked')]
    missing = [k for k in missing if not k.endswith('.num_batches_tracked')]
    unexpected = [k for k in state if k not in expected]
    hint = f'is the architecture (--arch {arch}) right?'
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys ({_listing(missing)})')
        if unexpected:
            parts.append(f'{len(unexpected)} unexpected keys ({_listing(unexpected)})')
        raise ApfError(path, f'does not fit {arch}: {", ".join(parts)}; {hint}')
    wrong = [(k, tuple(v.shape), tuple(expected[k].shape)) for k, v in state.items() if v.shape != expected[k].shape]
    if wrong:
        shown = ', '.join(f'{k}: file {list(a)} vs model {list(b)}' for k, a, b in wrong[:_MAX_LISTED])
        more = ', ...' if len(wrong) > _MAX_LISTED else ''
        raise ApfError(path, f'does not fit {arch}: {len(wrong)} shape mismatches ({shown}{more}); '
                             f'{hint} (or a different embedding size)')
    if counters:
        state = dict(state)
        for k in counters:
            state[k] = expected[k]
    return state


def load_backbone(path, arch: str = 'r100', device='cpu', fp16: bool = False, *, num_features: int = 512) -> nn.Module:
    """Build `arch` and load the weights in `path` strictly; the model is frozen and in eval mode.

    Raises ApfError (one line naming the file) when the file is missing, unreadable, needs code to unpickle, or does
    not fit the architecture.
    """
    if arch not in ARCHITECTURES:
        raise ApfError(f'unknown backbone architecture {arch!r}; known: {", ".join(ARCHITECTURES)}')
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ApfError(path, 'ArcFace weights file not found (an arcface_torch backbone.pth, e.g. '
                             'ArcFace_r100_ms1mv3_backbone.pth)')
    if not os.path.isfile(path):
        raise ApfError(path, 'not a file')
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, IndexError...).
        raise ApfError(path, _describe_load_error(e)) from None

    state = _extract_state_dict(obj, path)
    model = get_model(arch, fp16=fp16, num_features=num_features)
    state = _check_fit(state, model, path, arch)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    model.requires_grad_(False)
    return model


def save_backbone(model: nn.Module, path) -> None:
    """Write the plain (CPU) state dict atomically, so that a crash never leaves a truncated weights file."""
    if isinstance(getattr(model, 'module', None), nn.Module):  # Unwrap DataParallel / DDP.
        model = model.module
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with dnnlib.util.atomic_write(path, 'wb') as f:
        torch.save(state, f)
