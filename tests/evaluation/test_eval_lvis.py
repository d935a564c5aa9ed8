import math

import pytest

from vild.errors import VildError
from vild.evaluation import LVIS_METRICS, evaluate_lvis, load_lvis_gt, save_results

from .gt_builder import RARE


def test_perfect_predictions_give_100(gt, make_results):
    m = evaluate_lvis(gt, make_results(gt))
    assert set(m) == {"segm", "bbox"}
    for iou_type in ("segm", "bbox"):
        assert set(LVIS_METRICS) <= set(m[iou_type])
        for k in ("AP", "AP50", "AP75", "APr", "APc", "APf"):
            assert m[iou_type][k] == pytest.approx(100.0), (iou_type, k)
        assert all(isinstance(v, float) for v in m[iou_type].values())


def test_shifted_boxes_lower_ap(gt, make_results):
    m = evaluate_lvis(gt, make_results(gt, shift=4))
    for iou_type in ("segm", "bbox"):
        assert m[iou_type]["AP"] < 90.0
        assert m[iou_type]["AP50"] > m[iou_type]["AP"]


def test_empty_predictions_give_zero(gt):
    m = evaluate_lvis(gt, [])
    for iou_type in ("segm", "bbox"):
        for k in ("AP", "AP50", "APr", "APc", "APf"):
            assert m[iou_type][k] == 0.0


def test_apr_reflects_only_rare(gt, make_results):
    m = evaluate_lvis(gt, make_results(gt, categories=RARE))
    for iou_type in ("segm", "bbox"):
        assert m[iou_type]["APr"] == pytest.approx(100.0)
        assert m[iou_type]["APc"] == 0.0
        assert m[iou_type]["APf"] == 0.0
        assert 0.0 < m[iou_type]["AP"] < 100.0


def test_federated_false_positives(gt, make_results):
    base = make_results(gt)
    # heart (4) is in image 1's negative list: a confident false positive there costs AP
    fp_neg = {"image_id": 1, "category_id": 4, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 2.0}
    m = evaluate_lvis(gt, base + [fp_neg], iou_types=("bbox",))
    assert m["bbox"]["APr"] < 100.0
    # square (2) is neither present nor negative in image 2: not penalised
    fp_unknown = {"image_id": 2, "category_id": 2, "bbox": [0.0, 0.0, 10.0, 10.0], "score": 2.0}
    # circle (1) is not exhaustively annotated in image 3: an unmatched detection is ignored
    fp_nel = {"image_id": 3, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 2.0}
    m = evaluate_lvis(gt, base + [fp_unknown, fp_nel], iou_types=("bbox",))
    assert m["bbox"]["AP"] == pytest.approx(100.0)
    # the same detection where circles are exhaustively annotated (image 1) is a false positive
    fp_exhaustive = dict(fp_nel, image_id=1)
    m = evaluate_lvis(gt, base + [fp_exhaustive], iou_types=("bbox",))
    assert m["bbox"]["APf"] < 100.0


def test_max_dets_per_image(gt, make_results):
    # 5 confident junk detections of a category in image 2's negative list push image 2's
    # objects out of the top 5
    junk = [{"image_id": 2, "category_id": 3, "bbox": [0.0, 0.0, 3.0, 3.0], "score": 5.0}] * 5
    full = evaluate_lvis(gt, make_results(gt) + junk, iou_types=("bbox",), max_dets=300)
    cut = evaluate_lvis(gt, make_results(gt) + junk, iou_types=("bbox",), max_dets=5)
    assert cut["bbox"]["AP"] < full["bbox"]["AP"]


def test_paths_and_lvis_object_and_image_subset(tmp_path, gt, gt_path, make_results):
    res_path = tmp_path / "results.json"
    save_results(res_path, make_results(gt, categories=(1,)))
    m = evaluate_lvis(str(gt_path), res_path, iou_types=("segm",))
    assert m["segm"]["APf"] > 0.0
    lvis_gt = load_lvis_gt(gt_path)
    assert load_lvis_gt(lvis_gt) is lvis_gt
    # image 1 holds no triangle (the other frequent category): perfect on circles there -> APf 100
    m = evaluate_lvis(lvis_gt, res_path, iou_types=("bbox",), image_ids=[1])
    assert m["bbox"]["APf"] == pytest.approx(100.0)
    assert m["bbox"]["APc"] == 0.0
    # image 1 has a star, not detected -> APr 0
    assert m["bbox"]["APr"] == 0.0
    # undefined -> NaN: image 2 has no common-category objects
    m = evaluate_lvis(lvis_gt, res_path, iou_types=("bbox",), image_ids=[2])
    assert math.isnan(m["bbox"]["APc"])


def test_results_not_mutated_and_segm_uses_masks(gt, make_results):
    res = make_results(gt)
    before = [dict(r) for r in res]
    evaluate_lvis(gt, res)
    assert res == before


def test_clear_errors(gt, make_results):
    with pytest.raises(VildError, match="category ids"):
        evaluate_lvis(gt, [{"image_id": 1, "category_id": 99, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(VildError, match="image ids"):
        evaluate_lvis(gt, [{"image_id": 42, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}])
    with pytest.raises(VildError, match="segmentation"):
        evaluate_lvis(gt, make_results(gt, with_masks=False))
    m = evaluate_lvis(gt, make_results(gt, with_masks=False), iou_types=("bbox",))
    assert m["bbox"]["AP"] == pytest.approx(100.0)
    bad = dict(gt, images=[{k: v for k, v in im.items() if k != "neg_category_ids"} for im in gt["images"]])
    with pytest.raises(VildError, match="neg_category_ids"):
        evaluate_lvis(bad, [])
