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

from bench.config import INTERPOLATIONS  # the choices, defined once




@dataclass
class BatchAugment:
    hflip: bool = True
    vflip: bool = True
    rotation: float = 60.0  # degrees
    interpolation: str = "nearest"  # grid_sample mode: nearest (torchvision's default) | bilinear
    # Colour jitter (torchvision ColorJitter's ranges); 0 = off.
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    # Stain jitter in HED space (Tellez et al. 2018): each of the haematoxylin, eosin and DAB densities
    # scaled by U(1 - hed, 1 + hed) and shifted by U(-hed, hed), per image; 0 = off.
    hed: float = 0.0

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"data.augment.interpolation={self.interpolation!r} is not one of "
                             f"{', '.join(INTERPOLATIONS)}; set data.augment.interpolation=nearest "
                             "(torchvision's RandomRotation default) or bilinear.")

    @classmethod
    def from_config(cls, aug) -> "BatchAugment":
        """From ``cfg.data.augment`` (colour keys absent in configs written before they existed)."""
        return cls(aug.hflip, aug.vflip, aug.rotation, aug.interpolation,
                   **{k: float(getattr(aug, k, 0.0) or 0.0)
                      for k in ("brightness", "contrast", "saturation", "hue", "hed")})

    @property
    def jitter(self) -> bool:
        return any((self.brightness, self.contrast, self.saturation, self.hue))

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw the per-image parameters: flip masks, angles in radians and, with colour jitter,
        the colour factors (CPU tensors). Without jitter the draws are exactly those of the
        flips and rotation alone, so runs without it replay bit for bit."""
        u = torch.rand(n, 3, generator=generator)
        params = {
            "hflip": (u[:, 0] < 0.5) & self.hflip,
            "vflip": (u[:, 1] < 0.5) & self.vflip,
            "angle": (u[:, 2] * 2.0 - 1.0) * math.radians(self.rotation),
        }
        if self.jitter:
            j = torch.rand(n, 4, generator=generator)
            for i, key in enumerate(("brightness", "contrast", "saturation")):
                v = getattr(self, key)
                params[key] = max(0.0, 1.0 - v) + j[:, i] * (1.0 + v - max(0.0, 1.0 - v))
            params["hue"] = (j[:, 3] * 2.0 - 1.0) * self.hue
        if self.hed:  # drawn last: configs without it replay the draws they made before it existed
            h = torch.rand(n, 2, 3, generator=generator) * 2.0 - 1.0
            params["hed_scale"], params["hed_shift"] = 1.0 + h[:, 0] * self.hed, h[:, 1] * self.hed
        return params

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float batch (N, C, H, W) with values in [0, 255]; returns a new tensor."""
        params = {k: v.to(x.device, non_blocking=True) for k, v in self.sample(x.shape[0], generator).items()}
        colour = {k: params.pop(k) for k in ("brightness", "contrast", "saturation", "hue") if k in params}
        if colour:
            x = color_jitter(x, **colour, bound=255.0)
        if "hed_scale" in params:
            x = hed_jitter(x, params.pop("hed_scale"), params.pop("hed_shift"), bound=255.0)
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


# --------------------------------------------------------------------------- colour jitter
# The definitions of torchvision's adjust_brightness / _contrast / _saturation / _hue (checked
# against them in tests/data/test_augment.py), with one factor per image instead of one per call,
# so a batch is jittered in a few tensor operations. Applied in that fixed order, before the rotation
# (so the black fill of a rotated corner stays black).
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601 luma, torchvision's rgb_to_grayscale


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    return (_GRAY[0] * r + _GRAY[1] * g + _GRAY[2] * b).unsqueeze(-3)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor, bound: float) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1.0 - f) * other).clamp(0.0, bound)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=-3)
    maxc, _ = x.max(dim=-3)
    minc, _ = x.min(dim=-3)
    chroma = maxc - minc
    s = chroma / torch.where(maxc == 0, torch.ones_like(maxc), maxc)
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    is_r, is_g = maxc == r, (maxc == g) & (maxc != r)
    h = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.fmod(h / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=-3)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int64) % 6
    p, q, t = v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f))
    choices = torch.stack((  # (sector, channel, ...): the rgb of each of the six hue sectors
        torch.stack((v, t, p), dim=0), torch.stack((q, v, p), dim=0), torch.stack((p, v, t), dim=0),
        torch.stack((p, q, v), dim=0), torch.stack((t, p, v), dim=0), torch.stack((v, p, q), dim=0)))
    index = i.unsqueeze(0).unsqueeze(0).expand(1, 3, *i.shape)
    return torch.gather(choices, 0, index)[0].movedim(0, -3)


def color_jitter(x: torch.Tensor, *, brightness=None, contrast=None, saturation=None, hue=None,
                 bound: float = 1.0) -> torch.Tensor:
    """Brightness, contrast, saturation factors and hue shifts, one per image of ``x`` (N, 3, H, W)
    with values in [0, bound]; None skips that adjustment."""
    if brightness is not None:
        x = (x * brightness.view(-1, 1, 1, 1)).clamp(0.0, bound)
    if contrast is not None:
        x = _blend(x, _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), contrast, bound)
    if saturation is not None:
        x = _blend(x, _grayscale(x), saturation, bound)
    if hue is not None:
        hsv = _rgb_to_hsv(x / bound)
        h = torch.remainder(hsv[:, 0] + hue.view(-1, 1, 1), 1.0)
        x = _hsv_to_rgb(torch.cat((h.unsqueeze(1), hsv[:, 1:]), dim=1)) * bound
    return x


# --------------------------------------------------------------------------- stain jitter
# Colour deconvolution into haematoxylin, eosin and DAB optical densities with scikit-image's matrices
# (Ruifrok & Johnston 2001: skimage.color.hed_from_rgb / rgb_from_hed), written as skimage.color's
# rgb2hed and hed2rgb compute it, so that a batch is jittered on the device in two matrix products.
_LOG_EPS = math.log(1e-6)


def hed_jitter(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, bound: float = 255.0) -> torch.Tensor:
    """Each image of ``x`` (N, 3, H, W, values in [0, bound]) in HED space: its three stain densities
    ``d`` become ``d * scale + shift`` (``scale``, ``shift``: (N, 3)), then back to RGB."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    to_hed = torch.as_tensor(hed_from_rgb, dtype=x.dtype, device=x.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=x.dtype, device=x.device)
    rgb = (x / bound).clamp(min=1e-6).permute(0, 2, 3, 1)  # (N, H, W, 3)
    stains = ((torch.log(rgb) / _LOG_EPS) @ to_hed).clamp(min=0.0)
    stains = stains * scale.view(-1, 1, 1, 3) + shift.view(-1, 1, 1, 3)
    out = torch.exp((stains * _LOG_EPS) @ to_rgb).clamp(0.0, 1.0)
    return (out * bound).permute(0, 3, 1, 2).contiguous()


class Normalize:
    """uint8 (N, 3, H, W) -> float, scaled to [0, 1] and normalised by mean/std per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device="cpu"):
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, -1, 1, 1).to(device)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, -1, 1, 1).to(device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # (x/255 - mean)/std folded into one multiply-add.
        return torch.addcmul(-self.shift, x.float(), self.scale)
