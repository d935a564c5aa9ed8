"""`Detections.to_hf()`: the transformers zero-shot-object-detection pipeline's output format."""

from __future__ import annotations

import json

import pytest
import torch

from vild.errors import VildError
from vild.model.outputs import Detections


def _dets(class_names=("star", "red ring", "circle")):
    return Detections(
        boxes=torch.tensor([[3.7, 2.2, 15.9, 10.5],
                            [0.4, 1.999, 7.5, 8.01],
                            [5.0, 6.0, 9.0, 12.0],
                            [1.0, 1.0, 2.0, 2.0]]),
        scores=torch.tensor([0.4, 0.9, 0.4, 0.05]),
        labels=torch.tensor([2, 0, 1, 1]),
        image_size=(20, 30),
        class_names=class_names,
    )


def _pipeline_postprocess(det: Detections) -> list[dict]:
    """What transformers' ZeroShotObjectDetectionPipeline.postprocess + _get_bounding_box do
    with one score/box tensor per detection (transformers 4.4x, pipelines/zero_shot_object_detection.py)."""
    results = []
    for i in range(len(det)):
        score = det.scores[i].item()
        xmin, ymin, xmax, ymax = det.boxes[i].int().tolist()
        results.append({"score": score, "label": det.class_names[int(det.labels[i])],
                        "box": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}})
    return sorted(results, key=lambda x: x["score"], reverse=True)


def test_to_hf_matches_the_pipeline_format_and_types():
    d = _dets()
    out = d.to_hf()
    assert out == _pipeline_postprocess(d)
    assert [r["label"] for r in out] == ["star", "circle", "red ring", "red ring"]  # ties: detection order
    assert [r["score"] for r in out] == pytest.approx([0.9, 0.4, 0.4, 0.05])
    # Tensor.int() truncates: 3.7 -> 3, 15.9 -> 15, 1.999 -> 1 (not rounded)
    assert out[1]["box"] == {"xmin": 3, "ymin": 2, "xmax": 15, "ymax": 10}
    assert out[0]["box"] == {"xmin": 0, "ymin": 1, "xmax": 7, "ymax": 8}
    for r in out:
        assert list(r) == ["score", "label", "box"] and list(r["box"]) == ["xmin", "ymin", "xmax", "ymax"]
        assert type(r["score"]) is float and type(r["label"]) is str
        assert all(type(v) is int for v in r["box"].values())
    json.dumps(out)


def test_to_hf_threshold_top_k_and_empty():
    d = _dets()
    assert [r["score"] for r in d.to_hf(threshold=0.1)] == pytest.approx([0.9, 0.4, 0.4])
    assert [r["label"] for r in d.to_hf(top_k=2)] == ["star", "circle"]
    assert d.to_hf(threshold=0.95) == []
    assert Detections.empty((4, 5), class_names=["a"]).to_hf() == []


def test_to_hf_needs_class_names():
    with pytest.raises(VildError, match="needs class names") as e:
        _dets(class_names=None).to_hf()
    assert "\n" not in str(e.value)
