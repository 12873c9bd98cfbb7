"""Assorted torch helpers used by the networks, the training loop and the tools.

Names and semantics follow StyleGAN2-ADA's `torch_utils.misc` where they exist there, because network code and the
training loop (and user code written against upstream) call them.
"""

import contextlib
import functools
import re
import warnings
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------------------------
# Devices


class DeviceError(RuntimeError, ValueError):
    """A device string that is unknown or not present on this machine (a ValueError for input validation, a
    RuntimeError as torch raises for unknown device strings)."""


def get_device(device=None) -> torch.device:
    """The device to compute on: the user's choice if given, else 'cuda' when available, else 'cpu'.

    A plain 'cuda' (no index) means the current CUDA device, which each training process selects with
    torch.cuda.set_device(), so nothing here pins work to a particular GPU. Raises ``DeviceError`` for an unknown
    device string or a CUDA device this machine does not have.
    """
    if device is None or device == '':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(f'unknown device {device!r} ({exc})') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise DeviceError(f"Device {str(device)!r} was requested but CUDA is not available; use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f'Device {str(device)!r} was requested but only {torch.cuda.device_count()} CUDA '
                              'device(s) are visible')
    return device


# ---------------------------------------------------------------------------------------------------------------------
# Cached constants

_constant_cache = dict()


def constant(value, shape=None, dtype=None, device=None, memory_format=None) -> torch.Tensor:
    """A constant tensor built once per (value, shape, dtype, device, memory format) and then reused.

    Networks call this in forward() for filters and small tables; caching avoids re-uploading them every call.
    `shape` broadcasts the value. The returned tensor is shared: never modify it in place.
    """
    value = np.asarray(value)
    if shape is not None:
        shape = tuple(shape)
    if dtype is None:
        dtype = torch.get_default_dtype()
    device = torch.device('cpu') if device is None else torch.device(device)
    if memory_format is None:
        memory_format = torch.contiguous_format
    key = (value.shape, value.dtype, value.tobytes(), shape, dtype, device, memory_format)
    tensor = _constant_cache.get(key)
    if tensor is None:
        tensor = torch.as_tensor(value.copy(), dtype=dtype, device=device)
        if shape is not None:
            tensor = tensor.expand(shape)
        tensor = tensor.contiguous(memory_format=memory_format)
        _constant_cache[key] = tensor
    return tensor


# ---------------------------------------------------------------------------------------------------------------------
# Numerics and shape checks


def nan_to_num(input, nan=0.0, posinf=None, neginf=None, *, out=None) -> torch.Tensor:  # noqa: A002 (torch's name)
    """Replace NaN/inf with finite numbers (torch.nan_to_num; kept as a name because upstream code calls it)."""
    return torch.nan_to_num(input, nan=nan, posinf=posinf, neginf=neginf, out=out)


class suppress_tracer_warnings(warnings.catch_warnings):  # noqa: N801 (upstream's name, used as a context manager)
    """Silence torch.jit.TracerWarning inside the block: shape checks on traced tensors are intended there."""

    def __enter__(self):
        result = super().__enter__()
        warnings.simplefilter('ignore', category=torch.jit.TracerWarning)
        return result


def _shape_str(shape) -> str:
    return '[' + ', '.join('?' if s is None else str(int(s)) for s in shape) + ']'


def assert_shape(tensor: torch.Tensor, ref_shape: Sequence) -> None:
    """Raise AssertionError unless `tensor.shape` matches `ref_shape` (None entries match any size).

    Reference sizes may be ints or 0-d tensors (the latter keep the check inside a traced graph).
    """
    actual = tuple(tensor.shape)
    if tensor.ndim != len(ref_shape):
        with suppress_tracer_warnings():
            raise AssertionError(f'Wrong number of dimensions: got {tensor.ndim} (shape {_shape_str(actual)}), '
                                 f'expected {len(ref_shape)} (shape {_shape_str(ref_shape)})')
    for idx, (size, ref_size) in enumerate(zip(actual, ref_shape)):
        if ref_size is None:
            continue
        if isinstance(ref_size, torch.Tensor) or isinstance(size, torch.Tensor):
            with suppress_tracer_warnings():  # Comparing traced sizes is intended here.
                ok = torch.equal(torch.as_tensor(size), torch.as_tensor(ref_size))
        else:
            ok = size == ref_size
        if not ok:
            with suppress_tracer_warnings():
                raise AssertionError(f'Wrong size for dimension {idx}: got {int(size)}, expected {int(ref_size)} '
                                     f'(shape {_shape_str(actual)}, expected {_shape_str(ref_shape)})')


