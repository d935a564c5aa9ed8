import math

import numpy as np
import pytest
import torch

from vild.errors import VildError
from vild.evaluation import proposal_recall

from .gt_builder import RARE


def _xyxy(ann):
    x, y, w, h = ann["bbox"]
    return [x, y, x + w, y + h]


def _proposals(gt, categories=None, junk=0):
    props = {}
    rng = np.random.default_rng(0)
    for img in gt["images"]:
        boxes = [_xyxy(a) for a in gt["annotations"]
                 if a["image_id"] == img["id"] and (categories is None or a["category_id"] in categories)]
        scores = [0.5] * len(boxes)
        # junk: tiny boxes in the corner, scored above the real ones
        for _ in range(junk):
            x, y = rng.uniform(0, 3, size=2)
            boxes.append([x, y, x + 2, y + 2])
            scores.append(0.9)
        props[img["id"]] = (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(scores))
    return props


def test_perfect_proposals_give_100(gt):
    ar = proposal_recall(gt, _proposals(gt))
    assert set(ar) == {"AR@100", "AR@300", "AR@1000"}
    for v in ar.values():
        assert v == pytest.approx(100.0)


def test_base_only_proposals_give_zero_novel_recall(gt):
    base = [c["id"] for c in gt["categories"] if c["id"] not in RARE]
    props = _proposals(gt, categories=base)
    novel = proposal_recall(gt, props, category_ids=RARE)
    assert all(v == 0.0 for v in novel.values())
    assert proposal_recall(gt, props, category_ids=base)["AR@100"] == pytest.approx(100.0)


def test_limits_take_top_scored(gt):
    props = _proposals(gt, junk=150)  # 150 junk boxes above the real ones
    ar = proposal_recall(gt, props, limits=(100, 300))
    assert ar["AR@100"] == 0.0
    assert ar["AR@300"] == pytest.approx(100.0)


def test_numpy_inputs_missing_images_and_undefined(gt):
    props = {k: (b.numpy(), s.numpy()) for k, (b, s) in _proposals(gt).items()}
    del props[3]
    assert proposal_recall(gt, props)["AR@100"] == pytest.approx(100.0)  # keys define the images
    partial = proposal_recall(gt, props, image_ids=[1, 2, 3])["AR@100"]
    assert 0.0 < partial < 100.0  # image 3's objects are missed
    # no object of the subset in the evaluated images -> undefined
    assert math.isnan(proposal_recall(gt, {1: props[1]}, category_ids=[4])["AR@100"])
    empty = {1: (np.zeros((0, 4)), np.zeros(0))}
    assert proposal_recall(gt, empty)["AR@100"] == 0.0


def test_errors(gt):
    with pytest.raises(VildError):
        proposal_recall(gt, {42: (np.zeros((0, 4)), np.zeros(0))})
    with pytest.raises(VildError):
        proposal_recall(gt, _proposals(gt), category_ids=[99])
    with pytest.raises(ValueError):
        proposal_recall(gt, {1: (np.zeros((3, 5)), np.zeros(3))})
