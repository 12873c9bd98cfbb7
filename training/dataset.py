"""The ``torch.utils.data.Dataset`` of paired RGB + NIR images that the training loop and the metrics use.

Finding, pairing, validating and loading the files is torch-free, in ``training.image_pairs`` (which
``dataset_tool.py`` uses without importing torch); this module adds only the torch ``Dataset`` base class.
``class_name='training.dataset.ImageFolderDataset'`` (upstream's name, in old configs and pickles) still works.
"""

import torch.utils.data

from training.image_pairs import PairedImages


class PairedImageDataset(PairedImages, torch.utils.data.Dataset):
    """A ``torch.utils.data.Dataset`` of aligned RGB + NIR pairs; see ``PairedImages`` for arguments and items."""


ImageFolderDataset = PairedImageDataset  # Upstream's class name, as old configs and pickles spell it.