def profiled_function(fn):
    """Decorator: run `fn` inside a profiler range named after it (shows up in torch.profiler traces). Without a
    profiler running the range is skipped: it costs several microseconds, on every layer of every call."""

    @functools.wraps(fn)
    def decorator(*args, **kwargs):
        if not torch.autograd._profiler_enabled():
            return fn(*args, **kwargs)
        with torch.autograd.profiler.record_function(fn.__name__):
            return fn(*args, **kwargs)

    return decorator


# ---------------------------------------------------------------------------------------------------------------------
# Sampler


class InfiniteSampler(torch.utils.data.Sampler):
    """Endless index stream over a dataset, split between replicas; upstream's sequence exactly.

    With shuffle, the order is a seeded permutation that is then perturbed as it is consumed: after visiting slot i,
    slot i swaps with a random slot up to `window` places behind it, so consecutive passes differ while every element
    keeps being visited about once per pass. Every replica runs the same sequence and takes every
    `num_replicas`-th element starting at `rank`, so the replicas together see exactly the single-process stream.
    """

    def __init__(self, dataset, rank: int = 0, num_replicas: int = 1, shuffle: bool = True, seed: int = 0,
                 window_size: float = 0.5):
        if len(dataset) <= 0:
            raise ValueError('InfiniteSampler needs a non-empty dataset')
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f'Invalid rank {rank} for {num_replicas} replicas')
        if not 0 <= window_size <= 1:
            raise ValueError(f'window_size must be in [0, 1], got {window_size}')
        super().__init__()
        self.dataset = dataset
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = seed
        self.window_size = window_size

    def __iter__(self) -> Iterator[int]:
        order = np.arange(len(self.dataset))
        rnd = None
        window = 0
        if self.shuffle:
            rnd = np.random.RandomState(self.seed)
            rnd.shuffle(order)
            window = int(np.rint(order.size * self.window_size))

        idx = 0
        while True:
            i = idx % order.size
            if idx % self.num_replicas == self.rank:
                yield int(order[i])
            if window >= 2:
                j = (i - rnd.randint(window)) % order.size
                order[i], order[j] = order[j], order[i]
            idx += 1


# ---------------------------------------------------------------------------------------------------------------------
# Parameters and buffers


def params_and_buffers(module: torch.nn.Module) -> List[torch.Tensor]:
    """All parameters, then all buffers."""
    assert isinstance(module, torch.nn.Module)
    return list(module.parameters()) + list(module.buffers())


def named_params_and_buffers(module: torch.nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """(name, tensor) for all parameters, then all buffers; names as in state_dict()."""
    assert isinstance(module, torch.nn.Module)
    return list(module.named_parameters()) + list(module.named_buffers())


def copy_params_and_buffers(src_module: torch.nn.Module, dst_module: torch.nn.Module,
                            require_all: bool = False) -> None:
    """Copy every parameter/buffer of `dst_module` that has a same-named tensor in `src_module`.

    Used to resume and to transfer-learn: names missing from the source (e.g. a freshly added NIR head) keep their
    initial values unless `require_all` is set, in which case a missing source raises KeyError. dst keeps its own
    requires_grad flags, dtype and device. A shape mismatch raises ValueError (copy_ would otherwise broadcast it).
    """
    assert isinstance(src_module, torch.nn.Module)
    assert isinstance(dst_module, torch.nn.Module)
    src_tensors = dict(named_params_and_buffers(src_module))
    missing = []
    with torch.no_grad():
        for name, tensor in named_params_and_buffers(dst_module):
            src = src_tensors.get(name)
            if src is None:
                missing.append(name)
                continue
            if src.shape != tensor.shape:
                raise ValueError(f'Cannot copy {name!r}: source shape {list(src.shape)} differs from destination '
                                 f'shape {list(tensor.shape)}')
            tensor.copy_(src.detach())
    if require_all and missing:
        shown = ', '.join(missing[:10]) + (f' ... ({len(missing)} in all)' if len(missing) > 10 else '')
        raise KeyError(f'Source module {type(src_module).__name__} has no tensor for: {shown}')


# ---------------------------------------------------------------------------------------------------------------------
# Distributed helpers


@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool):
    """Skip DDP's gradient all-reduce inside the block when `sync` is False (gradient accumulation rounds)."""
    assert isinstance(module, torch.nn.Module)
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield


