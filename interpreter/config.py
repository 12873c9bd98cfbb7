"""The interpreter's JSON configuration (``generate.json`` / ``train_datagan.json``), validated up front.

The files keep the keys of the original BiOcularGAN / BiFaceGAN / DatasetGAN configs; keys the originals hard-coded
in their scripts are added with the originals' values as defaults. Every problem is reported as one line naming the
JSON file and the key (``ConfigError``), before any work starts.

Keys of the original configs (key: default - meaning)
----------------------------------------------------
* ``exp_dir``: required - experiment folder (``models/``, ``train_data.jpg``, the annotation files).
* ``dim``: required - ``[H, W, C]``: output (mask) size, H == W, and the classifier input size C.
* ``stylegan_checkpoint``: required - generator pickle (path or URL).
* ``category``: none - ``eyes_256`` or ``eyes_512``, which set ``resolution`` (256 / 512); any other value is an
  error (the originals silently left the resolution unset); without it see ``resolution``.
* ``stylegan_ver``: ``"2"`` - only ``"2"`` (DatasetGAN's StyleGAN1 path is not supported).
* ``batch_size``: 64 - pixel-classifier mini-batch.
* ``number_class``: none - number of classes; none: inferred (max label + 1 when training, the checkpoints' shapes
  when generating). Steps that need it call ``cfg.require('number_class')``.
* ``max_training``: none - annotated images used (the first N); none: every row of the latent file.
* ``model_num``: 10 - ensemble size.
* ``upsample_mode``: ``bilinear`` - feature upsampling, ``bilinear`` or ``nearest`` (``align_corners=False``).
* ``annotation_data_from_w``: false - the latent file holds ws ``[N, num_ws, w_dim]`` instead of z.
* ``annotation_mask_path``: none - folder with ``image_mask{i}.npy`` and the jpgs, under exp_dir.
* ``annotation_image_latent_path``: none - z (or w) of the annotated images, under exp_dir.
* ``average_latent``: none - average w for truncation (``[num_ws, w_dim]`` or ``[w_dim]``), under exp_dir;
  none: the generator's tracked ``mapping.w_avg``.
* ``expand_to_dimensions``: none - number of ws; checked against the generator's ``num_ws`` when set.

``debug``, ``deeplab_res``, ``testing_data_number_class``, ``testing_path`` and ``upsample_threshold`` were never read
by the originals; they are accepted (any value), kept in ``cfg.ignored`` and otherwise ignored. Any other unknown key
is an error that lists the valid keys. Empty strings mean "not set" for the file keys, as in the originals.

Keys added here (the originals hard-coded these; defaults are the originals' values unless said otherwise)
---------------------------------------------------------------------------------------------------------
* ``resolution``: derived - generator resolution: from ``category``, else ``dim[1]``; may be given (a power of two
  >= 4) and must then agree with ``category``. ``dim[1]`` may differ from it (features are resized to ``dim[1]``).
* ``generator_key``: ``G_ema`` - which generator of the pickle is used: ``G_ema`` (what upstream samples with) or
  ``G`` (what the originals loaded). make_training_data and the interpreter must use the same.
* ``truncation_psi``: 0.7, ``truncation_cutoff``: 7 (null: every w) - BiOcularGAN IJCB's setting; BiFaceGAN used
  0.5 / 8.
* ``noise_mode``: ``const`` - synthesis noise ``const`` / ``random`` / ``none``; the originals drew random noise
  each call, so an annotated image and its later features differed.
* ``force_fp32``: true - every synthesis block in float32 (the originals got fp16 features on GPUs).
* ``seed``: 0 - default random seed of the scripts.
* ``learning_rate``: 0.001, ``max_epochs``: 100 - Adam learning rate and epoch limit per pixel classifier.
* ``early_stop_epoch``: 3, ``early_stop_patience``: 50 - early stopping is considered once the epoch index exceeds
  ``early_stop_epoch``; it stops after ``early_stop_patience`` iterations in a row without a new best batch loss.
* ``min_label_pixels``: 30 - a label with fewer pixels in a mask is set to background.
* ``checkpoint_every``: 5000 (0: none), ``log_every``: 1000 - iterations between intermediate checkpoints / logs.
* ``num_workers``: 0 - DataLoader workers.
* ``uncertainty_top_fraction``: 0.1 - share of the largest per-pixel JS values averaged into a sample's score.
* ``uncertainty_portion``: 0.1 - share of the most uncertain generated samples dropped (DatasetGAN's paper setting;
  the Bi originals dropped none).

Paths
-----
Relative ``exp_dir`` and ``stylegan_checkpoint`` are resolved against the *project root*, as the originals (run from
their repository root) did: when the JSON file lies in ``<root>/<exp_dir>/`` (the originals' layout: each experiment
folder holds its configs) that ``<root>`` is used, so a config works from any working directory; otherwise the
current working directory. ``annotation_mask_path``, ``annotation_image_latent_path`` and ``average_latent`` are
resolved against ``exp_dir`` (the original interpreter did so; its make_training_data read ``average_latent`` as
given, an inconsistency not kept). Overrides (command-line values) that are relative paths are taken relative to the
current working directory. All paths in an ``InterpreterConfig`` are absolute.
"""

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, Optional, Tuple, Union

