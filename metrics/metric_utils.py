"""Shared machinery of the metrics: options, feature detectors, and feature statistics of real and generated data.

Every metric of the dual-branch generator is reported per modality. One pass over the dataset reads both halves of
each pair, and one generator call produces both the RGB and the NIR image, so the statistics functions return a dict
``{'rgb': FeatureStats, 'nir': FeatureStats}`` (only ``'rgb'`` for a generator without an NIR head). Single-channel
images (NIR) are repeated to 3 channels before the detector, real and generated alike.

Feature detectors are the official TorchScript files that StyleGAN2-ADA publishes (Inception for FID/KID/IS, VGG16
for precision/recall). TorchScript files carry code that ``torch.jit.load`` runs, so only load files you trust: by
default the official URLs below, or a copy of exactly those files that you point at yourself with
``detector_dir=`` / ``$BIGAN_DETECTOR_DIR`` (a folder holding ``inception-2015-12-05.pt`` and ``vgg16.pt``), or with
``$BIGAN_INCEPTION_URL`` / ``$BIGAN_VGG16_URL`` (a path or URL of one file). A detector that cannot be obtained raises
:class:`DetectorUnavailable`, whose one-line message names the file and where to put it.

Statistics of real data are cached (``<dnnlib cache>/gan-metrics/``) under an md5 of everything they depend on: the
dataset options and length, the detector's file contents and call options, the statistics options, the number of
items, the modality, and the dataset's optional ``fingerprint`` attribute (or method). Cache files are written
atomically as plain ``.npz`` arrays (no pickle).
"""

import copy
import hashlib
import json
import os
import re
import time
import urllib.parse
import warnings
import zipfile

import numpy as np
import torch

import dnnlib
from torch_utils import misc

INCEPTION_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
VGG16_URL = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/vgg16.pt'

DETECTOR_DIR_ENV = 'BIGAN_DETECTOR_DIR'
DETECTOR_URL_ENVS = {INCEPTION_URL: 'BIGAN_INCEPTION_URL', VGG16_URL: 'BIGAN_VGG16_URL'}
MODALITIES = ('rgb', 'nir')
_DOWNLOAD_ATTEMPTS = 5  # per detector download; a refused connection fails in about two seconds

# ---------------------------------------------------------------------------------------------------------------------
# Options and progress


class MetricOptions:
    """Everything a metric needs: the generator, the dataset options, the process layout and run-time choices.

    ``G_kwargs`` go to every ``G(z, c, **G_kwargs)`` call. ``device=None`` picks CUDA (the current device) when
    available, else the CPU. ``cache`` enables the real-data statistics cache. ``detector_dir`` is a folder holding
    the detector files (see the module docstring). ``num_gen`` / ``max_real`` override a registered metric's number of
    generated / real images (for quick checks; the result keeps the metric's name). ``seed`` makes the latents, labels
    and subsets reproducible (None: fresh global randomness, as upstream). ``data_loader_kwargs`` replace the
    DataLoader options used for real data.
    """

    def __init__(self, G=None, G_kwargs=None, dataset_kwargs=None, num_gpus=1, rank=0, device=None, progress=None,
                 cache=True, detector_dir=None, num_gen=None, max_real=None, seed=None, data_loader_kwargs=None):
        if num_gpus < 1 or not 0 <= rank < num_gpus:
            raise ValueError(f'invalid rank {rank} for {num_gpus} processes')
        for name, value in (('num_gen', num_gen), ('max_real', max_real)):
            if value is not None and int(value) < 1:
                raise ValueError(f'{name} must be at least 1, got {value}')
        self.G = G
        self.G_kwargs = dnnlib.EasyDict(G_kwargs or {})
        self.dataset_kwargs = dnnlib.EasyDict(dataset_kwargs or {})
        self.num_gpus = int(num_gpus)
        self.rank = int(rank)
        self.device = misc.get_device(device)
        self.progress = progress.sub() if progress is not None and rank == 0 else ProgressMonitor()
        self.cache = bool(cache)
        self.detector_dir = None if detector_dir is None else os.fspath(detector_dir)
        self.num_gen = None if num_gen is None else int(num_gen)
        self.max_real = None if max_real is None else int(max_real)
        self.seed = None if seed is None else int(seed)
        self.data_loader_kwargs = None if data_loader_kwargs is None else dict(data_loader_kwargs)

    @property
    def modalities(self):
        """('rgb', 'nir'), or ('rgb',) for a generator without an NIR head."""
        if self.G is not None and getattr(self.G, 'nir_channels', 1) == 0:
            return MODALITIES[:1]
        return MODALITIES

    def counts(self, max_real, num_gen):
        """The (max_real, num_gen) a registered metric should use: its own values unless overridden."""
        return (max_real if self.max_real is None else self.max_real,
                num_gen if self.num_gen is None else self.num_gen)

    def numpy_rng(self, salt=0):
        """A RandomState from the seed (offset by rank and `salt`), or the global numpy RNG when unseeded."""
        if self.seed is None:
            return np.random.mtrand._rand
        return np.random.RandomState((self.seed * 1000003 + self.rank * 7919 + salt) % (2 ** 32))


