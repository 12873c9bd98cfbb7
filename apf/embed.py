"""Face embeddings with a frozen ArcFace backbone, and a cache of the real images' embeddings.

Preprocessing follows the authors (``preprocess_image_for_ArcFace``): RGB order kept, the whole image resized to
112x112 with PIL's default filter for ``resize`` (bicubic), scaled to [-1, 1]. ``center_crop`` < 1 first keeps the
central square of that fraction of the shorter side, for generators whose faces are not tightly cropped (the
authors' generators output aligned crops, so they did not crop). Embeddings are L2-normalised, so a dot product is
the cosine similarity.
"""

import hashlib
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import PIL.Image
import torch

import dnnlib
from apf.images import read_rgb

INPUT_SIZE = 112


def _check_center_crop(center_crop):
    if not 0 < center_crop <= 1:
        raise ValueError(f'center_crop must lie in (0, 1], got {center_crop}')


def preprocess(image: np.ndarray, center_crop: float = 1.0, size: int = INPUT_SIZE) -> np.ndarray:
    """uint8 RGB [H, W, 3] -> float32 [3, size, size] in [-1, 1]."""
    _check_center_crop(center_crop)
    im = PIL.Image.fromarray(np.ascontiguousarray(image), 'RGB')
    if center_crop < 1:
        w, h = im.size
        side = max(1, int(round(min(w, h) * center_crop)))
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    im = im.resize((size, size), PIL.Image.BICUBIC)
    x = np.asarray(im, dtype=np.float32).transpose(2, 0, 1)
    return (x / 255.0 - 0.5) / 0.5


def file_digest(path, chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes (identifies the weights in the cache key)."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


class Embedder:
    """Batched, L2-normalised embeddings of image files with a frozen backbone (eval mode, no gradients)."""

    def __init__(self, model: torch.nn.Module, device='cpu', batch_size: int = 32, center_crop: float = 1.0):
        if batch_size < 1:
            raise ValueError('batch_size must be positive')
        self.model = model.eval()
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.center_crop = float(center_crop)
        _check_center_crop(self.center_crop)

    def settings(self) -> dict:
        return dict(input_size=INPUT_SIZE, center_crop=self.center_crop, resize='PIL bicubic', scale='[-1, 1]')

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device)
        e = self.model(x).float()
        e = torch.nn.functional.normalize(e, dim=1)
        return e.cpu().numpy().astype(np.float32)

    @torch.no_grad()
    def embed_files(self, paths: Sequence[str], progress: bool = True, desc: str = 'embedding',
                    world=None) -> np.ndarray:
        """Image files -> float32 [N, D] unit vectors; an unreadable file is an ``ApfError`` naming it.

        With a ``world`` of several ranks, each embeds every ``size``-th batch and all get the whole result; the
        batches are the ones a single process forms, so the numbers are the same."""
        from tqdm import tqdm
        starts = list(range(0, len(paths), self.batch_size))
        mine = starts if world is None else world.shard(starts)
        out = {}
        show = progress and (world is None or world.is_main)
        total = sum(len(paths[s:s + self.batch_size]) for s in mine)
        with tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True, disable=not show) as bar:
            for start in mine:
                chunk = paths[start:start + self.batch_size]
                batch = np.stack([preprocess(read_rgb(p), self.center_crop) for p in chunk])
                out[start] = self._forward(batch)
                bar.update(len(chunk))
        if world is not None and world.distributed:
            from torch_utils import distributed
            for part in distributed.gather_objects(out, world):
                out.update(part)
        return np.concatenate([out[s] for s in starts]) if starts else np.zeros((0, 0), np.float32)


def _stat(path):
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]


class EmbeddingCache:
    """Embeddings of files, reused while the file (size, mtime), the weights and the preprocessing are unchanged.

    Stored as one ``.npz``: ``embeddings`` [N, D] float32 and ``meta`` (JSON: the key of weights + settings, and per
    row the file's key and [size, mtime_ns]). Written atomically; a cache that cannot be read is ignored and rebuilt.
    """

    def __init__(self, path: Optional[str], key: dict):
        self.path = path
        self.key = json.loads(json.dumps(key, sort_keys=True))
        self.rows: Dict[str, tuple] = {}
        if path and os.path.isfile(path):
            self._read()

    def _read(self):
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                meta = json.loads(str(npz['meta']))
                emb = npz['embeddings']
        except (OSError, ValueError, KeyError):
            return  # unreadable: rebuilt
        if meta.get('key') != self.key or len(meta.get('files', [])) != len(emb):
            return
        for (name, stat), vec in zip(meta['files'], emb):
            self.rows[name] = (stat, vec)

    def embed(self, embedder: Embedder, files: Sequence[tuple], progress=True, log=print, world=None) -> np.ndarray:
        """``files``: (cache name, absolute path) pairs -> [N, D], computing only what the cache lacks (spread over
        the ranks of ``world``; only rank 0 writes the cache)."""
        stats = [_stat(path) for _, path in files]
        missing = [i for i, ((name, _), st) in enumerate(zip(files, stats))
                   if name not in self.rows or self.rows[name][0] != st]
        reused = len(files) - len(missing)
        new = embedder.embed_files([files[i][1] for i in missing], progress=progress, desc='embedding real images',
                                   world=world)
        main = world is None or world.is_main
        for j, i in enumerate(missing):
            self.rows[files[i][0]] = (stats[i], new[j])
        if self.path and main:
            log(f'real-image embeddings: {reused} of {len(files)} reused from {self.path}')
        if not files:
            return np.zeros((0, 0), np.float32)
        out = np.stack([self.rows[name][1] for name, _ in files]).astype(np.float32)
        if missing and self.path and main:
            self._write([name for name, _ in files], stats, out)
        return out

    def _write(self, names: List[str], stats, emb):
        meta = json.dumps(dict(key=self.key, files=[[n, s] for n, s in zip(names, stats)]))
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with dnnlib.util.atomic_write(self.path, 'wb') as f:
            np.savez(f, embeddings=emb, meta=np.array(meta))


def default_cache_path(outdir, arch):
    """The real-embedding cache of an APF output folder unless another is named."""
    return os.path.join(outdir, 'cache', f'real_embeddings-{arch}.npz')


def load_embedder(weights, arch, device='cpu', fp16=False, batch_size=32, center_crop=1.0):
    """The backbone from ``weights`` as an ``Embedder`` plus the cache key describing weights and preprocessing."""
    from apf.checkpoint import load_backbone
    model = load_backbone(weights, arch=arch, device=device, fp16=fp16)
    embedder = Embedder(model, device=device, batch_size=batch_size, center_crop=center_crop)
    key = dict(arch=arch, weights_sha256=file_digest(weights), fp16=bool(fp16 and torch.device(device).type == 'cuda'),
               **embedder.settings())
    return embedder, key
