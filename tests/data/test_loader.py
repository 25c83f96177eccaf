"""Batches (bench.data.loader): evaluation batches are the normalised store, training batches
depend only on (seed, epoch), balance_to and the balanced sampler."""

from __future__ import annotations


import pytest
import torch

from bench.data.loader import BatchLoader
from bench.data.transforms import BatchAugment, Normalize


def test_eval_batches_are_the_normalised_store():
    from bench.data.store import SplitData

    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    split = SplitData(images, torch.arange(5), [str(i) for i in range(5)])
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    loader = BatchLoader(split, 2, normalize=Normalize(mean, std), device=torch.device("cpu"))
    xs, ys = zip(*loader)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(xs), expected, atol=1e-5, rtol=0)
    assert torch.cat(ys).tolist() == [0, 1, 2, 3, 4]


def test_training_batches_depend_only_on_seed_and_epoch():
    from bench.data.store import SplitData

    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    split = SplitData(images, torch.arange(10), [str(i) for i in range(10)])

    def epoch_batches(epoch):
        loader = BatchLoader(split, 4, normalize=Normalize([0.5] * 3, [0.5] * 3), device=torch.device("cpu"),
                             shuffle=True, augment=BatchAugment(), seed=1)
        loader.set_epoch(epoch)
        return [(x.clone(), y.clone()) for x, y in loader]

    a, b, c = epoch_batches(2), epoch_batches(2), epoch_batches(3)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(y1, y2) for (_, y1), (_, y2) in zip(a, c))


def test_balance_to_tops_each_smaller_class_up_with_its_own_images_evenly():
    from bench.data.store import SplitData

    # 3 images of class 0, 5 of class 1, 10 of class 2; every image's pixels hold its index.
    labels = torch.tensor([0] * 3 + [1] * 5 + [2] * 10)
    images = torch.arange(18, dtype=torch.uint8).view(18, 1, 1, 1).expand(18, 3, 2, 2).contiguous()
    split = SplitData(images, labels, [str(i) for i in range(18)])
    loader = BatchLoader(split, 4, normalize=Normalize([0.0] * 3, [1.0] * 3), device=torch.device("cpu"),
                         shuffle=True, seed=0, balance_to=8)
    assert len(loader) == 7  # 8 + 8 + 10 = 26 draws per epoch, in batches of 4
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        drawn = torch.cat([(x[:, 0, 0, 0] * 255).round().long() for x, _ in loader])
        ys = torch.cat([y for _, y in loader])
        assert torch.equal(labels[drawn], ys)
        counts = torch.bincount(drawn, minlength=18).tolist()
        # 8 draws of 3 images: each 2 or 3 times (8 = 3 + 3 + 2); of 5: each 1 or 2 times (8 = 2+2+2+1+1);
        # the class of 10 (more than 8) is kept whole, each image once.
        assert sorted(counts[:3]) == [2, 3, 3] and sorted(counts[3:8]) == [1, 1, 2, 2, 2]
        assert counts[8:] == [1] * 10
        orders.append(drawn)
    assert not torch.equal(orders[0], orders[1])  # which images get the extra copies changes per epoch
    with pytest.raises(ValueError, match="both balance"):
        BatchLoader(split, 4, normalize=Normalize([0.0] * 3, [1.0] * 3), device=torch.device("cpu"),
                    balance_to=8, sample_weights=torch.ones(18))


@pytest.mark.own_data
def test_balanced_sampler_draws_every_class_about_equally():
    from bench.data.loader import BatchLoader, sampler_weights
    from bench.data.store import SplitData

    labels = torch.tensor([0] * 90 + [1] * 10)
    split = SplitData(torch.zeros(100, 3, 4, 4, dtype=torch.uint8), labels, [str(i) for i in range(100)])
    loader = BatchLoader(split, 25, normalize=Normalize([0, 0, 0], [1, 1, 1]), device=torch.device("cpu"),
                         shuffle=True, seed=0, sample_weights=sampler_weights("balanced", labels, 2))
    drawn = torch.cat([y for _, y in loader])
    assert len(drawn) == 100  # an epoch is still one pass worth of images
    assert 0.35 < drawn.float().mean() < 0.65  # the 10 % class is half the draws (seeded: deterministic)
    plain = BatchLoader(split, 25, normalize=Normalize([0, 0, 0], [1, 1, 1]), device=torch.device("cpu"),
                        shuffle=True, seed=0)
    assert sorted(torch.cat([y for _, y in plain]).tolist()) == sorted(labels.tolist())
