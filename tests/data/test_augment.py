"""Batch augmentation on the device (bench.data.transforms): flips, rotations as torchvision's,
colour jitter as torchvision's, seeded sampling."""

from __future__ import annotations

import math

import pytest
import torch

from bench.data.transforms import BatchAugment, apply_augment


# --------------------------------------------------------------------------- augmentation
def _batch(n=4, size=16):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255


def test_flips_are_exact():
    x = _batch()
    zero = torch.zeros(4)
    yes, no = torch.ones(4, dtype=torch.bool), torch.zeros(4, dtype=torch.bool)
    torch.testing.assert_close(apply_augment(x, hflip=yes, vflip=no, angle=zero), x.flip(-1), atol=1e-3, rtol=0)
    torch.testing.assert_close(apply_augment(x, hflip=no, vflip=yes, angle=zero), x.flip(-2), atol=1e-3, rtol=0)
    torch.testing.assert_close(apply_augment(x, hflip=no, vflip=no, angle=zero), x, atol=1e-3, rtol=0)


def test_rotation_by_90_degrees_is_rot90():
    x = _batch()
    no = torch.zeros(4, dtype=torch.bool)
    out = apply_augment(x, hflip=no, vflip=no, angle=torch.full((4,), math.pi / 2))
    rotated = [x.rot90(k, dims=(-2, -1)) for k in (1, -1)]
    assert min((out - r).abs().max().item() for r in rotated) < 1e-2


@pytest.mark.parametrize("angle_deg", [-60.0, -23.0, 37.0, 60.0])
def test_nearest_rotation_matches_torchvision_random_rotation(angle_deg):
    # The per-image pipeline of the paper: torchvision's rotate (counter-clockwise for a
    # positive angle) with its default nearest sampling and a black fill. The batched path
    # lands on the same pixels; 0.5% slack covers sample points on a pixel boundary.
    from torchvision.transforms.v2 import functional as TF

    x = _batch(size=48)
    ref = torch.stack([TF.rotate(img, angle_deg) for img in x])
    no = torch.zeros(x.shape[0], dtype=torch.bool)
    out = apply_augment(x, hflip=no, vflip=no, angle=torch.full((x.shape[0],), math.radians(angle_deg)))
    mismatch = ((out - ref).abs() > 1e-6).any(1).float().mean().item()
    assert mismatch < 0.005, f"batched rotation differs from torchvision on {mismatch:.1%} of pixels"


def test_unknown_interpolation_is_a_clear_error():
    with pytest.raises(ValueError, match="data.augment.interpolation='bicubic'.*nearest"):
        BatchAugment(interpolation="bicubic")


def test_augmentation_is_seeded_and_covers_flips_and_rotations():
    aug = BatchAugment(rotation=60)
    p1 = aug.sample(2000, torch.Generator().manual_seed(7))
    p2 = aug.sample(2000, torch.Generator().manual_seed(7))
    for k in p1:
        assert torch.equal(p1[k], p2[k])
    assert 0.4 < p1["hflip"].float().mean() < 0.6 and 0.4 < p1["vflip"].float().mean() < 0.6
    deg = torch.rad2deg(p1["angle"])
    assert deg.abs().max() <= 60 and deg.min() < -55 and deg.max() > 55
    off = BatchAugment(hflip=False, vflip=False, rotation=0).sample(100, torch.Generator().manual_seed(0))
    assert not off["hflip"].any() and not off["vflip"].any() and (off["angle"] == 0).all()


# --------------------------------------------------------------------------- colour jitter
@pytest.mark.own_data
@pytest.mark.parametrize("op, factor", [("brightness", 1.3), ("contrast", 0.6), ("saturation", 1.7), ("hue", 0.12),
                                        ("hue", -0.3)])
def test_colour_jitter_matches_torchvision(op, factor):
    from torchvision.transforms.v2 import functional as tvf

    from bench.data.transforms import color_jitter

    torch.manual_seed(0)
    x = torch.rand(3, 3, 9, 11)
    factors = torch.tensor([factor, 1.0 if op != "hue" else 0.0, factor / 2 if op != "hue" else factor / 3])
    got = color_jitter(x, **{op: factors})
    adjust = getattr(tvf, f"adjust_{op}")
    expected = torch.stack([adjust(x[i], float(f)) for i, f in enumerate(factors)])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.own_data
def test_colour_jitter_in_the_loader_scale_and_off_by_default():
    off = BatchAugment(hflip=False, vflip=False, rotation=0.0)
    x = torch.randint(0, 256, (4, 3, 8, 8)).float()
    assert torch.equal(off(x, torch.Generator().manual_seed(0)), x)
    # With jitter the same generator still draws the same flips and angles first.
    geometric, on = BatchAugment(rotation=30.0), BatchAugment(rotation=30.0, brightness=0.4, hue=0.1)
    a, b = geometric.sample(6, torch.Generator().manual_seed(1)), on.sample(6, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in ("hflip", "vflip", "angle"))
    assert ((b["brightness"] >= 0.6) & (b["brightness"] <= 1.4)).all() and (b["hue"].abs() <= 0.1).all()
    y = on(x, torch.Generator().manual_seed(2))
    assert y.min() >= 0 and y.max() <= 255 and not torch.equal(y, x)
