"""Stain jitter in HED space (bench.data.transforms.hed_jitter, data.augment.hed) against scikit-image's
own colour deconvolution, image by image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from bench.data.transforms import BatchAugment, hed_jitter


def _images(n=3, size=12, seed=0):
    return torch.as_tensor(np.random.default_rng(seed).integers(0, 256, (n, 3, size, size)), dtype=torch.float64)


def test_the_batched_jitter_is_scikit_images_deconvolution_scaled_and_shifted():
    x = _images()
    scale = torch.tensor([[1.1, 0.9, 1.0], [0.95, 1.05, 1.2], [1.0, 1.0, 1.0]], dtype=torch.float64)
    shift = torch.tensor([[0.02, -0.03, 0.0], [0.0, 0.01, -0.05], [0.0, 0.0, 0.0]], dtype=torch.float64)
    ours = hed_jitter(x, scale, shift)
    for i in range(len(x)):
        rgb = x[i].permute(1, 2, 0).numpy() / 255.0
        expected = hed2rgb(rgb2hed(rgb) * scale[i].numpy() + shift[i].numpy()) * 255.0
        np.testing.assert_allclose(ours[i].permute(1, 2, 0).numpy(), expected, atol=1e-6)


def test_no_jitter_draws_nothing_extra_and_hed_draws_within_its_range():
    g = torch.Generator().manual_seed(0)
    plain = BatchAugment().sample(64, g)
    assert set(plain) == {"hflip", "vflip", "angle"}
    with_hed = BatchAugment(hed=0.05).sample(64, torch.Generator().manual_seed(0))
    for k in ("hflip", "vflip", "angle"):  # the flips and angles are the same draws as without it
        assert torch.equal(with_hed[k], plain[k])
    assert ((with_hed["hed_scale"] - 1).abs() <= 0.05).all() and (with_hed["hed_shift"].abs() <= 0.05).all()


def test_hed_is_part_of_the_run_identity_and_the_protocol_column():
    from bench.config import compose_config, run_identity
    from bench.config.recipe import protocol_deviations

    base = compose_config(["experiment=gavas2021", "data.root=/d", "model=resnet50"])
    jittered = compose_config(["experiment=gavas2021", "data.root=/d", "model=resnet50", "data.augment.hed=0.05"])
    assert run_identity(base)[1] != run_identity(jittered)[1]
    assert "data.augment.hed=0.05 (paper: 0.0)" in protocol_deviations(jittered)
    assert run_identity(compose_config(["data.augment.hed=0"]))[1] == run_identity(compose_config([]))[1]


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_hed_range_outside_0_to_1_is_named(value):
    from bench.config import compose_config
    from bench.config.checks import validate_config

    problems = validate_config(compose_config([f"data.augment.hed={value}"]))
    assert any(p.startswith("data.augment.hed=") for p in problems)
