"""Batch augmentations as whole-tensor operations on the trial's device.

Every function takes a batch (B, C, H, W) and a ``torch.Generator`` on the same
device, so a trial's augmentations are reproducible from its seed and need no
worker processes or per-image PIL work.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels, then crop each image back at its own random offset."""
    if padding <= 0:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    # Advanced indexing puts the indexed dims first: (B, H, W, C) -> (B, C, H, W).
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image (DeVries & Taylor 2017).

    Applied to normalized images, so zero is the dataset mean. The centre may lie
    anywhere in the image and the square is clipped at the borders."""
    if size <= 0:
        return x
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (b, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    half = size // 2
    inside = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return x.masked_fill(inside[:, None], 0.0)


class AutoAugment:
    """torchvision's AutoAugment with the CIFAR-10 policy, one policy draw per image.

    torchvision's v2 transform draws one sub-policy per call, so calling it on a
    whole batch would augment every image the same way; it is applied image by
    image instead. It draws from torch's global RNG, which the trainable seeds and
    checkpoints."""

    def __init__(self) -> None:
        from torchvision.transforms import v2

        self.transform = v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError("AutoAugment works on uint8 images")
        return torch.stack([self.transform(img) for img in x])
