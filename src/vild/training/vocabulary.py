"""Dataset vocabularies (names, synonyms, ids, base flags) and their text embeddings."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from vild.errors import VildError
from vild.io import load_json


def dataset_vocabulary(annotation_file: str | os.PathLike) -> dict:
    """LVIS/COCO-format categories -> {"names", "synonyms", "category_ids", "base", "frequency"}.

    A category is novel when it says so (`"novel": true`, ShapeWorld-OV) or, failing that,
    when its LVIS frequency is "r" (the paper's split).
    """
    data = load_json(annotation_file)
    categories = sorted(data.get("categories") or [], key=lambda c: c["id"])
    if not categories:
        raise VildError(f"{annotation_file} has no categories (the COCO/LVIS 'categories' list "
                        "names what is trained)")
    return {
        "names": [c["name"] for c in categories],
        "synonyms": [list(c.get("synonyms") or []) for c in categories],
        "category_ids": [int(c["id"]) for c in categories],
        "base": [not c.get("novel", c.get("frequency") == "r") for c in categories],
        "frequency": [c.get("frequency") for c in categories],
    }


def labelled_category_ids(annotation_file: str | os.PathLike, vocabulary: dict) -> list[int]:
    """The vocabulary's category ids that at least one annotation of the file labels (a
    category listed but never annotated is not trained, so it stays zero-shot)."""
    used = {int(a["category_id"]) for a in load_json(annotation_file).get("annotations") or []}
    ids = [c for c in vocabulary["category_ids"] if c in used]
    if not ids:
        raise VildError(f"{annotation_file} has no annotation of any of its categories")
    return ids


def vocabulary_entries(vocabulary: dict) -> list[list[str]]:
    """[[name, synonym, ...], ...] in vocabulary order, as the text classifier takes them."""
    entries = []
    for name, synonyms in zip(vocabulary["names"], vocabulary["synonyms"]):
        entry = [name] + [s for s in synonyms if s != name]
        entries.append(list(dict.fromkeys(entry)))
    return entries


def text_embeddings_for(teacher, vocabulary: dict, *, cache_dir=None, progress: bool = False) -> torch.Tensor:
    """[C, D] normalised ViLD prompt-ensemble embeddings of a vocabulary (cached on disk)."""
    from vild.text import build_text_classifier

    return build_text_classifier(
        teacher, vocabulary_entries(vocabulary), cache_dir=cache_dir, progress=progress
    ).embeddings


def subset(vocabulary: dict, category_ids) -> list[int]:
    """Row indices of `category_ids` in the vocabulary."""
    index = {c: i for i, c in enumerate(vocabulary["category_ids"])}
    missing = [c for c in category_ids if c not in index]
    if missing:
        raise VildError(f"categories {missing[:5]} are not in the vocabulary")
    return [index[c] for c in category_ids]


def world_paths(world_dir: str | os.PathLike) -> dict[str, Path]:
    """The standard files of a ShapeWorld-OV world."""
    root = Path(world_dir)
    if not (root / "world.json").is_file():
        raise VildError(f"{root} is not a ShapeWorld-OV world (no world.json); run vild make-world")
    return {
        "train_images": root / "train" / "images",
        "train_base": root / "train" / "annotations_base.json",
        "train_all": root / "train" / "annotations_all.json",
        "val_images": root / "val" / "images",
        "val": root / "val" / "annotations.json",
    }


def split_source(world, images, annotations, *, world_split: str, flag: str = "--annotations") -> tuple[Path, Path]:
    """(images folder, annotation file) from --world (its `world_split`, e.g. "train_base" or
    "val") or from explicit --images and annotations."""
    if world:
        paths = world_paths(world)
        images_key = "val_images" if world_split == "val" else "train_images"
        return paths[images_key], paths[world_split]
    if images and annotations:
        return Path(images), Path(annotations)
    raise VildError(f"give --world, or both --images and {flag}")