class ProgressMonitor:
    """Progress of a long computation: optional log lines every `flush_interval` items and a callback.

    Lines look like upstream's: ``"{tag:<19s} items {n:<7d} time {t:<12s} ms/item {x:.2f}"``. ``progress_fn(cur,
    total)`` (e.g. for a GUI) receives positions between ``pfn_lo`` and ``pfn_hi`` out of ``pfn_total``; ``sub()``
    makes a monitor for a slice ``[rel_lo, rel_hi]`` of this one's range.
    """

    def __init__(self, tag=None, num_items=None, flush_interval=1000, verbose=False, progress_fn=None, pfn_lo=0,
                 pfn_hi=1000, pfn_total=1000):
        self.tag = tag
        self.num_items = num_items
        self.flush_interval = flush_interval
        self.verbose = verbose
        self.progress_fn = progress_fn
        self.pfn_lo = pfn_lo
        self.pfn_hi = pfn_hi
        self.pfn_total = pfn_total
        self.start_time = time.time()
        self.batch_time = self.start_time
        self.batch_items = 0
        if self.progress_fn is not None:
            self.progress_fn(self.pfn_lo, self.pfn_total)

    def update(self, cur_items):
        done = self.num_items is not None and cur_items >= self.num_items
        if cur_items < self.batch_items + self.flush_interval and not done:
            return
        now = time.time()
        per_item = (now - self.batch_time) / max(cur_items - self.batch_items, 1)
        if self.verbose and self.tag is not None:
            print(f'{self.tag:<19s} items {cur_items:<7d} time {dnnlib.util.format_time(now - self.start_time):<12s} '
                  f'ms/item {per_item * 1e3:.2f}', flush=True)
        self.batch_time = now
        self.batch_items = cur_items
        if self.progress_fn is not None and self.num_items:
            frac = min(cur_items / self.num_items, 1.0)
            self.progress_fn(self.pfn_lo + (self.pfn_hi - self.pfn_lo) * frac, self.pfn_total)

    def sub(self, tag=None, num_items=None, flush_interval=1000, rel_lo=0, rel_hi=1):
        span = self.pfn_hi - self.pfn_lo
        return ProgressMonitor(tag=tag, num_items=num_items, flush_interval=flush_interval, verbose=self.verbose,
                               progress_fn=self.progress_fn, pfn_lo=self.pfn_lo + span * rel_lo,
                               pfn_hi=self.pfn_lo + span * rel_hi, pfn_total=self.pfn_total)


# ---------------------------------------------------------------------------------------------------------------------
# Feature detectors


class DetectorUnavailable(RuntimeError):
    """A feature detector file could not be found, downloaded or loaded; the message (one line) says which file is
    needed and where to put it. The training loop catches this, prints it and goes on training."""


