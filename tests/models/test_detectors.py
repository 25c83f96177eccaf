"""The detection zoo (bench.models.detection_zoo): every detector in the registry trains a step and
predicts the dataset's classes, COCO weights load with new class layers, and the detection cap is
set in one place."""

from __future__ import annotations


import pytest
import torch
import torchvision

from bench.models import PretrainedWeightsUnavailable, create_model, get_model_spec, list_models, weights as weights_mod


DETECTORS = [n for n in list_models() if get_model_spec(n).task == "detection"]


def test_the_detection_zoo_is_in_the_registry():
    assert sorted(DETECTORS) == sorted([
        "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
        "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
        "fcos_resnet50_fpn", "ssd300_vgg16", "ssdlite320_mobilenet_v3_large"])


@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_trains_a_step_and_predicts_the_datasets_classes(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained=False, image_size=128)
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]), "labels": torch.tensor([3])},
               {"boxes": torch.tensor([[30.0, 40.0, 90.0, 100.0]]), "labels": torch.tensor([1])}]
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and set(out[0]) >= {"boxes", "labels", "scores"}
    assert all(int(label) in (1, 2, 3) for p in out for label in p["labels"])  # background 0 is never a box


def test_a_detectors_coco_weights_load_and_its_class_layers_are_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(weights_mod, "_download", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    coco = torchvision.models.get_model_weights(name).DEFAULT
    torch.manual_seed(1)
    stand_in = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                                                  num_classes=91)
    path = tmp_path / "torch" / "hub" / "checkpoints" / coco.url.rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True)
    torch.save(stand_in.state_dict(), path)
    model = create_model(name, num_classes=3, pretrained=True, image_size=128)
    key = "backbone.body.0.0.weight"
    assert torch.equal(model.state_dict()[key], stand_in.state_dict()[key])  # the COCO backbone
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    with pytest.raises(PretrainedWeightsUnavailable, match="retinanet_resnet50_fpn"):
        create_model("retinanet_resnet50_fpn", num_classes=3, pretrained=True, image_size=128)


@pytest.mark.known_answer
def test_the_cap_is_set_in_one_place_not_through_detector_kwargs():
    """torchvision's own option would be overridden by model.max_detections (and COCO's maxDets would not
    follow it): naming it is a preflight problem that points to the option."""
    from bench.models.detection_zoo import detector_options_problem

    problem = detector_options_problem("fasterrcnn_mobilenet_v3_large_320_fpn", {"box_detections_per_img": 500})
    assert problem and "model.max_detections=500" in problem
    problem = detector_options_problem("retinanet_resnet50_fpn", {"retinanet": {"detections_per_img": 50}})
    assert problem and "model.max_detections=50" in problem
