"""Tiny fake LVIS v1 and COCO 2017 datasets in the real formats (json + JPEG files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 60, 80


def _draw(path: Path, boxes, rng) -> None:
    img = rng.integers(60, 120, (H, W, 3)).astype(np.uint8)
    for x, y, w, h in boxes:
        img[int(y):int(y + h), int(x):int(x + w)] = rng.integers(0, 255, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=95)


def _annotation(ann_id, image_id, category_id, box):
    x, y, w, h = box
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h],
            "area": w * h, "iscrowd": 0,
            "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]]}


def _boxes(rng, n):
    out = []
    for _ in range(n):
        w, h = rng.integers(12, 30), rng.integers(12, 25)
        out.append((float(rng.integers(0, W - w)), float(rng.integers(0, H - h)), float(w), float(h)))
    return out


def make_coco(root: Path, *, n_train: int = 6, n_val: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """root/train2017, root/val2017 + root/annotations/instances_{train,val}2017.json; objects of
    categories of every kind (48/17 base, novel, unused; 65/15 seen, unseen)."""
    from vild.recipes import coco_categories

    rng = np.random.default_rng(seed)
    cats = coco_categories()
    # person (base in both), cat (novel in both), airplane (novel), traffic light (unused in
    # 48/17, seen in 65/15), train (base 48/17, unseen 65/15), cup (novel 48/17, seen 65/15)
    pool = [1, 17, 5, 10, 7, 47]
    files = {}
    for split, n, offset in (("train2017", n_train, 0), ("val2017", n_val, 1000)):
        images, annotations = [], []
        for i in range(n):
            image_id = offset + i + 1
            name = f"{image_id:012d}.jpg"
            boxes = _boxes(rng, 3)
            labels = [pool[(i + k) % len(pool)] for k in range(3)]
            if split == "train2017" and i == n - 1:
                labels = [17, 5, 17]  # novel objects only: dropped from the 48/17 training set
            _draw(root / split / name, boxes, rng)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W,
                           "coco_url": f"http://images.cocodataset.org/{split}/{name}"})
            for box, label in zip(boxes, labels):
                annotations.append(_annotation(len(annotations) + 1 + offset * 10, image_id, label, box))
        data = {"info": {"description": "fake COCO"}, "licenses": [], "images": images,
                "annotations": annotations,
                "categories": [dict(c, supercategory="thing") for c in cats]}
        path = root / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        files[split] = path
    return files["train2017"], files["val2017"]


LVIS_CATEGORIES = [  # id, name, frequency
    (1, "aerosol_can", "c"), (2, "air_conditioner", "f"), (3, "airplane", "f"),
    (4, "alarm_clock", "c"), (5, "alcohol", "r"), (6, "alligator", "r"), (7, "almond", "f"),
]


def make_lvis(root: Path, *, n_train: int = 6, n_val: int = 4, seed: int = 0) -> tuple[Path, Path]:
    """LVIS v1 jsons (coco_url only, federated fields) over COCO images in root/train2017 and
    root/val2017; the val split takes images from both folders, as LVIS v1 does."""
    rng = np.random.default_rng(seed)
    categories = [{"id": i, "name": n, "synonyms": [n], "def": f"a {n}", "frequency": f,
                   "synset": f"{n}.n.01", "image_count": 0, "instance_count": 0}
                  for i, n, f in LVIS_CATEGORIES]
    files = {}
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 500)):
        images, annotations = [], []
        for i in range(n):
            image_id = offset + i + 1
            folder = "train2017" if (split == "train" or i % 2) else "val2017"
            name = f"{image_id:012d}.jpg"
            boxes = _boxes(rng, 3)
            labels = [LVIS_CATEGORIES[(i * 2 + k) % len(LVIS_CATEGORIES)][0] for k in range(3)]
            _draw(root / folder / name, boxes, rng)
            present = sorted(set(labels))
            images.append({
                "id": image_id, "height": H, "width": W,
                "coco_url": f"http://images.cocodataset.org/{folder}/{name}",
                "neg_category_ids": [c for c, *_ in LVIS_CATEGORIES if c not in present][:2],
                "not_exhaustive_category_ids": present[:1] if i % 3 == 0 else [],
            })
            for box, label in zip(boxes, labels):
                annotations.append(_annotation(len(annotations) + 1 + offset * 10, image_id, label, box))
        data = {"info": {"description": "fake LVIS v1"}, "licenses": [], "images": images,
                "annotations": annotations, "categories": categories}
        path = root / f"lvis_v1_{split}.json"
        path.write_text(json.dumps(data))
        files[split] = path
    return files["train"], files["val"]