_detector_cache = dict()  # (real path, size, mtime, device) -> loaded TorchScript module
_fingerprint_cache = dict()  # (real path, size, mtime) -> md5 of the file's bytes


def detector_file_name(url):
    """The file name a detector URL or path refers to, e.g. 'inception-2015-12-05.pt'."""
    path = urllib.parse.urlparse(url).path if dnnlib.util.is_url(url, allow_file_urls=True) else url
    return os.path.basename(path) or 'detector.pt'


def detector_name(url):
    """Short name used in cache file names: the file name without extension ('inception-2015-12-05', 'vgg16')."""
    return os.path.splitext(detector_file_name(url))[0]


def _one_line(text):
    return ' '.join(str(text).split())


def resolve_detector(url, detector_dir=None, verbose=False):
    """Local path of the detector file for `url` (downloading into the dnnlib cache if needed).

    Order: `detector_dir`, then ``$BIGAN_INCEPTION_URL`` / ``$BIGAN_VGG16_URL`` for the official URLs, then
    ``$BIGAN_DETECTOR_DIR``, then `url` itself. Raises DetectorUnavailable.
    """
    file_name = detector_file_name(url)
    hint = f'or set ${DETECTOR_DIR_ENV} (or --detector-dir) to a folder holding {file_name}'
    location = url
    if detector_dir is None:
        env_url = os.environ.get(DETECTOR_URL_ENVS.get(url, ''), '') if url in DETECTOR_URL_ENVS else ''
        if env_url:
            location = env_url
        elif os.environ.get(DETECTOR_DIR_ENV):
            detector_dir = os.environ[DETECTOR_DIR_ENV]
    if detector_dir is not None:
        path = os.path.join(os.fspath(detector_dir), file_name)
        if not os.path.isfile(path):
            raise DetectorUnavailable(f'feature detector {file_name} not found: download {url} and place it at '
                                      f'{os.path.abspath(path)}')
        return path
    try:
        return dnnlib.util.open_url(location, num_attempts=_DOWNLOAD_ATTEMPTS, verbose=verbose, return_filename=True)
    except dnnlib.util.OfflineDownloadError as exc:
        raise DetectorUnavailable(f'feature detector {file_name} is unavailable (download of {location} failed: '
                                  f'{_one_line(exc.reason)}); download it elsewhere and place it at {exc.cache_path}, '
                                  f'{hint}') from None
    except OSError as exc:
        reason = _one_line(exc.strerror or exc)
        raise DetectorUnavailable(f'feature detector {file_name} not found at {location} ({reason}); download {url} '
                                  f'and place it there, {hint}') from None


def _file_key(path):
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def detector_fingerprint(path):
    """md5 of the detector file's bytes (memoised per path, size and modification time)."""
    key = _file_key(path)
    if key not in _fingerprint_cache:
        md5 = hashlib.md5()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 22), b''):
                md5.update(chunk)
        _fingerprint_cache[key] = md5.hexdigest()
    return _fingerprint_cache[key]


def _load_detector_file(path, device):
    key = _file_key(path) + (str(device),)
    if key not in _detector_cache:
        try:
            with warnings.catch_warnings():  # the official detectors only exist as TorchScript files
                warnings.simplefilter('ignore', DeprecationWarning)
                detector = torch.jit.load(path, map_location=device)
        except Exception as exc:  # noqa: BLE001 (torch.jit.load raises many types for a bad file)
            reason = _one_line(exc).split(' (')[0][:200] or type(exc).__name__
            raise DetectorUnavailable(f'{path} is not a loadable TorchScript feature detector ({reason}); replace it '
                                      f'with the official file {os.path.basename(path)}') from None
        _detector_cache[key] = detector.eval().to(device)
    return _detector_cache[key]