import dnnlib
from interpreter.generator_layout import feature_channels


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the file and the key."""


CATEGORY_RESOLUTIONS = {'eyes_256': 256, 'eyes_512': 512}

# Keys of the original configs that no original script read: accepted and ignored.
IGNORED_KEYS = ('debug', 'deeplab_res', 'testing_data_number_class', 'testing_path', 'upsample_threshold')

# Keys naming files under exp_dir, and the keys resolved against the project root.
EXP_FILE_KEYS = ('annotation_mask_path', 'annotation_image_latent_path', 'average_latent')
ROOT_PATH_KEYS = ('exp_dir', 'stylegan_checkpoint')
REQUIRED_KEYS = ('exp_dir', 'dim', 'stylegan_checkpoint')


@dataclasses.dataclass
class InterpreterConfig:
    """A validated interpreter configuration; see the module docstring for the keys. Paths are absolute."""

    # Original keys.
    exp_dir: str
    dim: Tuple[int, int, int]
    stylegan_checkpoint: str
    category: Optional[str] = None
    stylegan_ver: str = '2'
    batch_size: int = 64
    number_class: Optional[int] = None
    max_training: Optional[int] = None
    model_num: int = 10
    upsample_mode: str = 'bilinear'
    annotation_data_from_w: bool = False
    annotation_mask_path: Optional[str] = None
    annotation_image_latent_path: Optional[str] = None
    average_latent: Optional[str] = None
    expand_to_dimensions: Optional[int] = None
    # Added keys.
    resolution: int = 0
    generator_key: str = 'G_ema'
    truncation_psi: float = 0.7
    truncation_cutoff: Optional[int] = 7
    noise_mode: str = 'const'
    force_fp32: bool = True
    seed: int = 0
    learning_rate: float = 0.001
    max_epochs: int = 100
    early_stop_epoch: int = 3
    early_stop_patience: int = 50
    min_label_pixels: int = 30
    checkpoint_every: int = 5000
    log_every: int = 1000
    num_workers: int = 0
    uncertainty_top_fraction: float = 0.1
    uncertainty_portion: float = 0.1
    # Bookkeeping (not keys).
    source: Optional[str] = None
    ignored: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def _where(self) -> str:
        return self.source or '<config>'

    def require(self, *keys: str) -> None:
        """Raise a ConfigError unless every key in ``keys`` is set (not None)."""
        for key in keys:
            if getattr(self, key) is None:
                raise ConfigError(f'{self._where()}: {key}: this step needs it, but it is not set')

    def check_files(self, keys: Optional[Iterable[str]] = None) -> None:
        """Check that the files/folders named by ``keys`` (default: every file key that is set) exist.

        ``stylegan_checkpoint`` given as a URL is not checked. A missing ``*_stylegan1.npy`` next to an existing
        ``*_stylegan.npy`` (or the reverse), the mismatch of the originals' example configs, is reported with the
        name of the file that exists; it is not silently substituted.
        """
        keys = list(EXP_FILE_KEYS) + ['stylegan_checkpoint'] if keys is None else list(keys)
        for key in keys:
            if key not in EXP_FILE_KEYS and key not in ROOT_PATH_KEYS:
                raise ValueError(f'{key!r} is not a file key')
            path = getattr(self, key)
            if path is None or (key == 'stylegan_checkpoint' and dnnlib.util.is_url(path)):
                continue
            want_dir = key in ('annotation_mask_path', 'exp_dir')
            if want_dir and os.path.isdir(path) or not want_dir and os.path.isfile(path):
                continue
            if os.path.exists(path):
                kind = 'a folder' if want_dir else 'a file'
                raise ConfigError(f'{self._where()}: {key}: {path} is not {kind}')
            hint = _stylegan1_hint(path)
            raise ConfigError(f'{self._where()}: {key}: {path} not found{hint}')

    def check_generator(self, G, features: bool = False) -> None:
        """Check the generator against ``resolution`` and ``expand_to_dimensions``, that it is unconditional and,
        with ``features``, against ``dim[2]``."""
        where = self._where()
        if G.img_resolution != self.resolution:
            origin = f'category {self.category!r} means' if self.category else 'the config asks for'
            raise ConfigError(f'{where}: resolution: {origin} {self.resolution}x{self.resolution} images, but the '
                              f'generator makes {G.img_resolution}x{G.img_resolution}')
        if self.expand_to_dimensions is not None and self.expand_to_dimensions != G.num_ws:
            raise ConfigError(f'{where}: expand_to_dimensions: {self.expand_to_dimensions} does not match the '
                              f'generator, which takes {G.num_ws} ws')
        if G.c_dim > 0:
            raise ConfigError(f'{self.stylegan_checkpoint}: the generator is conditional (c_dim={G.c_dim}); the '
                              f'interpreter needs an unconditional one')
        if features:
            total = sum(feature_channels(G))
            if total != self.dim[2]:
                raise ConfigError(f"{where}: dim: dim[2] = {self.dim[2]} but the generator's feature maps have "
                                  f'{total} channels in all')

    def to_dict(self) -> Dict[str, Any]:
        """Every key with its validated value (paths absolute), in a JSON-friendly form."""
        out = {}
        for field in dataclasses.fields(self):
            if field.name in ('source', 'ignored'):
                continue
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out


def _stylegan1_hint(path: str) -> str:
    folder, name = os.path.split(path)
    if 'stylegan1' in name:
        other = name.replace('stylegan1', 'stylegan')
    elif 'stylegan' in name:
        other = name.replace('stylegan', 'stylegan1')
    else:
        return ''
    if os.path.isfile(os.path.join(folder, other)):
        return (f'; {other} exists in that folder (the original example configs name *_stylegan1.npy while '
                f'make_training_data writes *_stylegan.npy): set the key to {other!r} or rename the file')
    return ''


# ------------------------------------------------------------------------------------------------- checkers


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, problem: str):
        raise ConfigError(f'{self.where}: {key}: {problem}')

    def integer(self, key, value, lo=None, allow_none=False):
        if value is None and allow_none:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f'expected an integer, got {value!r}')
        if lo is not None and value < lo:
            self.fail(key, f'must be at least {lo}, got {value}')
        return value

    def number(self, key, value, lo=None, hi=None, lo_open=False, hi_open=False):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(key, f'expected a finite number, got {value!r}')
        value = float(value)
        if lo is not None and (value < lo or lo_open and value == lo):
            self.fail(key, f'must be {">" if lo_open else ">="} {lo:g}, got {value:g}')
        if hi is not None and (value > hi or hi_open and value == hi):
            self.fail(key, f'must be {"<" if hi_open else "<="} {hi:g}, got {value:g}')
        return value

    def boolean(self, key, value):
        if not isinstance(value, bool):
            self.fail(key, f'expected true or false, got {value!r}')
        return value

    def choice(self, key, value, choices):
        if value not in choices:
            self.fail(key, f'expected one of {", ".join(map(repr, choices))}, got {value!r}')
        return value

    def path(self, key, value, allow_empty):
        if not isinstance(value, str):
            self.fail(key, f'expected a path (a string), got {value!r}')
        if value.strip() == '':
            if not allow_empty:
                self.fail(key, 'must not be empty')
            return None
        return value


_ORIGINAL_KEYS = ('exp_dir', 'batch_size', 'category', 'debug', 'dim', 'deeplab_res', 'number_class',
                  'testing_data_number_class', 'max_training', 'stylegan_ver', 'annotation_data_from_w',
                  'annotation_mask_path', 'testing_path', 'average_latent', 'annotation_image_latent_path',
                  'stylegan_checkpoint', 'model_num', 'upsample_mode', 'upsample_threshold', 'expand_to_dimensions')
_NEW_KEYS = ('resolution', 'generator_key', 'truncation_psi', 'truncation_cutoff', 'noise_mode', 'force_fp32', 'seed',
             'learning_rate', 'max_epochs', 'early_stop_epoch', 'early_stop_patience', 'min_label_pixels',
             'checkpoint_every', 'log_every', 'num_workers', 'uncertainty_top_fraction', 'uncertainty_portion')
VALID_KEYS = _ORIGINAL_KEYS + _NEW_KEYS


def _reject_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f'duplicate key {key!r}')
        out[key] = value
    return out


def _read_json(path: str) -> Dict[str, Any]:
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        raise ConfigError(f'{path}: file not found') from None
    except IsADirectoryError:
        raise ConfigError(f'{path}: is a folder, not a JSON file') from None
    except OSError as exc:
        raise ConfigError(f'{path}: cannot read ({exc.strerror or exc})') from None
    try:
        raw = json.loads(data.decode('utf-8'), object_pairs_hook=_reject_duplicates)
    except UnicodeDecodeError:
        raise ConfigError(f'{path}: not a UTF-8 text file') from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f'{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})') from None
    except ConfigError as exc:
        raise ConfigError(f'{path}: {exc}') from None
    if not isinstance(raw, dict):
        raise ConfigError(f'{path}: expected a JSON object of keys, found {type(raw).__name__}')
    return raw


def _project_root(json_path: str, exp_dir: str) -> str:
    """The folder that relative exp_dir / stylegan_checkpoint are taken from (see the module docstring)."""
    cwd = os.getcwd()
    parts = [p for p in Path(os.path.normpath(exp_dir)).parts if p != '.']
    if not parts or '..' in parts:
        return cwd
    json_dir = Path(os.path.abspath(json_path)).parent.parts
    if len(json_dir) > len(parts) and tuple(json_dir[-len(parts):]) == tuple(parts):
        return str(Path(*json_dir[:-len(parts)]))
    return cwd


def load_config(path, overrides: Optional[Dict[str, Any]] = None, *,
                check_files: Union[bool, Iterable[str]] = True) -> InterpreterConfig:
    """Read and validate an interpreter JSON config.

    ``overrides`` maps keys to values that replace the file's (command-line options); ``None`` values are skipped.
    ``check_files``: True checks that every file the config names exists (``InterpreterConfig.check_files``), False
    checks none, a list of keys checks those. Raises ``ConfigError`` (one line, naming the file and the key).
    """
    path = os.fspath(path)
    raw = _read_json(path)
    where = path
    unknown = [k for k in raw if k not in VALID_KEYS]
    if unknown:
        raise ConfigError(f'{where}: unknown key {unknown[0]!r}; valid keys: {", ".join(VALID_KEYS)}')

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    for key in overrides:
        if key not in VALID_KEYS or key in IGNORED_KEYS:
            raise ConfigError(f'{where}: cannot override unknown key {key!r}; valid keys: {", ".join(VALID_KEYS)}')
    for key in REQUIRED_KEYS:
        if key not in raw and key not in overrides:
            raise ConfigError(f'{where}: {key}: required key missing')

    check = _Checker(where)
    values = dict(raw)
    cwd = os.getcwd()
    for key, value in overrides.items():
        if key in ROOT_PATH_KEYS + EXP_FILE_KEYS and isinstance(value, (str, os.PathLike)):
            value = os.fspath(value)
            if value and not os.path.isabs(value) and not dnnlib.util.is_url(value):
                value = os.path.join(cwd, value)
        values[key] = value

    kw: Dict[str, Any] = {}
    kw['ignored'] = {k: raw[k] for k in IGNORED_KEYS if k in raw}

    # Paths.
    exp_dir = check.path('exp_dir', values['exp_dir'], allow_empty=False)
    file_exp_dir = raw.get('exp_dir')
    root = _project_root(path, file_exp_dir) if isinstance(file_exp_dir, str) and file_exp_dir.strip() else cwd
    exp_dir = os.path.normpath(os.path.join(root, exp_dir))
    kw['exp_dir'] = exp_dir
    ckpt = check.path('stylegan_checkpoint', values['stylegan_checkpoint'], allow_empty=False)
    kw['stylegan_checkpoint'] = ckpt if dnnlib.util.is_url(ckpt) else os.path.normpath(os.path.join(root, ckpt))
    for key in EXP_FILE_KEYS:
        value = check.path(key, values.get(key, ''), allow_empty=True)
        kw[key] = None if value is None else os.path.normpath(os.path.join(exp_dir, value))

    # dim, category, resolution.
    dim = values['dim']
    if (not isinstance(dim, (list, tuple)) or len(dim) != 3
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dim)):
        check.fail('dim', f'expected [height, width, feature channels] (three positive integers), got {dim!r}')
    if dim[0] != dim[1]:
        check.fail('dim', f"{list(dim)}: height and width must be equal (the originals' non-square path was broken)")
    kw['dim'] = tuple(dim)
    category = values.get('category')
    if category is not None:
        if not isinstance(category, str) or category not in CATEGORY_RESOLUTIONS:
            check.fail('category', f'unknown category {category!r}; known: {", ".join(CATEGORY_RESOLUTIONS)} '
                                   f'(or leave it out and give resolution)')
    kw['category'] = category
    resolution = values.get('resolution')
    if resolution is not None:
        check.integer('resolution', resolution, lo=4)
        if resolution & (resolution - 1):
            check.fail('resolution', f'must be a power of two, got {resolution}')
        if category is not None and CATEGORY_RESOLUTIONS[category] != resolution:
            check.fail('resolution', f'{resolution} contradicts category {category!r} '
                                     f'({CATEGORY_RESOLUTIONS[category]})')
    elif category is not None:
        resolution = CATEGORY_RESOLUTIONS[category]
    else:
        resolution = dim[1]
        if resolution < 4 or resolution & (resolution - 1):
            check.fail('dim', f'without category or resolution, dim[1] = {resolution} is taken as the generator '
                              f'resolution and must be a power of two >= 4')
    kw['resolution'] = resolution

    # Scalars.
    ver = values.get('stylegan_ver', '2')
    if str(ver) != '2' or isinstance(ver, bool):
        check.fail('stylegan_ver', f'only "2" is supported (StyleGAN2 generators), got {ver!r}')
    kw['stylegan_ver'] = '2'
    ints = dict(batch_size=1, model_num=1, seed=0, max_epochs=1, early_stop_epoch=0, early_stop_patience=0,
                min_label_pixels=0, checkpoint_every=0, log_every=1, num_workers=0)
    for key, lo in ints.items():
        if key in values:
            kw[key] = check.integer(key, values[key], lo=lo)
    if 'seed' in kw and kw['seed'] >= 2 ** 32:
        check.fail('seed', f'must be below 2**32, got {kw["seed"]}')
    for key, lo in dict(number_class=2, max_training=1, expand_to_dimensions=1, truncation_cutoff=0).items():
        if key in values:
            kw[key] = check.integer(key, values[key], lo=lo, allow_none=True)
    for key in ('annotation_data_from_w', 'force_fp32'):
        if key in values:
            kw[key] = check.boolean(key, values[key])
    if 'truncation_psi' in values:
        kw['truncation_psi'] = check.number('truncation_psi', values['truncation_psi'])
    if 'learning_rate' in values:
        kw['learning_rate'] = check.number('learning_rate', values['learning_rate'], lo=0, lo_open=True)
    if 'uncertainty_top_fraction' in values:
        kw['uncertainty_top_fraction'] = check.number('uncertainty_top_fraction', values['uncertainty_top_fraction'],
                                                      lo=0, hi=1, lo_open=True)
    if 'uncertainty_portion' in values:
        kw['uncertainty_portion'] = check.number('uncertainty_portion', values['uncertainty_portion'], lo=0, hi=1,
                                                 hi_open=True)
    if 'upsample_mode' in values:
        kw['upsample_mode'] = check.choice('upsample_mode', values['upsample_mode'], ('bilinear', 'nearest'))
    if 'noise_mode' in values:
        kw['noise_mode'] = check.choice('noise_mode', values['noise_mode'], ('const', 'random', 'none'))
    if 'generator_key' in values:
        kw['generator_key'] = check.choice('generator_key', values['generator_key'], ('G_ema', 'G'))

    cfg = InterpreterConfig(source=path, **kw)
    if check_files is True:
        cfg.check_files()
    elif check_files:
        cfg.check_files(check_files)
    return cfg
