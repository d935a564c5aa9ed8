import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from vild.evaluation import (
    detections_to_coco_results,
    evaluate_lvis,
    format_table,
    load_results,
    save_results,
)
from vild.model.outputs import Detections

from .gt_builder import OBJECTS, shape_mask

# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _detections(masks: bool = True) -> Detections:
    h, w = 20, 30
    m = torch.zeros(2, h, w)
    m[0, 2:8, 3:10] = 0.9
    m[0, 2:8, 10:12] = 0.4  # below threshold
    m[1, 10:18, 5:25] = 0.6
    return Detections(
        boxes=torch.tensor([[3.0, 2.0, 10.0, 8.0], [5.5, 10.0, 25.0, 18.0]]),
        scores=torch.tensor([0.9, 0.3]),
        labels=torch.tensor([1, 0]),
        image_size=(h, w),
        masks=m if masks else None,
    )


def test_conversion():
    dets = _detections()
    res = detections_to_coco_results(dets, 7, [11, 22])
    assert [r["category_id"] for r in res] == [22, 11]
    assert all(r["image_id"] == 7 for r in res)
    assert res[0]["bbox"] == pytest.approx([3.0, 2.0, 7.0, 6.0])
    assert res[1]["bbox"] == pytest.approx([5.5, 10.0, 19.5, 8.0])
    assert res[0]["score"] == pytest.approx(0.9)
    for r, m in zip(res, dets.masks):
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [20, 30]
        decoded = mask_utils.decode(r["segmentation"])
        assert np.array_equal(decoded, (m > 0.5).numpy().astype(np.uint8))
    res = detections_to_coco_results(dets, 7, [11, 22], mask_threshold=0.3)
    assert mask_utils.decode(res[0]["segmentation"])[2:8, 10:12].all()


def test_conversion_without_masks_and_empty():
    res = detections_to_coco_results(_detections(masks=False), 1, [11, 22])
    assert all("segmentation" not in r for r in res)
    res = detections_to_coco_results(_detections(), 1, [11, 22], with_masks=False)
    assert all("segmentation" not in r for r in res)
    assert detections_to_coco_results(Detections.empty((5, 5), with_masks=True), 1, [1]) == []
    with pytest.raises(ValueError):
        detections_to_coco_results(_detections(), 1, [11])  # label 1 has no category id


def test_save_load_roundtrip(tmp_path):
    res = detections_to_coco_results(_detections(), 3, [1, 2])
    save_results(tmp_path / "r" / "results.json", res)
    assert load_results(tmp_path / "r" / "results.json") == res


def test_detections_end_to_end(gt):
    # a detector's output for the GT objects, vocabulary order reversed against category ids
    vocab_to_cat = [c["id"] for c in gt["categories"]][::-1]
    results = []
    for img_id, objs in OBJECTS.items():
        masks = torch.stack([torch.from_numpy(shape_mask(s, p)).float() for _, s, p in objs])
        boxes = []
        for m in masks:
            ys, xs = torch.nonzero(m, as_tuple=True)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        dets = Detections(
            boxes=torch.tensor(boxes, dtype=torch.float32),
            scores=torch.linspace(0.9, 0.5, len(objs)),
            labels=torch.tensor([vocab_to_cat.index(c) for c, _, _ in objs]),
            image_size=(masks.shape[1], masks.shape[2]),
            masks=masks,
        )
        results += detections_to_coco_results(dets, img_id, vocab_to_cat)
    m = evaluate_lvis(gt, results)
    assert m["segm"]["AP"] == pytest.approx(100.0)
    assert m["bbox"]["AP"] == pytest.approx(100.0)
    table = format_table({"perfect": m["segm"]})
    assert table.splitlines()[0] == "| method | APr | APc | APf | AP |"
    assert table.splitlines()[2] == "| perfect | 100.0 | 100.0 | 100.0 | 100.0 |"
