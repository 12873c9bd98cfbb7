"""Loading and converting network pickles without ever running code from them.

``load_network_pkl(f)`` reads this project's snapshots, official StyleGAN2-ADA pickles and BiOcularGAN / BiFaceGAN
pickles and returns ``{'G', 'D', 'G_ema', 'D_NIR', 'augment_pipe', 'training_set_kwargs'}`` with modules of this
project. The unpickler only admits the globals such files legitimately use (tensor rebuilding, containers, numpy
scalars, EasyDict and the two persistence hooks); anything else is refused with a one-line error. The source code
that upstream pickles embed is never executed. Single-branch pickles get a freshly initialised NIR head and D_NIR.

Command line: ``python -m training.legacy --source in.pkl --dest out.pkl`` rewrites any of these as a snapshot of
this project.
"""

import collections
import io
import os
import pickle
import sys
import warnings

import click
import numpy as np
import torch

import dnnlib
from torch_utils import persistence
from training import networks


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded; the message names the file and the problem in one line."""


def _load_storage_bytes(data):
    # torch's own helper calls torch.load(weights_only=False) on each storage: use the restricted loader instead.
    return torch.load(io.BytesIO(data), weights_only=True)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, type(None))):
        raise CheckpointError('refusing a numpy scalar of an object dtype')
    return np.frombuffer(data, dtype=dtype)[0] if data is not None else dtype.type()


def _reconstruct_upstream(meta):
    # This module's converter, whatever a plain pickle.load would find registered.
    return persistence.reconstruct_upstream(meta, convert_upstream_record)


_ALLOWED_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): torch._utils._rebuild_tensor_v2,
    ('torch._utils', '_rebuild_parameter'): torch._utils._rebuild_parameter,
    ('torch.storage', '_load_from_bytes'): _load_storage_bytes,
    ('torch', 'Size'): torch.Size,
    ('numpy', 'dtype'): np.dtype,
    ('numpy.core.multiarray', 'scalar'): _numpy_scalar,
    ('numpy._core.multiarray', 'scalar'): _numpy_scalar,
    ('dnnlib.util', 'EasyDict'): dnnlib.EasyDict,
    ('torch_utils.persistence', '_reconstruct_persistent_obj'): _reconstruct_upstream,
    ('torch_utils.persistence', '_rebuild_module'): persistence._rebuild_module,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module.startswith('dnnlib.tflib'):
            raise CheckpointError('TensorFlow StyleGAN pickles are not supported; convert them to a PyTorch '
                                  'StyleGAN2-ADA pickle first')
        raise CheckpointError(f'refusing to load {module}.{name}: not a global that a network pickle uses')


# ------------------------------------------------------------------------------- upstream record conversion


def _plain(value):
    """EasyDicts and OrderedDicts from a pickle as plain dicts (recursively)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _gather_tensors(record, prefix=''):
    """Flatten the parameters and buffers of a record tree into state-dict names."""
    tensors = {}
    for group in ('_parameters', '_buffers'):
        for name, tensor in (record.state.get(group) or {}).items():
            if tensor is None:
                continue
            if not isinstance(tensor, torch.Tensor):
                raise CheckpointError(f'{prefix}{name} of {record.class_name} is not a tensor')
            tensors[prefix + name] = tensor.detach()
    for name, child in (record.state.get('_modules') or {}).items():
        if child is None:
            continue
        if isinstance(child, torch.nn.Module):  # a top-level class nested somewhere: take its state as is
            tensors.update({f'{prefix}{name}.{k}': v for k, v in child.state_dict().items()})
        elif isinstance(child, persistence.PersistentRecord):
            tensors.update(_gather_tensors(child, f'{prefix}{name}.'))
        else:
            raise CheckpointError(f'unexpected sub-module {type(child).__name__} at {prefix}{name}')
    return tensors


def _init_kwargs(record):
    args = record.state.get('_init_args') or ()
    if args:
        raise CheckpointError(f'{record.class_name} was built with positional arguments; expected keywords only')
    return _plain(dict(record.state.get('_init_kwargs') or {}))


def convert_upstream_record(record):
    """Turn an upstream ``Generator`` / ``Discriminator`` / ``AugmentPipe`` record into this project's module."""
    kwargs = _init_kwargs(record)
    tensors = _gather_tensors(record)
    try:
        if record.class_name == 'Generator':
            module = _convert_generator(kwargs, tensors)
        elif record.class_name == 'Discriminator':
            module = networks.Discriminator(**kwargs)
            module.load_state_dict(tensors, strict=True)
        elif record.class_name == 'AugmentPipe':
            module = _convert_augment_pipe(kwargs, tensors)
            if module is None:
                return record
        else:
            raise CheckpointError(f'{record.class_name} cannot stand at the top level of a network pickle')
    except (TypeError, RuntimeError) as exc:  # unknown constructor keyword or mismatching tensors
        message = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{record.class_name} does not match this project's network: {message}") from None
    module.train(bool(record.state.get('training', False)))
    module.requires_grad_(False)  # upstream snapshots store frozen copies
    return module


def _convert_generator(kwargs, tensors):
    synthesis_kwargs = dict(kwargs.pop('synthesis_kwargs', {}) or {})
    synthesis_kwargs.pop('save_intermediate_results', None)  # BiOcularGAN's feature switch; ours is per call
    nir_weights = [v for k, v in tensors.items() if k.endswith(('.toseg.weight', '.tonir.weight'))]
    nir_channels = int(nir_weights[0].shape[0]) if nir_weights else int(kwargs.pop('nir_channels', 1))
    G = networks.Generator(**kwargs, synthesis_kwargs=synthesis_kwargs, nir_channels=nir_channels)
    missing, unexpected = G.load_state_dict(tensors, strict=False)
    fresh = [k for k in missing if '.tonir.' in k] if not nir_weights else []
    missing = [k for k in missing if k not in fresh]
    if missing or unexpected:
        raise RuntimeError(f'missing {missing[:3]}, unexpected {unexpected[:3]}')
    G._fresh_nir_head = bool(fresh)
    return G


