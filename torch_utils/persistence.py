"""Pickling networks by constructor arguments and weights, never by source code.

A class decorated with ``@persistent_class`` records the arguments it was built with and pickles as
``(class path, arguments, state dict)``. ``pickle.load`` on a snapshot therefore rebuilds the module from this
project's own code, as upstream users expect from ``pickle.load(f)['G_ema']``, and a checkpoint carries no program.

Official StyleGAN2-ADA pickles reference ``torch_utils.persistence._reconstruct_persistent_obj`` with the full
source of the defining module inside. The function of that name here ignores the source: it keeps each sub-module as
data and hands the top-level ones to a converter that builds this project's module and restores the weights. The
converter is passed in, not imported (it needs the networks, which import this module): ``training.legacy``
registers its own when imported (``set_upstream_converter``) and its unpickler passes it explicitly. So even a plain
``pickle.load`` of such a file never executes the code stored in it; ``training.legacy.load_network_pkl`` goes
further and refuses every global it does not know.
"""

import copy
import functools
import importlib

import torch

_registry = {}                     # 'training.networks.Generator' -> class
_PROJECT_MODULES = ('training.networks', 'training.augment')  # the only modules a snapshot may name

#: Class names that upstream StyleGAN2-ADA / BiOcularGAN / BiFaceGAN pickles may contain.
UPSTREAM_CLASSES = frozenset([
    'Generator', 'MappingNetwork', 'SynthesisNetwork', 'SynthesisBlock', 'SynthesisLayer', 'ToRGBLayer', 'ToSEGLayer',
    'FullyConnectedLayer', 'Conv2dLayer', 'Discriminator', 'DiscriminatorBlock', 'DiscriminatorEpilogue',
    'MinibatchStdLayer', 'AugmentPipe',
])


class PersistenceError(ValueError):
    """A pickle names a class or format this project does not know."""


def persistent_class(cls):
    """Record constructor arguments and pickle instances as (class path, arguments, weights)."""
    orig_init = cls.__init__

    @functools.wraps(orig_init)
    def __init__(self, *args, **kwargs):
        orig_init(self, *args, **kwargs)
        self._init_args = copy.deepcopy(args)
        self._init_kwargs = copy.deepcopy(kwargs)

    def __reduce__(self):
        meta = dict(type='bigan-module', version=1, class_path=f'{cls.__module__}.{cls.__qualname__}',
                    init_args=self._init_args, init_kwargs=self._init_kwargs, state=self.state_dict(),
                    training=self.training,
                    requires_grad={name: p.requires_grad for name, p in self.named_parameters()})
        return _rebuild_module, (meta,)

    cls.__init__ = __init__
    cls.__reduce__ = __reduce__
    cls.init_args = property(lambda self: copy.deepcopy(self._init_args))
    cls.init_kwargs = property(lambda self: copy.deepcopy(self._init_kwargs))
    _registry[f'{cls.__module__}.{cls.__qualname__}'] = cls
    return cls


def resolve_class(class_path):
    """The registered class for ``class_path``; imports only this project's network modules."""
    module_name = class_path.rpartition('.')[0]
    if class_path not in _registry and module_name in _PROJECT_MODULES:
        importlib.import_module(module_name)
    if class_path not in _registry:
        raise PersistenceError(f'unknown network class {class_path!r}')
    return _registry[class_path]


def _rebuild_module(meta):
    """Rebuild a module pickled by ``persistent_class``: construct it, then load its weights."""
    if not isinstance(meta, dict) or meta.get('type') != 'bigan-module' or meta.get('version') != 1:
        raise PersistenceError('unsupported snapshot format (expected a bigan-module record, version 1)')
    cls = resolve_class(meta['class_path'])
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG untouched
        module = cls(*meta['init_args'], **meta['init_kwargs'])
    module.load_state_dict(meta['state'], strict=True)
    module.train(bool(meta['training']))
    for name, param in module.named_parameters():
        param.requires_grad_(bool(meta['requires_grad'].get(name, True)))
    return module


class PersistentRecord:
    """A sub-module of an upstream pickle, kept as data (class name and state) until its owner is converted."""

    def __init__(self, class_name, state):
        self.class_name = class_name
        self.state = state

    def __repr__(self):
        return f'PersistentRecord({self.class_name})'


# Top-level classes are converted into this project's modules as soon as they are unpickled.
_TOP_LEVEL = ('Generator', 'Discriminator', 'AugmentPipe')

_upstream_converter = None  # PersistentRecord -> module, for plain pickle.load (see set_upstream_converter)


def set_upstream_converter(convert):
    """Make ``convert(record)`` (a top-level ``PersistentRecord`` -> this project's module) the converter a plain
    ``pickle.load`` of an upstream pickle uses; ``training.legacy`` registers its own when imported."""
    global _upstream_converter
    _upstream_converter = convert


def _reconstruct_persistent_obj(meta):
    """Safe stand-in for upstream's loader: never looks at ``meta['module_src']``; converts with the registered
    converter."""
    return reconstruct_upstream(meta, _upstream_converter)


def reconstruct_upstream(meta, convert):
    """An upstream persistent object as data: a ``PersistentRecord``, or for a top-level class ``convert(record)``."""
    if not isinstance(meta, dict) or meta.get('type') != 'class':
        raise PersistenceError('not a StyleGAN2-ADA persistent object')
    if meta.get('version') != 6:
        raise PersistenceError(f"unsupported StyleGAN2-ADA persistence version {meta.get('version')!r} (expected 6)")
    class_name = meta.get('class_name')
    if class_name not in UPSTREAM_CLASSES:
        raise PersistenceError(f'unknown network class {class_name!r} in a StyleGAN2-ADA pickle')
    state = meta.get('state')
    if not isinstance(state, dict):
        raise PersistenceError(f'persistent object {class_name!r} has no state dict')
    record = PersistentRecord(class_name, state)
    if class_name not in _TOP_LEVEL:
        return record
    if convert is None:
        raise PersistenceError(f'an upstream StyleGAN2-ADA {class_name} needs a converter: load the pickle with '
                               f'training.legacy.load_network_pkl (or import training.legacy first)')
    return convert(record)