def _broadcast_flag(flag, device, num_gpus, src=0):
    """The value of a boolean on rank `src`, seen by every rank."""
    if num_gpus <= 1:
        return bool(flag)
    tensor = torch.as_tensor([1 if flag else 0], dtype=torch.int32, device=device)
    torch.distributed.broadcast(tensor, src=src)
    return bool(tensor.item())


def get_feature_detector(url, device=torch.device('cpu'), num_gpus=1, rank=0, verbose=False, detector_dir=None):
    """The TorchScript detector for `url` (see resolve_detector), loaded once per (file, device).

    With several processes, rank 0 obtains the file first and tells the others whether it succeeded, so a missing
    detector raises DetectorUnavailable on every rank instead of leaving some waiting.
    """
    device = torch.device(device)
    path = error = None
    if rank == 0:
        try:
            path = resolve_detector(url, detector_dir=detector_dir, verbose=verbose)
            detector = _load_detector_file(path, device)
        except DetectorUnavailable as exc:
            error = exc
    if not _broadcast_flag(error is None, device, num_gpus):
        if error is not None:
            raise error
        raise DetectorUnavailable(f'feature detector {detector_file_name(url)} is unavailable on rank 0 (see its '
                                  'message)')
    if rank != 0:
        path = resolve_detector(url, detector_dir=detector_dir, verbose=False)
        detector = _load_detector_file(path, device)
    return detector


# ---------------------------------------------------------------------------------------------------------------------
# Feature statistics


