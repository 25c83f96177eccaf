"""Protocol transforms on whole batches of uint8 tensors, on the training device.

Train (Gavas & Olpadkar 2021): random horizontal flip, random vertical flip (each
p = 0.5), random rotation by an angle uniform in [-60, 60] degrees, then ImageNet
normalisation. Images arrive already resized to the model's input size (the store
does that once), so the resize step of the per-image pipeline is not repeated.

Rotation matches torchvision's ``RandomRotation`` defaults: about the image centre,
same output size, area outside the rotated image filled with 0 (black) *before*
normalisation, nearest-neighbour sampling (the default of the per-image pipeline the
paper used; ``interpolation="bilinear"`` smooths edges at ~2x the resampling cost).

Randomness comes from a ``torch.Generator`` on the CPU that the caller seeds per
epoch, so a batch's augmentation depends only on (seed, epoch, batch) and a resumed
run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


INTERPOLATIONS = ("nearest", "bilinear")


@dataclass
class BatchAugment:
    hflip: bool = True
    vflip: bool = True
    rotation: float = 60.0  # degrees
    interpolation: str = "nearest"  # grid_sample mode: nearest (torchvision's default) | bilinear

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"data.augment.interpolation={self.interpolation!r} is not one of "
                             f"{', '.join(INTERPOLATIONS)}; set data.augment.interpolation=nearest "
                             "(torchvision's RandomRotation default) or bilinear.")

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw the per-image parameters: flip masks and angles in radians (CPU tensors)."""
        u = torch.rand(n, 3, generator=generator)
        return {
            "hflip": (u[:, 0] < 0.5) & self.hflip,
            "vflip": (u[:, 1] < 0.5) & self.vflip,
            "angle": (u[:, 2] * 2.0 - 1.0) * math.radians(self.rotation),
        }

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float batch (N, C, H, W) in [0, 1]; returns a new tensor."""
        params = {k: v.to(x.device, non_blocking=True) for k, v in self.sample(x.shape[0], generator).items()}
        return apply_augment(x, **params, mode=self.interpolation)


def apply_augment(x: torch.Tensor, *, hflip: torch.Tensor, vflip: torch.Tensor, angle: torch.Tensor,
                  mode: str = "nearest") -> torch.Tensor:
    """Flip and rotate each image of ``x`` by its own parameters, in one batched resample.

    Flips and the rotation are folded into one affine matrix per image, so the batch
    is resampled once (``grid_sample``) however many transforms apply. Images with
    no rotation and no flip still go through the same call, which keeps this free of
    data-dependent branches.
    """
    n = x.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    sx = 1.0 - 2.0 * hflip.to(x.dtype)  # -1 mirrors the x axis
    sy = 1.0 - 2.0 * vflip.to(x.dtype)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    # Output pixel p samples input at R(angle) @ diag(sx, sy) @ p, in normalised coordinates
    # (square images, so no aspect correction is needed).
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin * sy
    theta[:, 1, 0] = sin * sx
    theta[:, 1, 1] = cos * sy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


class Normalize:
    """uint8 (N, 3, H, W) -> float, scaled to [0, 1] and normalised by mean/std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device="cpu"):
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, -1, 1, 1).to(device)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, -1, 1, 1).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # (x/255 - mean)/std folded into one multiply-add.
        return torch.addcmul(-self.shift, x.float(), self.scale)
