"""The section-27 diagnostics: proposal kinds of a region store, box refinement on shared proposals."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from box_refinement import refinement  # noqa: E402
from store_parts import proposal_kinds  # noqa: E402
from tests.model.conftest import make_batch, tiny_config  # noqa: E402
from vild.model import build_detector  # noqa: E402


def test_proposal_kinds_by_iou_with_base_and_novel_objects():
    objects = [{"bbox": [0, 0, 10, 10], "category_id": 1}, {"bbox": [50, 50, 10, 10], "category_id": 9}]
    boxes = torch.tensor([[0.0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 4, 10], [52, 50, 70, 60], [80, 80, 90, 90]])
    kinds, best_base = proposal_kinds(boxes, objects, novel_ids={9})
    assert kinds == ["base object", "novel object", "part or loose box", "part or loose box", "background"]
    assert best_base.tolist() == pytest.approx([1.0, 0.0, 0.4, 0.0, 0.0])
    assert proposal_kinds(boxes[:1], [], novel_ids={9})[0] == ["background"]


def test_refinement_pairs_each_proposal_with_its_object():
    images, targets = make_batch(num_images=1)
    dataset = [(images[0], {"boxes": targets[0]["boxes"], "labels": targets[0]["labels"]})]
    model = build_detector(tiny_config())
    # object 0 [10, 8, 28, 30] is base (label 0), object 1 [34, 36, 58, 60] novel (label 1)
    proposals = torch.tensor([[10.0, 8, 28, 30], [12, 8, 28, 30], [34, 36, 58, 60], [0, 0, 5, 5]])
    model._propose = lambda image_list, features, targets: ([proposals], [torch.ones(4)], {})
    base = torch.tensor([True, False])
    with torch.no_grad():
        model.roi_heads.box_regressor.weight.zero_()
        model.roi_heads.box_regressor.bias.zero_()
    same = refinement(model, dataset, base, max_images=1)
    assert same["base"]["proposals"] == 2 and same["novel"]["proposals"] == 1  # [0, 0, 5, 5] matches nothing
    assert same["base"]["refined_iou"] == same["base"]["proposal_iou"] == pytest.approx((1 + 16 / 18) / 2, abs=1e-4)
    assert same["novel"]["refined_iou"] == same["novel"]["proposal_iou"] == 1.0
    with torch.no_grad():
        model.roi_heads.box_regressor.bias[0] = 1.0  # every box moves right by a tenth of its width
    moved = refinement(model, dataset, base, max_images=1)
    assert moved["novel"]["refined_iou"] < 1.0 and moved["novel"]["proposal_iou"] == 1.0
