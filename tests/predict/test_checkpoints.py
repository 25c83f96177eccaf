"""Loading a checkpoint for prediction (bench.predict.checkpoints)."""

from __future__ import annotations


import torch

from bench.models import create_model
from bench.predict import checkpoints as predict_checkpoints


def test_transform_input_follows_pretrained(tmp_path):
    """googlenet/inception_v3 fine-tuned from ImageNet weights expect transform_input=True."""
    model = create_model("googlenet", num_classes=3, pretrained=False)
    ckpt = {"model": model.state_dict(), "model_name": "googlenet", "class_names": ["a", "b", "c"],
            "input_size": 64, "mean": [0.5] * 3, "std": [0.25] * 3, "pretrained": True}
    torch.save(ckpt, tmp_path / "pretrained.pt")
    del ckpt["pretrained"]  # older checkpoints: treated as trained from scratch
    torch.save(ckpt, tmp_path / "old.pt")
    loaded = predict_checkpoints.load_checkpoint(tmp_path / "pretrained.pt")
    assert loaded.model.transform_input is True and not loaded.model.training
    assert predict_checkpoints.load_checkpoint(tmp_path / "old.pt").model.transform_input is False
