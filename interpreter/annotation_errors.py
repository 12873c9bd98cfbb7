"""The error types of annotation input (palettes, annotation images, GIMP projects, the folder import).

Each is one line, ``<file>: <problem>``; ``prepare_annotations.py`` reports them as user errors (exit code 2).
"""

import dnnlib

__all__ = ['AnnotationError', 'PaletteError']


class AnnotationError(dnnlib.util.FileError):
    """Bad annotation input. ``str(e)`` is one line: ``<file>: <problem>``."""


class PaletteError(AnnotationError):
    """A palette file that is not valid JSON or breaks the palette format."""
