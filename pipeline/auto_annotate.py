"""The demo's stand-in for a person with GIMP: a small U-Net that learnt the demo eyes from their true masks.

A person who annotates eyes knows what an iris looks like. The stand-in learns it from the renderer's masks of the
demo training pairs (which the GAN never sees): ``train_segmentation.py`` on ``<demo>/data`` with the class map into
the ``ocular_4class`` numbering (``train_command``). It then labels the sampled generated images (``Annotator``) and
writes what a person would: a colour mask PNG in the ``ocular_4class`` palette (iris blue, pupil red, sclera green,
background black), so the demo runs the real import step. On real demo eyes it scores about 0.9 mIoU against the
renderer (the demo reports its own figure); the fixed colour rule it replaced scored 0.73, and its noise on the
generated images capped every number downstream.
"""

import os

import numpy as np
import torch

# ocular_4class class ids (interpreter/palettes/ocular_4class.json): 0 background, 1 iris, 2 pupil, 3 sclera
BACKGROUND, IRIS, PUPIL, SCLERA = 0, 1, 2, 3
CLASS_NAMES = ('background', 'iris', 'pupil', 'sclera')
PALETTE = {BACKGROUND: (0, 0, 0), IRIS: (0, 0, 255), PUPIL: (255, 0, 0), SCLERA: (0, 255, 0)}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASS_MAP = os.path.join(REPO, 'EXPERIMENTS', 'segmentation', 'demo_renderer_to_ocular_4class.json')
TRAINING_PAIRS_PER_EPOCH = 400  # a smaller demo set is repeated to as many pairs per epoch


def train_command(data, outdir, count, epochs=15, seed=0):
    """``train_segmentation.py`` arguments that train the stand-in on the demo set ``data`` of ``count`` pairs
    (resumable: rerunning continues or finds it done)."""
    repeat = max(1, round(TRAINING_PAIRS_PER_EPOCH / count))
    return ['train_segmentation.py', '--data', data, '--outdir', outdir, '--class_map', CLASS_MAP, '--arch', 'unet',
            '--width', 16, '--input', 'rgbnir', '--epochs', epochs, '--repeat', repeat, '--batch', 16, '--seed', seed,
            '--resume']


class Annotator:
    """``annotator(rgb uint8 [H, W, 3], nir uint8 [H, W]) -> uint8 ocular_4class ids [H, W]``."""

    def __init__(self, checkpoint, device='cpu'):
        from segmentation.train import SegmentationError, model_from_checkpoint
        self.model, ckpt = model_from_checkpoint(checkpoint, device=device)
        if ckpt.get('input') != 'rgbnir' or list(ckpt.get('class_names') or []) != list(CLASS_NAMES):
            raise SegmentationError(checkpoint, f'is not the demo annotator (input {ckpt.get("input")!r}, classes '
                                                f'{ckpt.get("class_names")}; expected rgbnir, {list(CLASS_NAMES)})')
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, rgb, nir) -> np.ndarray:
        from segmentation.train import predict
        nir = np.asarray(nir)
        nir = nir[..., 0] if nir.ndim == 3 else nir
        x = np.concatenate([np.asarray(rgb, np.uint8).transpose(2, 0, 1), nir[None].astype(np.uint8)])
        return predict(self.model, torch.from_numpy(x[None]), self.device)[0].numpy().astype(np.uint8)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class ids -> the palette's colours (what the annotator saves as ``image_{id}_mask.png``)."""
    out = np.zeros(mask.shape + (3,), np.uint8)
    for cls, color in PALETTE.items():
        out[mask == cls] = color
    return out
