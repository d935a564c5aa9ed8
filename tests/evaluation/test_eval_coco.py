import math

import pytest

from vild.errors import VildError
from vild.evaluation import COCO_METRICS, SPLIT_METRICS, evaluate_coco, load_coco_gt

from .gt_builder import RARE


def test_loads_lvis_format_quietly(gt_path, capsys):
    coco = load_coco_gt(gt_path)
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    assert all(a["iscrowd"] == 0 for a in coco.dataset["annotations"])
    assert capsys.readouterr().out == ""
    assert load_coco_gt(coco) is coco


def test_perfect_predictions_give_100(gt, make_results, capsys):
    m = evaluate_coco(gt, make_results(gt))
    assert capsys.readouterr().out == ""
    for iou_type in ("segm", "bbox"):
        assert set(COCO_METRICS) | set(SPLIT_METRICS) <= set(m[iou_type])
        for k in ("AP", "AP50", "AP75", *SPLIT_METRICS):
            assert m[iou_type][k] == pytest.approx(100.0), (iou_type, k)


def test_shifted_boxes_lower_ap(gt, make_results):
    m = evaluate_coco(gt, make_results(gt, shift=4))
    for iou_type in ("segm", "bbox"):
        assert m[iou_type]["AP"] < 90.0
        assert m[iou_type]["AP50"] > m[iou_type]["AP"]


def test_empty_predictions_give_zero(gt):
    m = evaluate_coco(gt, [])
    for iou_type in ("segm", "bbox"):
        for k in ("AP", "AP50", *SPLIT_METRICS):
            assert m[iou_type][k] == 0.0


def test_novel_base_split(gt, make_results):
    # default novel = frequency 'r'
    m = evaluate_coco(gt, make_results(gt, categories=RARE))
    for iou_type in ("segm", "bbox"):
        assert m[iou_type]["AP50_novel"] == pytest.approx(100.0)
        assert m[iou_type]["Recall@100_novel"] == pytest.approx(100.0)
        assert m[iou_type]["AP50_base"] == 0.0
        assert m[iou_type]["Recall@100_base"] == 0.0
    # explicit split: circle (1) novel, perfect on circles only
    m = evaluate_coco(gt, make_results(gt, categories=(1,)), iou_types=("bbox",), novel_category_ids=[1])
    assert m["bbox"]["AP50_novel"] == pytest.approx(100.0)
    assert m["bbox"]["AP50_base"] == 0.0
    # 5 annotated categories (moon has no objects), one of them perfect -> overall AP50 20
    assert m["bbox"]["AP50"] == pytest.approx(20.0)
    # no novel categories -> NaN novel metrics, base = all
    m = evaluate_coco(gt, make_results(gt), iou_types=("bbox",), novel_category_ids=[])
    assert math.isnan(m["bbox"]["AP50_novel"])
    assert m["bbox"]["AP50_base"] == pytest.approx(100.0)


def test_novel_flag_preferred(gt, make_results):
    for c in gt["categories"]:
        c["novel"] = c["id"] == 5
    m = evaluate_coco(gt, make_results(gt, categories=(5,)), iou_types=("bbox",))
    assert m["bbox"]["AP50_novel"] == pytest.approx(100.0)
    assert m["bbox"]["AP50_base"] == 0.0


def test_exhaustive_false_positives_count(gt, make_results):
    # unlike LVIS, COCO evaluation is exhaustive: a confident FP of an absent category costs AP
    fp = {"image_id": 2, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 2.0}
    m = evaluate_coco(gt, make_results(gt) + [fp], iou_types=("bbox",))
    assert m["bbox"]["AP"] < 100.0


def test_clear_errors(gt, make_results):
    with pytest.raises(VildError, match="category ids"):
        evaluate_coco(gt, [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(VildError, match="novel category ids"):
        evaluate_coco(gt, [], novel_category_ids=[99])
    with pytest.raises(ValueError):
        evaluate_coco(gt, [], iou_types=("keypoints",))
