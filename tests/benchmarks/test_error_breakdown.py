"""The error breakdown of a row's top-ranked detections."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from error_breakdown import breakdown  # noqa: E402

NOVEL, BASE = 7, 3


def _annotations():
    # image 1: a novel object and a base object side by side; image 2: two novel objects;
    # image 3 is not evaluated
    objects = [(1, NOVEL, [0, 0, 10, 10]), (1, BASE, [50, 0, 10, 10]),
               (2, NOVEL, [0, 0, 20, 20]), (2, NOVEL, [40, 40, 20, 20]), (3, NOVEL, [0, 0, 10, 10])]
    return {"images": [{"id": i} for i in (1, 2, 3)],
            "categories": [{"id": NOVEL}, {"id": BASE}],
            "annotations": [{"id": k, "image_id": im, "category_id": c, "bbox": b}
                            for k, (im, c, b) in enumerate(objects)]}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_each_top_ranked_detection_is_put_in_one_kind():
    detections = [
        _det(1, NOVEL, [0, 0, 10, 10], 0.9),     # hit
        _det(1, NOVEL, [1, 0, 10, 10], 0.8),     # duplicate of the same object
        _det(2, NOVEL, [0, 0, 10, 10], 0.7),     # loose: IoU 0.25 with its object
        _det(1, NOVEL, [50, 0, 10, 10], 0.6),    # the base object, named novel
        _det(2, NOVEL, [40, 40, 20, 20], 0.5),   # a hit, but ranked 5th of 3 wanted: not counted
        _det(3, NOVEL, [0, 0, 10, 10], 0.95),    # image 3 is not evaluated: left out
        _det(1, BASE, [90, 90, 5, 5], 0.4),      # background
        _det(1, BASE, [0, 0, 5, 10], 0.3),       # half of the novel object, named base
    ]
    out = breakdown(detections, _annotations(), {1, 2}, {NOVEL})
    # 3 novel objects in images 1-2, so the first 3 novel detections of those images count
    assert out["novel"] == {"hit": 1, "duplicate": 1, "loose": 1, "other object": 0, "part of an object": 0,
                            "background": 0, "ranked": 3}
    # one base object: only the best-scored base detection counts
    assert out["base"] == {"hit": 0, "duplicate": 0, "loose": 0, "other object": 0, "part of an object": 0,
                           "background": 1, "ranked": 1}


def test_part_of_another_object_is_told_from_background():
    detections = [_det(1, BASE, [0, 0, 4, 10], 0.9)]  # IoU 0.4 with the novel object
    out = breakdown(detections, _annotations(), {1, 2}, {NOVEL})
    assert out["base"]["part of an object"] == 1 and out["base"]["background"] == 0


def test_a_novel_name_on_another_object_is_a_naming_error():
    detections = [_det(1, NOVEL, [50, 0, 10, 10], 0.9), _det(2, NOVEL, [40, 40, 20, 20], 0.8)]
    out = breakdown(detections, _annotations(), {1, 2}, {NOVEL})
    assert out["novel"]["other object"] == 1 and out["novel"]["hit"] == 1


def test_before_recall_counts_everything_ranked_above_the_hits_it_needs():
    detections = [
        _det(1, NOVEL, [50, 0, 10, 10], 0.99),   # the base object, named novel
        _det(2, NOVEL, [0, 0, 10, 10], 0.98),    # loose
        _det(1, NOVEL, [0, 0, 10, 10], 0.9),     # hit 1
        _det(1, NOVEL, [90, 90, 5, 5], 0.8),     # background
        _det(2, NOVEL, [0, 0, 20, 20], 0.7),     # hit 2
        _det(2, NOVEL, [40, 40, 20, 20], 0.5),   # hit 3
    ]
    first_third = breakdown(detections, _annotations(), {1, 2}, {NOVEL}, recall=1 / 3)["novel"]
    assert (first_third["other object"], first_third["loose"], first_third["hit"], first_third["ranked"]) == (1, 1, 1, 3)
    whole = breakdown(detections, _annotations(), {1, 2}, {NOVEL}, recall=1.0)["novel"]
    assert whole["hit"] == 3 and whole["background"] == 1 and whole["ranked"] == 6
    # without recall: the first N = 3 only
    assert breakdown(detections, _annotations(), {1, 2}, {NOVEL})["novel"]["ranked"] == 3