def _convert_augment_pipe(kwargs, tensors):
    try:
        from training import augment
    except ImportError:
        warnings.warn('the augmentation pipe in this pickle is skipped: training.augment is not available')
        return None
    pipe = augment.AugmentPipe(**kwargs)
    pipe.load_state_dict(tensors, strict=True)
    return pipe


persistence.set_upstream_converter(convert_upstream_record)  # a plain pickle.load converts the same way


# ------------------------------------------------------------------------------------------------ loading


def _describe(f):
    return getattr(f, 'name', None) or '<stream>'


def load_network_pkl(f, force_fp16=False):
    """Load a network pickle from the binary file object ``f``; see the module docstring."""
    source = _describe(f)
    try:
        data = _SafeUnpickler(f).load()
    except CheckpointError as exc:
        raise CheckpointError(f'{source}: {exc}') from None
    except persistence.PersistenceError as exc:
        raise CheckpointError(f'{source}: {exc}') from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, KeyError, TypeError,
            ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f'{source}: not a readable network pickle ({type(exc).__name__}: {reason})') from None

    if not isinstance(data, dict):
        raise CheckpointError(f'{source}: expected a dict of networks, found {type(data).__name__}')
    missing = [key for key in ('G', 'D', 'G_ema') if key not in data]
    if missing:
        raise CheckpointError(f'{source}: the pickle has no {", ".join(missing)}')
    for key, value in list(data.items()):
        if isinstance(value, persistence.PersistentRecord):  # an AugmentPipe we cannot build yet
            data[key] = None
    for key in ('G', 'G_ema'):
        if not isinstance(data[key], networks.Generator):
            raise CheckpointError(f'{source}: {key} is a {type(data[key]).__name__}, not a Generator')
    for key in ('D', 'D_NIR'):
        if data.get(key) is not None and not isinstance(data[key], networks.Discriminator):
            raise CheckpointError(f'{source}: {key} is a {type(data[key]).__name__}, not a Discriminator')
    data.setdefault('training_set_kwargs', None)
    data.setdefault('augment_pipe', None)
    if data['training_set_kwargs'] is not None and not isinstance(data['training_set_kwargs'], dict):
        raise CheckpointError(f'{source}: training_set_kwargs must be a dict')

    fresh = [f'{key}.tonir' for key in ('G', 'G_ema') if getattr(data[key], '_fresh_nir_head', False)]
    if data.get('D_NIR') is None:  # single-branch pickle: the NIR discriminator starts from scratch
        data['D_NIR'] = _fresh_nir_discriminator(data['D'], data['G'].nir_channels)
        fresh.append('D_NIR')
    data['initialised_fresh'] = fresh

    if force_fp16:
        data = _force_fp16(data)
    return data


def _fresh_nir_discriminator(D, nir_channels):
    kwargs = dict(D.init_kwargs, img_channels=nir_channels, c_dim=0)
    return networks.Discriminator(**kwargs).eval().requires_grad_(False)


def _force_fp16(data):
    """Rebuild G, G_ema, D and D_NIR with the fp16 settings of the paper configs, keeping the weights."""
    for key in ('G', 'G_ema', 'D', 'D_NIR'):
        old = data.get(key)
        if old is None:
            continue
        kwargs = old.init_kwargs
        if isinstance(old, networks.Generator):
            kwargs['synthesis_kwargs'] = dict(kwargs.get('synthesis_kwargs') or {}, num_fp16_res=4, conv_clamp=256)
        else:
            kwargs.update(num_fp16_res=4, conv_clamp=256)
        new = type(old)(*old.init_args, **kwargs).eval().requires_grad_(False)
        new.load_state_dict(old.state_dict(), strict=True)
        data[key] = new
    return data


def save_network_pkl(path, data):
    """Write a snapshot dict (modules of this project and plain data) atomically."""
    with dnnlib.util.atomic_write(path, 'wb') as f:
        pickle.dump(data, f)


def convert_network_pkl(source, dest, force_fp16=False):
    """Read any supported pickle and write it as this project's snapshot; returns the list of fresh parts."""
    with dnnlib.util.open_url(source) as f:
        data = load_network_pkl(f, force_fp16=force_fp16)
    fresh = data.pop('initialised_fresh')
    save_network_pkl(dest, data)
    return fresh


@click.command()
@click.option('--source', required=True, metavar='PATH|URL', help='Network pickle to convert.')
@click.option('--dest', required=True, metavar='PATH', help='Where to write the snapshot of this project.')
@click.option('--force-fp16', is_flag=True, help='Rebuild with num_fp16_res=4 and conv_clamp=256.')
def main(source, dest, force_fp16):
    """Convert an official StyleGAN2-ADA, BiOcularGAN or BiFaceGAN pickle into this project's snapshot format.

    No code stored in the pickle is executed. Single-branch pickles get a freshly initialised NIR head and NIR
    discriminator, as when fine-tuning the dual-branch generator from an RGB-only model.
    """
    try:
        fresh = convert_network_pkl(source, dest, force_fp16=force_fp16)
    except (CheckpointError, OSError) as exc:
        click.echo(f'error: {exc}', err=True)
        sys.exit(2)
    click.echo(f'Wrote {os.path.abspath(dest)}' + (f' (initialised fresh: {", ".join(fresh)})' if fresh else ''))


if __name__ == '__main__':
    main()
