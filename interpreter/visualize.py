"""Colouring class-index masks for people to look at (the originals' ``cat_palette`` for eyes)."""

import numpy as np

# The originals' display palette for the ocular experiments (class id -> RGB); ids >= 16 wrap around.
CAT_PALETTE = np.array([
    (255, 255, 255), (220, 220, 0), (190, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (102, 102, 156),
    (152, 251, 152), (119, 11, 32), (244, 35, 232), (220, 20, 60), (52, 83, 84), (194, 87, 125), (225, 96, 18),
    (31, 102, 211), (104, 131, 101),
], dtype=np.uint8)


def colorize(mask, palette=CAT_PALETTE):
    """Class-index mask [H, W] -> RGB uint8 [H, W, 3]."""
    mask = np.asarray(mask)
    return palette[mask.astype(np.int64) % len(palette)]


def overlay(mask, rgb, alpha=0.7, palette=CAT_PALETTE):
    """``alpha * colour(mask) + (1 - alpha) * rgb``, as the originals' visualisation mode."""
    mixed = alpha * colorize(mask, palette).astype(np.float32) + (1 - alpha) * np.asarray(rgb, np.float32)
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
