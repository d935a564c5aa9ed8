"""Recipes for the real datasets: LVIS v1 with R50-FPN / R152-FPN (the official ViLD recipe) and
the COCO open-vocabulary splits 48/17 and 65/15.

    vild recipe list
    vild recipe prepare coco-ov-48-17 --images COCO --train-annotations instances_train2017.json \
        --val-annotations instances_val2017.json --out data/coco-ov-48-17
    vild recipe show lvis-r50            # the full model + training configuration
    vild recipe eval --prepared data/coco-ov-48-17 --model runs/ensemble

`prepare` checks the annotation files and the images and writes, into its folder:
    recipe.json       what was prepared, from which files, and the commands of the pipeline
    train_base.json   training annotations of the base categories only (novel ones removed)
    val.json          evaluation annotations (every category of the split)
    val_novel.json    COCO splits only: the novel categories alone (the zero-shot setting)
Images are not copied: `images` in recipe.json is the COCO root holding train2017/ and
val2017/, and every json names its images relative to it.

Split definitions are data files of this package: `coco_ov_48_17.json`, `coco_ov_65_15.json`
(category ids and names of base, novel and unused categories) and `coco_categories.json`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from vild.errors import VildError
from vild.io import load_json, save_json

__all__ = [
    "RECIPES",
    "Recipe",
    "coco_categories",
    "evaluate_recipe",
    "get_recipe",
    "load_prepared",
    "load_split",
    "pipeline_commands",
    "prepare_recipe",
    "recipe_configs",
]

RECIPE_FILE = "recipe.json"


@dataclass(frozen=True)
class Recipe:
    """A named dataset + configuration. dataset: "lvis" or "coco"; preset: the named
    (model, training) configuration (vild.training.presets); split: the COCO split data file."""

    name: str
    dataset: str
    preset: str
    description: str
    split: str | None = None


RECIPES: dict[str, Recipe] = {
    "lvis-r50": Recipe(
        "lvis-r50", "lvis", "lvis-r50",
        "LVIS v1, ResNet-50-FPN, the official ViLD recipe (base = frequent + common, novel = rare)",
    ),
    "lvis-r152": Recipe(
        "lvis-r152", "lvis", "lvis-r152",
        "LVIS v1, ResNet-152-FPN, the official ViLD recipe (distillation weight 1.0)",
    ),
    "coco-ov-48-17": Recipe(
        "coco-ov-48-17", "coco", "lvis-r50",
        "COCO 2017, 48 base / 17 novel categories (OVR-CNN split); box AP50 novel / base",
        split="coco_ov_48_17.json",
    ),
    "coco-ov-65-15": Recipe(
        "coco-ov-65-15", "coco", "lvis-r50",
        "COCO 2017, 65 seen / 15 unseen categories (Rahman et al.); mAP and Recall@100 at IoU 0.5",
        split="coco_ov_65_15.json",
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise VildError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def _package_json(name: str) -> Any:
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))


def load_split(name: str) -> dict:
    """A COCO split by recipe name or file name -> {"name", "base", "novel", "unused", ...},
    category lists of {"id", "name"}."""
    recipe = RECIPES.get(name)
    file = recipe.split if recipe is not None else name
    if not file:
        raise VildError(f"recipe {name!r} has no COCO split")
    return _package_json(file)


def coco_categories() -> list[dict]:
    """The 80 COCO 2017 categories: [{"id", "name"}] in id order."""
    return list(_package_json("coco_categories.json")["categories"])


def recipe_configs(name: str, *, model: dict | None = None, train: dict | None = None):
    """The recipe's (ViLDConfig, TrainConfig), with overrides."""
    from vild.training.presets import preset

    return preset(get_recipe(name).preset, model=model, train=train)


# ----------------------------------------------------------------------------- prepare


def _relpaths(info: dict) -> list[str]:
    from vild.data.detection import _image_relpaths

    return _image_relpaths(info)


