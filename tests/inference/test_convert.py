"""Detections at the edges: dict, COCO results, supervision; named vocabularies; drawing."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from vild.errors import VildError
from vild.inference.convert import rle_to_mask
from vild.model.outputs import Detections


def _dets(n=3, h=20, w=30, names=("star", "red ring", "circle")):
    masks = torch.zeros(n, h, w)
    for i in range(n):
        masks[i, 2 + i: 10 + i, 3 + 2 * i: 15 + 2 * i] = 0.9
    return Detections(
        boxes=torch.tensor([[3.0 + 2 * i, 2.0 + i, 15.0 + 2 * i, 10.0 + i] for i in range(n)]),
        scores=torch.tensor([0.9, 0.6, 0.4][:n]),
        labels=torch.tensor([1, 0, 2][:n]),
        image_size=(h, w),
        masks=masks,
        class_names=names,
    )


def test_label_names_and_class_names_survive_select():
    d = _dets()
    assert d.label_names == ["red ring", "star", "circle"]
    assert d.select(torch.tensor([False, True, True])).label_names == ["star", "circle"]
    assert d.to("cpu").class_names == ("star", "red ring", "circle")
    assert Detections.empty((4, 5)).label_names is None
    assert Detections.empty((4, 5), class_names=["a"]).label_names == []


def test_to_dict_is_json_and_masks_round_trip():
    d = _dets()
    out = d.to_dict()
    json.dumps(out)
    assert out["image_size"] == [20, 30]
    assert out["labels"] == [1, 0, 2] and out["label_names"] == ["red ring", "star", "circle"]
    assert out["boxes"][0] == [3.0, 2.0, 15.0, 10.0]
    assert out["scores"][0] == pytest.approx(0.9)
    for rle, mask in zip(out["masks"], d.masks):
        assert np.array_equal(rle_to_mask(rle), (mask > 0.5).numpy().astype(np.uint8))
    empty = Detections.empty((4, 5), with_masks=True).to_dict()
    assert empty["boxes"] == [] and empty["masks"] == []
    assert Detections.empty((4, 5)).to_dict()["masks"] is None


def test_to_coco_results():
    d = _dets()
    res = d.to_coco_results(7)
    assert [r["category_id"] for r in res] == [2, 1, 3]  # label + 1 by default
    assert res[0]["bbox"] == [3.0, 2.0, 12.0, 8.0] and res[0]["image_id"] == 7
    assert "segmentation" in res[0]
    res = d.to_coco_results(1, category_ids=[10, 20, 30])
    assert [r["category_id"] for r in res] == [20, 10, 30]
    with pytest.raises(VildError, match="labels must lie"):
        d.to_coco_results(1, category_ids=[10])
    json.dumps(res)


def test_to_supervision_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # import fails
    with pytest.raises(VildError, match=r"pip install 'vild\[supervision\]'"):
        _dets().to_supervision()


@pytest.mark.skipif(importlib.util.find_spec("supervision") is None, reason="supervision not installed")
def test_to_supervision():
    d = _dets()
    sv = d.to_supervision()
    assert len(sv) == 3
    assert np.allclose(sv.xyxy, d.boxes.numpy())
    assert np.allclose(sv.confidence, d.scores.numpy())
    assert sv.class_id.tolist() == [1, 0, 2]
    assert sv.mask.shape == (3, 20, 30) and sv.mask.dtype == bool
    assert list(sv.data["class_name"]) == ["red ring", "star", "circle"]


def test_named_vocabularies(tmp_path):
    from vild.inference.vocabularies import COCO_NAMES, resolve_vocabulary

    sw = resolve_vocabulary("shapeworld")
    assert len(sw.entries) == 24 and sw.entries[0][0] == "circle" and "disc" in sw.entries[0]
    alt = resolve_vocabulary("shapeworld-alt")
    assert alt.names != sw.names
    coco = resolve_vocabulary("coco")
    assert len(coco.names) == 80 and len(set(COCO_NAMES)) == 80
    assert coco.category_ids[-1] == 90 and len(set(coco.category_ids)) == 80
    assert len(resolve_vocabulary("voc").names) == 20
    lvis = tmp_path / "lvis.json"
    lvis.write_text(json.dumps({"categories": [
        {"id": 5, "name": "bow_(weapon)", "synonyms": ["bow_(weapon)", "longbow"]},
        {"id": 2, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"]}]}))
    v = resolve_vocabulary(f"lvis:{lvis}")
    assert v.entries == [["aerosol_can", "spray_can"], ["bow_(weapon)", "longbow"]]
    assert v.category_ids == [2, 5]
    assert resolve_vocabulary(str(lvis)).category_ids == [2, 5]
    (tmp_path / "o365.json").write_text(json.dumps({"categories": [{"id": 1, "name": "Person"}]}))
    assert resolve_vocabulary(f"objects365:{tmp_path / 'o365.json'}").names == ["Person"]
    for bad, words in (("lvis", "lvis:FILE"), ("objects365", "objects365:FILE"),
                       ("nothing-like-this", "unknown vocabulary"), ("shapeworld-nope", "unknown ShapeWorld-OV variant"),
                       (f"lvis:{tmp_path / 'missing.json'}", "not found")):
        with pytest.raises(VildError, match=words):
            resolve_vocabulary(bad)
    (tmp_path / "nocats.json").write_text("{}")
    with pytest.raises(VildError, match="no 'categories'"):
        resolve_vocabulary(f"coco:{tmp_path / 'nocats.json'}")


def test_draw_legible_on_dark_and_light_backgrounds():
    from vild.inference.draw import color_for, draw_detections

    d = _dets()
    for value in (0.0, 1.0):
        img = torch.full((3, 20, 30), value)
        out = draw_detections(img, d)
        assert out.mode == "RGB" and out.size == (30 * 8, 20 * 8)  # enlarged, at most 8x
        arr = np.asarray(out)
        # the label colours and the black outlines are both on the canvas
        for name in ("star", "red ring", "circle"):
            assert (arr == np.array(color_for(name), dtype=np.uint8)).all(axis=2).any()
        assert (arr == 0).all(axis=2).any()
        assert (arr == 255).all(axis=2).any() or value == 1.0
    big = draw_detections(torch.zeros(3, 600, 800), Detections.empty((600, 800)))
    assert big.size == (800, 600)
    with pytest.raises(ValueError, match="image is"):
        draw_detections(torch.zeros(3, 10, 10), d)