class FeatureStats:
    """Accumulates feature vectors: all of them (`capture_all`) and/or float64 sums for mean and covariance.

    Appending stops at `max_items` (a batch that crosses it is truncated). ``get_mean_cov()`` returns the mean and the
    biased (1/n) covariance in float64.
    """

    def __init__(self, capture_all=False, capture_mean_cov=False, max_items=None):
        self.capture_all = bool(capture_all)
        self.capture_mean_cov = bool(capture_mean_cov)
        self.max_items = None if max_items is None else int(max_items)
        self.num_items = 0
        self.num_features = None
        self.all_features = None
        self.raw_mean = None
        self.raw_cov = None

    def set_num_features(self, num_features):
        if self.num_features is not None:
            if num_features != self.num_features:
                raise ValueError(f'feature size changed from {self.num_features} to {num_features}')
            return
        self.num_features = int(num_features)
        self.all_features = []
        self.raw_mean = np.zeros([num_features], dtype=np.float64)
        self.raw_cov = np.zeros([num_features, num_features], dtype=np.float64)

    def is_full(self):
        return self.max_items is not None and self.num_items >= self.max_items

    def append(self, x):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise ValueError(f'features must be a 2-D [items, features] array, got shape {x.shape}')
        if self.max_items is not None:
            room = self.max_items - self.num_items
            if room <= 0:
                return
            x = x[:room]
        self.set_num_features(x.shape[1])
        self.num_items += x.shape[0]
        if self.capture_all:
            self.all_features.append(x)
        if self.capture_mean_cov:
            x64 = x.astype(np.float64)
            self.raw_mean += x64.sum(axis=0)
            self.raw_cov += x64.T @ x64

    def append_torch(self, x, num_gpus=1, rank=0):
        """Append a [N, F] tensor; with several processes, every rank's batch is gathered and interleaved
        sample-wise (rank 0's first item, rank 1's first item, ...), which restores the single-process order."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            raise ValueError('append_torch() needs a 2-D tensor')
        if not 0 <= rank < num_gpus:
            raise ValueError(f'invalid rank {rank} for {num_gpus} processes')
        if num_gpus > 1:
            x = x.contiguous()
            parts = [torch.empty_like(x) for _ in range(num_gpus)]
            torch.distributed.all_gather(parts, x)
            x = torch.stack(parts, dim=1).flatten(0, 1)
        self.append(x.detach().to(torch.float32).cpu().numpy())

    def get_all(self):
        if not self.capture_all:
            raise RuntimeError('these statistics were made without capture_all')
        if not self.all_features:
            return np.zeros([0, self.num_features or 0], dtype=np.float32)
        return np.concatenate(self.all_features, axis=0)

    def get_all_torch(self):
        return torch.from_numpy(self.get_all())

    def get_mean_cov(self):
        if not self.capture_mean_cov:
            raise RuntimeError('these statistics were made without capture_mean_cov')
        if self.num_items == 0:
            raise RuntimeError('no features were collected')
        mean = self.raw_mean / self.num_items
        cov = self.raw_cov / self.num_items - np.outer(mean, mean)
        return mean, cov

    def save(self, path):
        """Write the statistics atomically as an .npz of plain arrays."""
        num_features = -1 if self.num_features is None else self.num_features
        width = max(num_features, 0)
        arrays = dict(
            version=np.int64(1),
            capture_all=np.bool_(self.capture_all),
            capture_mean_cov=np.bool_(self.capture_mean_cov),
            max_items=np.int64(-1 if self.max_items is None else self.max_items),
            num_items=np.int64(self.num_items),
            num_features=np.int64(num_features),
            all_features=self.get_all() if self.capture_all else np.zeros([0, width], np.float32),
            raw_mean=self.raw_mean if self.raw_mean is not None else np.zeros([0]),
            raw_cov=self.raw_cov if self.raw_cov is not None else np.zeros([0, 0]),
        )
        with dnnlib.util.atomic_write(path, 'wb') as f:
            np.savez(f, **arrays)

    @staticmethod
    def load(path):
        with np.load(path, allow_pickle=False) as data:
            if int(data['version']) != 1:
                raise ValueError(f'unknown statistics file version {int(data["version"])}')
            max_items = int(data['max_items'])
            stats = FeatureStats(capture_all=bool(data['capture_all']), capture_mean_cov=bool(data['capture_mean_cov']),
                                 max_items=None if max_items < 0 else max_items)
            num_features = int(data['num_features'])
            if num_features >= 0:
                stats.set_num_features(num_features)
                stats.num_items = int(data['num_items'])
                if stats.capture_all:
                    stats.all_features = [np.array(data['all_features'], dtype=np.float32)]
                if stats.capture_mean_cov:
                    stats.raw_mean = np.array(data['raw_mean'], dtype=np.float64)
                    stats.raw_cov = np.array(data['raw_cov'], dtype=np.float64)
        return stats


# ---------------------------------------------------------------------------------------------------------------------
# Images to detector features


def to_uint8(images):
    """Generator output in about [-1, 1] to uint8 pixels, as upstream: ``(x * 127.5 + 128).clamp(0, 255)`` then
    truncation."""
    return (images * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def to_three_channels(images):
    """[N, 1, H, W] is repeated to [N, 3, H, W]; [N, 3, H, W] passes through."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f'expected [N, 1 or 3, H, W] images, got shape {tuple(images.shape)}')
    return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images


def _cache_file_name(dataset_name, detector_url, modality, md5):
    safe = re.sub(r'[^0-9A-Za-z._-]', '_', str(dataset_name)) or 'dataset'
    return f'{safe}-{detector_name(detector_url)}-{modality}-{md5}.npz'


def _stats_cache_key(**fields):
    text = json.dumps(fields, sort_keys=True, default=repr)
    return hashlib.md5(text.encode('utf-8')).hexdigest()


def _default_loader_kwargs(device):
    return dict(pin_memory=(torch.device(device).type == 'cuda'), num_workers=min(3, os.cpu_count() or 1),
                prefetch_factor=2)