def _find_images(images: list[dict], root: Path, prefix: str | None) -> tuple[list[dict], list[int]]:
    """Images whose file exists under `root` (file_name rewritten relative to root) and the ids
    of the missing ones. COCO file names are looked up in root/prefix/ (prefix "train2017")."""
    found, missing = [], []
    for info in images:
        info = dict(info)
        candidates = _relpaths(info)
        if prefix and info.get("file_name") and "/" not in str(info["file_name"]):
            candidates = [f"{prefix}/{info['file_name']}"] + candidates
        hit = next((c for c in candidates if (root / c).is_file()), None)
        if hit is None:
            missing.append(int(info["id"]))
            continue
        info["file_name"] = hit
        found.append(info)
    return found, missing


def _filter(data: dict, images: list[dict], category_ids: set[int], *, keep_empty: bool,
            categories: list[dict]) -> dict:
    """A copy of an annotation file restricted to `images` and the annotations of
    `category_ids`; images left without annotations are dropped unless keep_empty."""
    ids = {int(im["id"]) for im in images}
    annotations = [a for a in data.get("annotations", [])
                   if int(a["image_id"]) in ids and int(a["category_id"]) in category_ids]
    if not keep_empty:
        used = {int(a["image_id"]) for a in annotations}
        images = [im for im in images if int(im["id"]) in used]
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=annotations, categories=categories)
    return out


def _check_missing(missing: list[int], what: str, allow: bool) -> None:
    if missing and not allow:
        raise VildError(
            f"{len(missing)} {what} images are missing under --images (first ids {missing[:5]}); "
            "check the folder (it must hold train2017/ and val2017/) or pass --allow-missing"
        )


