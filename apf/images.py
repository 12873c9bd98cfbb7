"""Finding face images and their identities, and reading them with one-line errors.

The real training set is a folder of RGB images; a file's identity is either its first sub-folder below the root
(``real/<identity>/<any>/<file>``) or the first group of a regular expression applied to the file name (e.g.
``^(\\d+)_`` for Tufts-style ``{identity}_{sample}.jpg``; without a group, the whole match).
"""

import os
import re
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import PIL.Image

from apf.checkpoint import ApfError

IMAGE_EXTENSIONS = frozenset({'.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp'})


@dataclass(frozen=True)
class RealImage:
    path: str  # absolute
    relpath: str  # relative to the real folder, '/'-separated (the cache key)
    identity: str


def list_images(root) -> List[str]:
    """Every image file below ``root`` (recursive), as sorted '/'-separated paths relative to it."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
        for name in filenames:
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith('.'):
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, '/'))
    return sorted(out)


def identity_of(relpath: str, pattern: Optional[re.Pattern]) -> Optional[str]:
    """The identity of a real image: sub-folder (no pattern) or the pattern's first group; None if there is none."""
    if pattern is None:
        parts = relpath.split('/')
        return parts[0] if len(parts) > 1 else None
    m = pattern.search(os.path.basename(relpath))
    if m is None:
        return None
    return m.group(1) if m.groups() else m.group(0)


def compile_identity_pattern(pattern: Optional[str]) -> Optional[re.Pattern]:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ApfError(f'--identity-pattern {pattern!r} is not a valid regular expression: {e}') from None


def scan_real(root, identity_pattern: Optional[str] = None) -> List[RealImage]:
    """The real images below ``root`` with their identities; every problem is an ``ApfError`` naming the path."""
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise ApfError(root, 'real image folder not found')
    pattern = compile_identity_pattern(identity_pattern)
    rels = list_images(root)
    if not rels:
        raise ApfError(root, f'no images ({", ".join(sorted(IMAGE_EXTENSIONS))}) in the real image folder')
    images = []
    for rel in rels:
        identity = identity_of(rel, pattern)
        if identity is None:
            how = (f'its name does not match --identity-pattern {identity_pattern!r}' if pattern is not None else
                   'it is not in a sub-folder (one sub-folder per identity), and no --identity-pattern was given')
            raise ApfError(os.path.join(root, rel), f'no identity: {how}')
        images.append(RealImage(os.path.join(root, rel), rel, identity))
    return images


def read_rgb(path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3] (grey images are replicated); ``ApfError`` if it cannot be decoded."""
    if not os.path.isfile(path):
        raise ApfError(path, 'image file not found')
    try:
        with PIL.Image.open(path) as im:
            im.load()
            return np.asarray(im.convert('RGB'))
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as e:
        raise ApfError(path, f'cannot read the image ({type(e).__name__}: {e})') from None
