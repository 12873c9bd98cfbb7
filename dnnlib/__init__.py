"""Small, dependency-light helpers shared by every part of the project.

`dnnlib.EasyDict` is the very class `dnnlib.util.EasyDict`, so pickles that name either path load the same way.
"""

from . import util
from .util import EasyDict, make_cache_dir_path

__all__ = ['EasyDict', 'make_cache_dir_path', 'util']