def prepare_recipe(name: str, *, images: str | os.PathLike, train_annotations: str | os.PathLike,
                   val_annotations: str | os.PathLike, out: str | os.PathLike,
                   allow_missing: bool = False) -> dict:
    """Check and convert a dataset for a recipe (see the module docstring); returns recipe.json."""
    from vild.data.detection import load_annotation_file

    recipe = get_recipe(name)
    root = Path(images).expanduser().resolve()
    if not root.is_dir():
        raise VildError(f"--images {root} is not a folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = load_annotation_file(train_annotations)
    val = load_annotation_file(val_annotations)
    info: dict[str, Any] = {
        "recipe": recipe.name, "dataset": recipe.dataset, "preset": recipe.preset,
        "images": str(root), "sources": {"train": str(Path(train_annotations).resolve()),
                                         "val": str(Path(val_annotations).resolve())},
    }
    if recipe.dataset == "lvis":
        info.update(_prepare_lvis(train, val, root, out, allow_missing))
    else:
        info.update(_prepare_coco(recipe, train, val, root, out, allow_missing))
    info["commands"] = pipeline_commands(info, out)
    save_json(out / RECIPE_FILE, info)
    return info


def _prepare_lvis(train: dict, val: dict, root: Path, out: Path, allow_missing: bool) -> dict:
    for what, data in (("train", train), ("val", val)):
        bad = [c.get("id") for c in data["categories"] if c.get("frequency") not in ("f", "c", "r")]
        if not data["categories"] or bad:
            raise VildError(f"the {what} annotations are not LVIS v1 (categories without a "
                            f"frequency f/c/r: {bad[:5]})")
        lacking = [im.get("id") for im in data["images"][:100]
                   if "neg_category_ids" not in im or "not_exhaustive_category_ids" not in im]
        if lacking:
            raise VildError(f"the {what} annotations are not LVIS v1 (images without "
                            f"neg_category_ids / not_exhaustive_category_ids: {lacking[:5]})")
    if [c["id"] for c in train["categories"]] != [c["id"] for c in val["categories"]]:
        raise VildError("the train and val annotations have different categories")
    categories = sorted(train["categories"], key=lambda c: c["id"])
    rare = sorted(int(c["id"]) for c in categories if c["frequency"] == "r")
    base = sorted(int(c["id"]) for c in categories if c["frequency"] != "r")
    train_images, train_missing = _find_images(train["images"], root, None)
    _check_missing(train_missing, "training", allow_missing)
    val_images, val_missing = _find_images(val["images"], root, None)
    _check_missing(val_missing, "validation", allow_missing)
    # every training image stays: novel (rare) objects appear in them unlabelled, which is
    # what distillation learns from; only the rare annotations go
    save_json(out / "train_base.json", _filter(train, train_images, set(base), keep_empty=True,
                                               categories=categories))
    save_json(out / "val.json", _filter(val, val_images, {int(c["id"]) for c in categories},
                                        keep_empty=True, categories=categories))
    return {
        "train": "train_base.json", "val": "val.json",
        "num_categories": len(categories), "base_category_ids": base, "novel_category_ids": rare,
        "num_train_images": len(train_images), "num_val_images": len(val_images),
        "missing_images": {"train": len(train_missing), "val": len(val_missing)},
    }


def _prepare_coco(recipe: Recipe, train: dict, val: dict, root: Path, out: Path, allow_missing: bool) -> dict:
    split = load_split(recipe.split)
    known = {int(c["id"]): c["name"] for c in coco_categories()}
    for what, data in (("train", train), ("val", val)):
        names = {int(c["id"]): c["name"] for c in data["categories"]}
        wrong = [(i, n, names.get(i)) for i, n in known.items() if names.get(i) != n]
        if wrong:
            raise VildError(f"the {what} annotations are not COCO 2017 instances (category "
                            f"{wrong[0][0]} should be {wrong[0][1]!r}, is {wrong[0][2]!r})")
    base = [int(c["id"]) for c in split["base"]]
    novel = [int(c["id"]) for c in split["novel"]]
    split_ids = sorted(base + novel)
    novel_set = set(novel)
    by_id = {int(c["id"]): c for c in train["categories"]}
    categories = [dict(by_id[i], novel=i in novel_set) for i in split_ids]
    train_images, train_missing = _find_images(train["images"], root, "train2017")
    _check_missing(train_missing, "training", allow_missing)
    val_images, val_missing = _find_images(val["images"], root, "val2017")
    _check_missing(val_missing, "validation", allow_missing)
    # as the split's standard files: training images with at least one base annotation
    train_base = _filter(train, train_images, set(base), keep_empty=False, categories=categories)
    val_all = _filter(val, val_images, set(split_ids), keep_empty=False, categories=categories)
    val_novel = _filter(val, val_images, novel_set, keep_empty=False,
                        categories=[c for c in categories if c["novel"]])
    save_json(out / "train_base.json", train_base)
    save_json(out / "val.json", val_all)
    save_json(out / "val_novel.json", val_novel)
    return {
        "train": "train_base.json", "val": "val.json", "val_novel": "val_novel.json",
        "split": split["name"], "num_categories": len(split_ids),
        "base_category_ids": sorted(base), "novel_category_ids": sorted(novel),
        "unused_category_ids": sorted(int(c["id"]) for c in split.get("unused", [])),
        "num_train_images": len(train_base["images"]), "num_val_images": len(val_all["images"]),
        "num_val_novel_images": len(val_novel["images"]),
        "missing_images": {"train": len(train_missing), "val": len(val_missing)},
    }


def load_prepared(folder: str | os.PathLike) -> tuple[dict, Path]:
    folder = Path(folder)
    path = folder / RECIPE_FILE
    if not path.is_file():
        raise VildError(f"{folder} is not a prepared recipe folder (no {RECIPE_FILE}); run vild recipe prepare")
    return load_json(path), folder


def pipeline_commands(info: dict, folder: str | os.PathLike) -> list[str]:
    """The commands that train and evaluate the recipe on the prepared data."""
    folder = Path(folder)
    recipe = get_recipe(info["recipe"])
    images, train = info["images"], folder / info["train"]
    runs = f"runs/{recipe.name}"
    teacher = "ViT-B-32:openai"
    launch = "torchrun --nproc_per_node 8 -m vild"
    data = f"--images {images} --annotations {train} --teacher {teacher} --preset {recipe.preset}"
    return [
        f"{launch} train {data} --mode text --out {runs}/text",
        f"{launch} embed-regions --model {runs}/text --teacher {teacher} --images {images} "
        f"--annotations {train} --out {runs}/regions",
        f"{launch} train {data} --mode ensemble --region-store {runs}/regions --out {runs}/ensemble",
        f"vild recipe eval --prepared {folder} --model {runs}/ensemble --teacher {teacher}",
    ]


# ----------------------------------------------------------------------------- evaluate


def _eval_vocabulary(model_dir, annotations, teacher):
    """(vocabulary of the eval file, its text embeddings [C, D], base mask [C]): the model's
    saved embeddings for categories it knows (by id and name), the teacher's for the rest."""
    import torch

    from vild.training.checkpoint import load_vocabulary
    from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for

    vocab = dataset_vocabulary(annotations)
    saved, saved_text = load_vocabulary(model_dir)
    index = {(c, n): i for i, (c, n) in enumerate(zip(saved["category_ids"], saved["names"]))}
    rows = [index.get((c, n)) for c, n in zip(vocab["category_ids"], vocab["names"])]
    if all(r is not None for r in rows):
        text = saved_text[rows]
    elif teacher is None:
        raise VildError("the evaluation vocabulary has categories the model does not know: give --teacher")
    else:
        text = text_embeddings_for(teacher, vocab)
    trained = {n for n, b in zip(saved["names"], saved["base"]) if b}
    base_mask = torch.tensor([n in trained for n in vocab["names"]], dtype=torch.bool)
    return vocab, text, base_mask


def _harmonic(a: float, b: float) -> float:
    if any(math.isnan(x) for x in (a, b)) or a + b == 0:
        return math.nan
    return 2 * a * b / (a + b)


def evaluate_recipe(prepared: str | os.PathLike, model_dir: str | os.PathLike, *, teacher=None,
                    max_images: int | None = None, batch_size: int = 4, progress: bool = False) -> dict:
    """Evaluate a model on a prepared recipe's validation split.

    LVIS: {"lvis": {segm, bbox: AP, APr, APc, APf, ...}}. COCO splits: {"generalized": {bbox,
    segm: AP50_novel, AP50_base, Recall@100_novel, Recall@100_base (IoU 0.5, 100 detections),
    harmonic means}, "zero_shot": {bbox: AP50, Recall@100 on the novel categories with a
    novel-only vocabulary}}. Plus "timing".
    """
    from vild.evaluation.coco_eval import evaluate_coco
    from vild.evaluation.lvis_eval import evaluate_lvis
    from vild.evaluation.run import predict_split
    from vild.training.checkpoint import load_model

    info, folder = load_prepared(prepared)
    model = load_model(model_dir)
    images = info["images"]

    def run(annotations: Path):
        vocab, text, base_mask = _eval_vocabulary(model_dir, annotations, teacher)
        results, timing = predict_split(model, images, annotations, text, vocab["category_ids"],
                                        base_mask=base_mask, batch_size=batch_size,
                                        max_images=max_images, progress=progress)
        ids = None
        if max_images is not None:
            ids = [int(im["id"]) for im in load_json(annotations)["images"][:max_images]]
        return results, timing, ids

    val = folder / info["val"]
    results, timing, ids = run(val)
    metrics: dict[str, Any] = {"recipe": info["recipe"], "timing": timing}
    if info["dataset"] == "lvis":
        metrics["lvis"] = evaluate_lvis(str(val), results, image_ids=ids)
        return metrics
    novel = info["novel_category_ids"]
    coco = evaluate_coco(str(val), results, novel_category_ids=novel, image_ids=ids, max_dets=100)
    for iou_type, m in coco.items():
        m["AP50_harmonic"] = _harmonic(m["AP50_base"], m["AP50_novel"])
        m["Recall@100_harmonic"] = _harmonic(m["Recall@100_base"], m["Recall@100_novel"])
    metrics["generalized"] = coco
    if info.get("val_novel"):
        val_novel = folder / info["val_novel"]
        results, _, ids = run(val_novel)
        zs = evaluate_coco(str(val_novel), results, novel_category_ids=novel, image_ids=ids, max_dets=100)
        metrics["zero_shot"] = {t: {"AP50": m["AP50"], "Recall@100": m["Recall@100_novel"]}
                                for t, m in zs.items()}
    return metrics
