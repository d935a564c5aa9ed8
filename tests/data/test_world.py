"""ShapeWorld-OV generation: layout, determinism, LVIS/COCO compatibility, exact masks, web corpus, CLI."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vild.cli import main
from vild.data.world import (
    COLOURS, WorldConfig, build_categories, load_category_specs, load_world, make_world, resolve_novel,
)
from vild.errors import VildError
from vild.teacher.corpus import load_web_corpus

# Tiny but complete; rare weight raised so that novel objects surely appear in 16 train images.
TINY = dict(seed=3, num_train=16, num_val=12, num_web=3, num_web_val=2, train_weights=(1.0, 0.5, 0.5))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("w") / "world", WorldConfig(**TINY), workers=1, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def np_float_shim(monkeypatch):
    # lvis 0.5.3 still uses np.float, removed in numpy 2
    if not hasattr(np, "float"):
        monkeypatch.setattr(np, "float", float, raising=False)


def test_layout_and_world_json(world):
    root = world.root
    for rel in ("world.json", "train/annotations_base.json", "train/annotations_all.json", "val/annotations.json",
                "web/train.npz", "web/train_captions.json", "web/val.npz", "web/val_captions.json",
                "train/images/000001.png", "val/images/000012.png"):
        assert (root / rel).is_file(), rel
    info = json.loads((root / "world.json").read_text())
    cats = info["categories"]
    assert len(cats) >= 20 and [c["id"] for c in cats] == list(range(1, len(cats) + 1))
    assert all(c["synonyms"] and c["frequency"] in "fcr" for c in cats)
    assert all(c["novel"] == (c["frequency"] == "r") for c in cats)
    assert sum(c["novel"] for c in cats) >= 6
    assert len(info["colours"]) >= 8 and len(info["textures"]) >= 5
    assert info["seed"] == 3 and info["version"] == 1
    lvis_cats = json.loads(world.val_annotations.read_text())["categories"]
    assert [(c["id"], c["name"], c["synonyms"], c["frequency"]) for c in lvis_cats] == \
           [(c["id"], c["name"], c["synonyms"], c["frequency"]) for c in cats]
    assert all({"def", "image_count", "instance_count"} <= set(c) for c in lvis_cats)


def test_deterministic_and_independent_of_workers(world, tmp_path):
    again = make_world(tmp_path / "again", WorldConfig(**TINY), workers=2, progress=False)
    assert _files(world.root) == _files(again.root)
    other = make_world(tmp_path / "other", WorldConfig(**{**TINY, "seed": 4}), workers=1, progress=False)
    assert other.val_annotations.read_bytes() != world.val_annotations.read_bytes()


def _ap_roundtrip(path: Path) -> None:
    from lvis import LVIS, LVISEval
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = json.loads(path.read_text())
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
             "segmentation": a["segmentation"], "score": 1.0} for a in gt["annotations"]]
    for iou_type in ("bbox", "segm"):
        ev = LVISEval(LVIS(str(path)), copy.deepcopy(dets), iou_type)
        with contextlib.redirect_stdout(io.StringIO()):
            ev.run()
        assert ev.get_results()["AP"] == pytest.approx(1.0, abs=1e-6), (path, iou_type)
        coco = COCO(str(path))
        with contextlib.redirect_stdout(io.StringIO()):
            cev = COCOeval(coco, coco.loadRes(copy.deepcopy(dets)), iou_type)
            cev.evaluate()
            cev.accumulate()
            cev.summarize()
        assert cev.stats[0] == pytest.approx(1.0, abs=1e-6), (path, iou_type)


def test_lvis_and_coco_read_val_and_ground_truth_scores_ap_1(world, np_float_shim):
    _ap_roundtrip(world.val_annotations)


def test_train_all_ground_truth_scores_ap_1(world, np_float_shim):
    _ap_roundtrip(world.train_annotations_all)


def test_val_is_exhaustive(world):
    data = json.loads(world.val_annotations.read_text())
    all_ids = {c["id"] for c in data["categories"]}
    present: dict[int, set] = {img["id"]: set() for img in data["images"]}
    for a in data["annotations"]:
        present[a["image_id"]].add(a["category_id"])
    for img in data["images"]:
        assert set(img["neg_category_ids"]) == all_ids - present[img["id"]]
        assert img["not_exhaustive_category_ids"] == []
        assert {"height", "width", "file_name"} <= set(img)
        assert (world.val_images / img["file_name"]).is_file()


def test_base_file_has_no_novel_labels_but_novel_objects_are_in_train_images(world):
    base = json.loads(world.train_annotations_base.read_text())
    full = json.loads(world.train_annotations_all.read_text())
    novel = set(world.novel_ids)
    assert novel and not any(a["category_id"] in novel for a in base["annotations"])
    novel_anns = [a for a in full["annotations"] if a["category_id"] in novel]
    assert novel_anns, "novel objects must appear (unlabelled) in train images"
    base_img_ids = {img["id"] for img in base["images"]}
    assert {a["image_id"] for a in novel_anns} <= base_img_ids
    # same images, and the base annotations are exactly the non-novel ones of the all file
    assert [i["file_name"] for i in base["images"]] == [i["file_name"] for i in full["images"]]
    assert base["annotations"] == [a for a in full["annotations"] if a["category_id"] not in novel]
    for img in base["images"]:
        assert not set(img["neg_category_ids"]) & novel


def test_masks_are_exact(world):
    import pycocotools.mask as mask_utils
    from PIL import Image

    data = json.loads(world.train_annotations_all.read_text())
    images = {img["id"]: img for img in data["images"]}
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        assert isinstance(a["segmentation"]["counts"], str)
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        img = images[a["image_id"]]
        assert m.shape == (img["height"], img["width"])
        assert m.sum() == a["area"] > 0
        ys, xs = np.nonzero(m)
        x, y, w, h = a["bbox"]
        assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        by_image.setdefault(a["image_id"], []).append((a, m))
    checked = 0
    for image_id, items in by_image.items():
        total = np.sum([m.astype(int) for _a, m in items], axis=0)
        assert total.max() <= 1, "visible masks of one image must not overlap"
        pixels = np.asarray(Image.open(world.train_images / images[image_id]["file_name"]).convert("RGB"), np.float32)
        for a, m in items:  # solid objects: the pixels inside the mask have the object's colour
            if a["attributes"]["texture"] != "solid":
                continue
            core = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
            if core.sum() < 5:
                continue
            dist = np.linalg.norm(pixels[core] - np.array(COLOURS[a["attributes"]["colour"]]), axis=1)
            assert np.median(dist) < 35, a
            checked += 1
    assert checked > 0


def test_ring_mask_has_a_hole():
    from vild.data.world.raster import rasterise
    from vild.data.world.shapes import transform, unit_shape

    r = rasterise(transform(unit_shape("ring"), size=40, centre=(30.0, 30.0)))
    cy, cx = 30 - r.y0, 30 - r.x0
    assert not r.mask[cy, cx] and r.mask[cy, cx + 16] and r.mask[cy, cx - 16] and not r.mask[cy, 0]
    assert r.mask.sum() == pytest.approx(np.pi * (20**2 - 11**2), rel=0.03)


def test_web_corpus(world):
    C = len(world.categories)
    for split, per_cat in (("train", TINY["num_web"]), ("val", TINY["num_web_val"])):
        web = world.load_web(split)  # the teacher's reader and type: torch, channels first
        assert web.images.shape == (C * per_cat, 3, 64, 64) and web.images.dtype == torch.uint8
        assert web.category_ids.dtype == torch.int64
        assert np.bincount(web.category_ids.numpy(), minlength=C + 1)[1:].tolist() == [per_cat] * C
        assert len(web.captions) == len(web) == len(web.images)
        assert all(isinstance(c, str) and c for c in web.captions)
        assert web.images.float().std() > 10  # not blank
    assert type(world.load_web("val")) is type(load_web_corpus(world.root, "val"))
    with pytest.raises(VildError, match="web split"):
        world.load_web("test")
    names = {w.lower() for c in world.categories for w in [c["name"].replace("_", " "), *c["synonyms"]]}
    web = world.load_web("train")
    for caption, cid in zip(web.captions, web.category_ids.tolist()):
        cat = world.categories[cid - 1]
        assert any(w.lower() in caption.lower() for w in [cat["name"].replace("_", " "), *cat["synonyms"]])
    assert len(set(web.captions)) > len(web.captions) // 2
    assert names


def test_novel_selection():
    _, specs = load_category_specs("default")
    designed = resolve_novel(specs, None, 0)
    assert designed == [s.name for s in specs if s.group == "r"] and len(designed) >= 6
    k = resolve_novel(specs, 5, seed=1)
    assert len(k) == 5 and k == resolve_novel(specs, "5", seed=1)
    assert resolve_novel(specs, "Heart, lightning bolt", 0) == ["heart", "lightning_bolt"]
    cats = build_categories(specs, ["heart", "circle"])
    freq = {c.name: c.frequency for c in cats}
    assert freq["heart"] == freq["circle"] == "r" and freq["star"] == "f" and freq["crescent"] == "c"
    with pytest.raises(VildError, match="unicorn"):
        resolve_novel(specs, "heart,unicorn", 0)
    with pytest.raises(VildError):
        resolve_novel(specs, len(specs), 0)
    with pytest.raises(VildError):
        resolve_novel(specs, ",".join(s.name for s in specs), 0)


def test_variants_and_custom_categories(tmp_path):
    name, specs = load_category_specs("alt")
    assert name == "alt" and len(specs) >= 10
    custom = tmp_path / "cats.json"
    custom.write_text(json.dumps([
        {"name": "dot", "synonyms": ["spot"], "group": "f", "shape": {"type": "circle"}},
        {"name": "six star", "synonyms": ["hexagram"], "group": "c", "shape": {"type": "star", "points": 6}},
        {"name": "moon", "synonyms": ["crescent"], "group": "r", "shape": "crescent"},
    ]))
    w = make_world(tmp_path / "w", WorldConfig(categories=str(custom), num_train=4, num_val=3, num_web=2,
                                               num_web_val=1), workers=1, progress=False)
    assert w.names == ["dot", "six star", "moon"] and w.novel_ids == [3]
    assert w.load_web("train").images.shape[0] == 6
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"name": "x", "synonyms": ["y"], "shape": {"type": "blob"}},
                               {"name": "z", "synonyms": ["w"], "shape": "circle"}]))
    with pytest.raises(VildError, match="shape.type"):
        load_category_specs(bad)
    with pytest.raises(VildError, match="neither a built-in"):
        load_category_specs(tmp_path / "missing.json")


def test_bad_config_and_out_folder(tmp_path, world):
    for bad in (dict(image_size=(32, 32)), dict(image_size=(200, 150)), dict(num_train=0), dict(web_size=8),
                dict(max_objects=0), dict(min_object_size=200)):
        with pytest.raises(VildError):
            make_world(tmp_path / "x", WorldConfig(**{**TINY, **bad}), workers=1, progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(VildError, match="not empty"):
        make_world(world.root, WorldConfig(**TINY), workers=1, progress=False)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(VildError, match="refusing"):
        make_world(precious, WorldConfig(**TINY), overwrite=True, workers=1, progress=False)
    assert (precious / "thesis.tex").exists()
    partial = tmp_path / "partial"
    (partial / "train").mkdir(parents=True)
    with pytest.raises(VildError, match="did not finish"):
        load_world(partial)
    w = make_world(partial, WorldConfig(**{**TINY, "num_train": 2, "num_val": 2, "num_web": 1, "num_web_val": 1}),
                   overwrite=True, workers=1, progress=False)
    assert w.info["sizes"]["num_train"] == 2


def test_image_size_range(tmp_path):
    w = make_world(tmp_path / "r", WorldConfig(image_size=(128, 160), num_train=6, num_val=2, num_web=1,
                                               num_web_val=1, seed=1), workers=1, progress=False)
    imgs = json.loads(w.train_annotations_all.read_text())["images"]
    sizes = {(i["height"], i["width"]) for i in imgs}
    assert all(128 <= h <= 160 and 128 <= wd <= 160 for h, wd in sizes) and len(sizes) > 1


def test_cli_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["make-world", str(out), "--novel", "unicorn", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "unicorn" in err and "Traceback" not in err
    assert main(["make-world", str(out), "--novel", "99", "--quiet"]) == 1
    assert "novel" in capsys.readouterr().err
    assert main(["make-world", str(out), "--image-size", "1000", "--quiet"]) == 1
    assert "image size" in capsys.readouterr().err
    assert not out.exists()


def test_cli_small_run(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["make-world", str(out), "--num-train", "3", "--num-val", "2", "--num-web", "1", "--num-web-val", "1",
            "--novel", "3", "--seed", "5", "--workers", "1"]
    assert main(args) == 0
    assert "rare/novel 3" in capsys.readouterr().out
    w = load_world(out)
    assert len(w.novel_ids) == 3 and w.info["seed"] == 5
    assert main(args) == 1  # not empty
    assert main(args + ["--overwrite", "--quiet"]) == 0


def test_help_works():
    r = subprocess.run([sys.executable, "-m", "vild", "make-world", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--novel" in r.stdout and "--num-web" in r.stdout