def compute_feature_stats_for_dataset(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64,
                                      data_loader_kwargs=None, max_items=None, **stats_kwargs):
    """Detector features of the first `max_items` dataset pairs (all when None), both modalities in one pass.

    Returns ``{modality: FeatureStats}``. Uses and fills the statistics cache when ``opts.cache``. With several
    processes, rank r handles items r, r + num_gpus, ... and the statistics are gathered in dataset order.
    """
    dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)
    num_items = len(dataset) if max_items is None else min(len(dataset), int(max_items))
    if num_items <= 0:
        raise ValueError(f'dataset {getattr(dataset, "name", "")!r} has no items to compute statistics from')
    modalities = opts.modalities
    detector = get_feature_detector(detector_url, device=opts.device, num_gpus=opts.num_gpus, rank=opts.rank,
                                    verbose=opts.progress.verbose, detector_dir=opts.detector_dir)

    cache_files = {}
    if opts.cache:
        detector_path = resolve_detector(detector_url, detector_dir=opts.detector_dir)
        fingerprint = getattr(dataset, 'fingerprint', None)  # optional: a dataset may summarise its files' state
        fields = dict(dataset_kwargs=dict(opts.dataset_kwargs), dataset_len=len(dataset), num_items=num_items,
                      dataset_fingerprint=fingerprint() if callable(fingerprint) else fingerprint,
                      detector_url=detector_url, detector_md5=detector_fingerprint(detector_path),
                      detector_kwargs=dict(detector_kwargs), stats_kwargs=dict(stats_kwargs))
        cache_dir = dnnlib.make_cache_dir_path('gan-metrics')
        for modality in modalities:
            md5 = _stats_cache_key(modality=modality, **fields)
            cache_files[modality] = os.path.join(cache_dir, _cache_file_name(dataset.name, detector_url, modality,
                                                                              md5))
        hit = opts.rank != 0 or all(os.path.isfile(path) for path in cache_files.values())
        if _broadcast_flag(hit, opts.device, opts.num_gpus):
            try:
                return {modality: FeatureStats.load(path) for modality, path in cache_files.items()}
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                if opts.num_gpus > 1:
                    raise
                warnings.warn(f'ignoring unreadable statistics cache ({_one_line(exc)}); recomputing', stacklevel=2)

    stats = {modality: FeatureStats(max_items=num_items, **stats_kwargs) for modality in modalities}
    progress = opts.progress.sub(tag='dataset features', num_items=num_items, rel_lo=rel_lo, rel_hi=rel_hi)
    per_rank = (num_items - 1) // opts.num_gpus + 1
    item_subset = [(i * opts.num_gpus + opts.rank) % num_items for i in range(per_rank)]
    if data_loader_kwargs is None:
        data_loader_kwargs = opts.data_loader_kwargs
    if data_loader_kwargs is None:
        data_loader_kwargs = _default_loader_kwargs(opts.device)
    data_loader_kwargs = dict(data_loader_kwargs)
    if data_loader_kwargs.get('num_workers', 0) == 0:
        data_loader_kwargs.pop('prefetch_factor', None)
    loader = torch.utils.data.DataLoader(dataset=dataset, sampler=item_subset, batch_size=batch_size,
                                         **data_loader_kwargs)
    with torch.no_grad():
        for batch in loader:
            images = dict(zip(MODALITIES, batch[:2]))
            for modality in modalities:
                x = to_three_channels(torch.as_tensor(images[modality]).to(opts.device))
                features = detector(x, **detector_kwargs)
                stats[modality].append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
            progress.update(stats[modalities[0]].num_items)

    if cache_files and opts.rank == 0:
        os.makedirs(os.path.dirname(next(iter(cache_files.values()))), exist_ok=True)
        for modality, path in cache_files.items():
            stats[modality].save(path)
    return stats


