"""Batched data augmentation on the training device.

Both functions work on a whole uint8 batch at once with index arithmetic, so a
batch costs two gathers instead of a Python loop over images: a flip only
reverses the column index of the crop.
"""

from __future__ import annotations

import torch


def random_crop(padded: torch.Tensor, size: int, generator: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Cut one random ``size x size`` window out of every image of a padded batch.

    Args:
        padded: batch of shape ``(n, c, h, w)`` with ``h, w >= size``, for example
            32x32 images zero-padded by 4 pixels to 40x40.
        size: side of the output window in pixels.
        generator: source of the window offsets, on the same device as ``padded``.
        flip: also mirror each window left-right with probability 1/2. The
            result equals ``random_flip(random_crop(...), generator)`` with the
            same generator state, and it saves a pass over the batch.

    Returns:
        Tensor of shape ``(n, c, size, size)`` and the dtype of ``padded``.

    Example:
        >>> images = torch.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4)
        >>> crops = random_crop(images, 2, torch.Generator().manual_seed(0))
        >>> crops.shape
        torch.Size([2, 1, 2, 2])
    """
    n, channels, height, width = padded.shape
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} windows from images of {height}x{width} pixels")

    device = padded.device
    top = torch.randint(0, height - size + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, width - size + 1, (n,), generator=generator, device=device)
    offsets = torch.arange(size, device=device)

    rows = (top[:, None] + offsets).view(n, 1, size, 1).expand(n, channels, size, width)
    cropped = padded.gather(2, rows)
    cols = left[:, None] + offsets
    if flip:
        mirrored = torch.rand(n, generator=generator, device=device) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    return cropped.gather(3, cols.view(n, 1, 1, size).expand(n, channels, size, size))


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image of a batch left-right with probability 1/2.

    Example:
        >>> images = torch.arange(8).reshape(2, 1, 1, 4)
        >>> flipped = random_flip(images, torch.Generator().manual_seed(0))
        >>> sorted(flipped[0, 0, 0].tolist())
        [0, 1, 2, 3]
    """
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