def check_ddp_consistency(module: torch.nn.Module, ignore_regex: Optional[str] = None) -> None:
    """Assert that every parameter/buffer equals rank 0's copy (no-op unless torch.distributed is initialised).

    Names are prefixed with the module's class name (e.g. 'Generator.mapping.w_avg') for `ignore_regex` (full match)
    and for the error message. NaNs compare equal to NaNs.
    """
    assert isinstance(module, torch.nn.Module)
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    for name, tensor in named_params_and_buffers(module):
        fullname = type(module).__name__ + '.' + name
        if ignore_regex is not None and re.fullmatch(ignore_regex, fullname):
            continue
        tensor = tensor.detach()
        if tensor.is_floating_point():
            tensor = nan_to_num(tensor)
        other = tensor.clone()
        torch.distributed.broadcast(tensor=other, src=0)
        if not torch.equal(tensor, other):
            raise AssertionError(f"{fullname} differs from rank 0's copy (rank {torch.distributed.get_rank()})")


# ---------------------------------------------------------------------------------------------------------------------
# Module summary


def print_module_summary(module: torch.nn.Module, inputs, max_nesting: int = 3, skip_redundant: bool = True):
    """Run `module(*inputs)` once and print a table of submodules: parameters, buffers, output shapes, dtypes.

    Each tensor is counted once, at the first (innermost) submodule that owns it, so the totals are the real counts.
    Submodules deeper than `max_nesting` are folded into their ancestors; with `skip_redundant`, rows that add no
    new parameter, buffer or output are dropped. Returns the module's outputs.
    """
    assert isinstance(module, torch.nn.Module)
    assert not isinstance(module, torch.jit.ScriptModule)
    assert isinstance(inputs, (tuple, list))

    entries = []  # (submodule, list of output tensors), in order of forward completion (children before parents).
    depth = [0]

    def pre_hook(_mod, _inputs):
        depth[0] += 1

    def post_hook(mod, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:  # 0 = the module itself, so max_nesting levels below it are listed.
            outs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
            entries.append((mod, [t for t in outs if isinstance(t, torch.Tensor)]))

    handles = []
    for mod in module.modules():
        handles.append(mod.register_forward_pre_hook(pre_hook))
        handles.append(mod.register_forward_hook(post_hook))
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    names = {mod: name for name, mod in module.named_modules()}
    seen = set()
    rows = [[type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype']]
    rows.append(['---'] * len(rows[0]))
    param_total = 0
    buffer_total = 0
    for mod, outs in entries:
        params = [t for t in mod.parameters() if id(t) not in seen]
        buffers = [t for t in mod.buffers() if id(t) not in seen]
        outs = [t for t in outs if id(t) not in seen]
        seen.update(id(t) for t in params + buffers + outs)
        if skip_redundant and not (params or buffers or outs):
            continue
        num_params = sum(t.numel() for t in params)
        num_buffers = sum(t.numel() for t in buffers)
        param_total += num_params
        buffer_total += num_buffers
        name = '<top-level>' if mod is module else names.get(mod, type(mod).__name__)
        out_names = [name + (f':{i}' if len(outs) >= 2 else '') for i in range(len(outs))] or [name]
        shapes = [str(list(t.shape)) for t in outs] or ['-']
        dtypes = [str(t.dtype).split('.')[-1] for t in outs] or ['-']
        rows.append([out_names[0], str(num_params) if num_params else '-', str(num_buffers) if num_buffers else '-',
                     shapes[0], dtypes[0]])
        for i in range(1, len(outs)):
            rows.append([out_names[i], '-', '-', shapes[i], dtypes[i]])
    rows.append(['---'] * len(rows[0]))
    rows.append(['Total', str(param_total), str(buffer_total), '-', '-'])

    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]
    print()
    for row in rows:
        print('  '.join(cell + ' ' * (width - len(cell)) for cell, width in zip(row, widths)).rstrip())
    print()
    return outputs
