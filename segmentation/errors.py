"""The segmentation package's user error (its own leaf module, so that every other module can raise it)."""

import dnnlib


class SegmentationError(dnnlib.util.FileError):
    """Bad input for segmentation training or evaluation; one line naming the file and the problem."""
