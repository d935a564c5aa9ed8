"""Writing a world's files so that the same config gives byte-identical files: LVIS v1 json
with fixed content and order, npz with fixed zip timestamps."""

from __future__ import annotations

import json
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np

from vild.data.world.categories import Category
from vild.data.world.layout import WORLD_VERSION


def lvis_json(description: str, images: list[dict], anns: list[dict], categories: list[dict]) -> str:
    data = {
        "info": {"description": description, "version": str(WORLD_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
    return json.dumps(data, separators=(",", ":")) + "\n"


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez (stored, readable by np.load) but byte-reproducible: fixed zip timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def category_entries(cats: list[Category], counts_img: Counter, counts_inst: Counter) -> list[dict]:
    return [{
        "id": c.id,
        "name": c.name,
        "synonyms": list(c.synonyms),
        "frequency": c.frequency,
        "def": c.definition,
        "image_count": int(counts_img[c.id]),
        "instance_count": int(counts_inst[c.id]),
    } for c in cats]


def lvis_annotations(images: list[dict], per_image: list[list[dict]], keep: set[int], vocab: set[int]) -> tuple[list, list]:
    """LVIS images (with neg / not-exhaustive lists over `vocab`) and annotations of `keep` ids.
    Annotation ids are assigned over all instances, so a subset keeps the same ids."""
    out_images, out_anns = [], []
    ann_id = 0
    for img, anns in zip(images, per_image):
        present = set()
        for a in anns:
            ann_id += 1
            if a["category_id"] in keep:
                present.add(a["category_id"])
                out_anns.append({"id": ann_id, "image_id": img["id"], **a})
        out_images.append({**img, "neg_category_ids": sorted(vocab - present), "not_exhaustive_category_ids": []})
    return out_images, out_anns