def compute_feature_stats_for_generator(opts, detector_url, detector_kwargs, rel_lo=0, rel_hi=1, batch_size=64,
                                        batch_gen=None, **stats_kwargs):
    """Detector features of ``stats_kwargs['max_items']`` generated pairs; one G call gives both modalities.

    Latents are ``z ~ N(0, I)``; for a conditional G the labels of random dataset items are used, as upstream.
    Returns ``{modality: FeatureStats}``.
    """
    if stats_kwargs.get('max_items') is None:
        raise ValueError('compute_feature_stats_for_generator() needs max_items')
    if batch_gen is None:
        batch_gen = min(batch_size, 4)
    if batch_size % batch_gen != 0:
        raise ValueError(f'batch_size {batch_size} is not a multiple of batch_gen {batch_gen}')
    if opts.G is None:
        raise ValueError('this metric needs a generator (G)')

    G = copy.deepcopy(opts.G).eval().requires_grad_(False).to(opts.device)
    modalities = opts.modalities
    dataset = None
    if G.c_dim > 0:  # labels of random dataset items, as upstream
        dataset = dnnlib.util.construct_class_by_name(**opts.dataset_kwargs)
        if dataset.label_dim != G.c_dim or len(dataset) == 0:
            raise ValueError(f'the generator is conditional (c_dim={G.c_dim}) but the dataset gives '
                             f'{len(dataset)} items with {dataset.label_dim} label values; use use_labels=True and '
                             'the dataset the network was trained on')
    detector = get_feature_detector(detector_url, device=opts.device, num_gpus=opts.num_gpus, rank=opts.rank,
                                    verbose=opts.progress.verbose, detector_dir=opts.detector_dir)
    stats = {modality: FeatureStats(**stats_kwargs) for modality in modalities}
    progress = opts.progress.sub(tag='generator features', num_items=stats['rgb'].max_items, rel_lo=rel_lo,
                                 rel_hi=rel_hi)
    np_rng = opts.numpy_rng(salt=1)
    torch_rng = None if opts.seed is None else torch.Generator().manual_seed(int(np_rng.randint(2 ** 31)))

    with torch.no_grad():
        while not stats['rgb'].is_full():
            outputs = {modality: [] for modality in modalities}
            still_needed = -(-(stats['rgb'].max_items - stats['rgb'].num_items) // opts.num_gpus)  # per rank
            for _ in range(min(batch_size // batch_gen, -(-still_needed // batch_gen))):  # no surplus final batch
                if torch_rng is None:
                    z = torch.randn([batch_gen, G.z_dim], device=opts.device)
                else:
                    z = torch.randn([batch_gen, G.z_dim], generator=torch_rng).to(opts.device)
                if dataset is not None:
                    labels = [dataset.get_label(int(np_rng.randint(len(dataset)))) for _ in range(batch_gen)]
                    c = torch.from_numpy(np.stack(labels).astype(np.float32)).to(opts.device)
                else:
                    c = torch.zeros([batch_gen, G.c_dim], device=opts.device)
                out = G(z=z, c=c, **opts.G_kwargs)
                if isinstance(out, torch.Tensor):  # a single-branch generator
                    out = (out,)
                for modality, images in zip(MODALITIES, out):
                    if modality in outputs:
                        outputs[modality].append(to_three_channels(to_uint8(images)))
            for modality in modalities:
                features = detector(torch.cat(outputs[modality]), **detector_kwargs)
                stats[modality].append_torch(features, num_gpus=opts.num_gpus, rank=opts.rank)
            progress.update(stats['rgb'].num_items)
    return stats


def compute_real_and_generated_features(opts, detector_url, max_real, num_gen, **stats_kwargs):
    """Detector features (``return_features``) of up to ``max_real`` real pairs and of ``num_gen`` generated pairs,
    progress split 0..0 / 0..1 as upstream's FID, KID and PR do; returns ``(real, gen)``, each ``{modality: stats}``."""
    detector_kwargs = dict(return_features=True)
    real = compute_feature_stats_for_dataset(opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs,
                                             rel_lo=0, rel_hi=0, max_items=max_real, **stats_kwargs)
    gen = compute_feature_stats_for_generator(opts=opts, detector_url=detector_url, detector_kwargs=detector_kwargs,
                                              rel_lo=0, rel_hi=1, max_items=num_gen, **stats_kwargs)
    return real, gen
