"""Generating a whole ShapeWorld-OV world: splits, LVIS v1 json, web corpus, world.json.

Every image (detection or web) is a pure function of `(seed, stream, index)`, so the output
does not depend on the number of worker processes (`vild.data.world.workers`); json is written
with sorted, fixed content and the npz files with fixed zip timestamps
(`vild.data.world.files`), so the same config (`vild.data.world.config`) gives byte-identical
files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from vild.errors import VildError
from vild.data.world.categories import (
    Category, build_categories, colours_json, load_category_specs, resolve_novel, textures_json,
)
from vild.data.world.config import WorldConfig, config_json, size_pair, validate_config
from vild.data.world.files import category_entries, lvis_annotations, lvis_json, write_npz, write_text
from vild.data.world.layout import WORLD_VERSION, World, image_file_name, load_world
from vild.data.world.workers import STREAMS, TaskRunner, detection_task, web_task

WORLD_ENTRIES = {"world.json", "train", "val", "web"}


def _detection_split(runner: TaskRunner, split: str, n: int, cats: list[Category]) -> tuple[list[dict], list[list[dict]]]:
    images, per_image = [], []
    for index, height, width, anns in runner.map(detection_task, [(split, i) for i in range(n)], f"{split} images"):
        assert index == len(images)
        images.append({"id": index + 1, "file_name": image_file_name(index), "height": height, "width": width})
        per_image.append(anns)
    return images, per_image


def make_world(out, config: WorldConfig | None = None, *, overwrite: bool = False, workers: int | None = None,
               progress: bool = True, **overrides) -> World:
    """Generate a ShapeWorld-OV world into folder `out` and return it (see docs/shapeworld.md).

    `overrides` replace fields of `config` (e.g. `make_world(out, num_train=12)`). The world is
    built in a hidden sibling folder and renamed to `out` only when complete (world.json last),
    so an interrupted run never looks finished. Refuses a non-empty `out` unless `overwrite`
    (and even then only a folder that looks like a world)."""
    cfg = config or WorldConfig()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(WorldConfig)}
        if unknown:
            raise TypeError(f"unknown WorldConfig fields: {sorted(unknown)}")
        cfg = dataclasses.replace(cfg, **overrides)
    if isinstance(cfg.image_size, (int, np.integer)):
        cfg = dataclasses.replace(cfg, image_size=(int(cfg.image_size), int(cfg.image_size)))
    if isinstance(cfg.novel, list):
        cfg = dataclasses.replace(cfg, novel=tuple(cfg.novel))
    validate_config(cfg)
    variant, specs = load_category_specs(cfg.categories)
    novel_names = resolve_novel(specs, cfg.novel, cfg.seed)
    cats = build_categories(specs, novel_names)

    out = Path(out).absolute()
    _check_out(out, overwrite)
    workers = int(workers) if workers is not None else min(8, os.cpu_count() or 1)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("train/images", "val/images", "web"):
        (tmp / sub).mkdir(parents=True)
    weights = {split: dict(zip("fcr", (float(x) for x in w)))
               for split, w in (("train", cfg.train_weights), ("val", cfg.val_weights))}
    state = {"config": cfg, "categories": cats, "weights": weights, "root": str(tmp)}
    runner = None
    try:
        runner = TaskRunner(state, workers, progress)
        summary = _generate(runner, tmp, cfg, cats, variant)
        runner.close()
        runner = None
        world_json = {
            "name": "ShapeWorld-OV",
            "version": WORLD_VERSION,
            "generator": _generator(),
            "variant": variant,
            "seed": cfg.seed,
            "sizes": {
                "num_train": cfg.num_train, "num_val": cfg.num_val,
                "num_web_per_category": cfg.num_web, "num_web_val_per_category": cfg.num_web_val,
                "image_size": list(size_pair(cfg.image_size)), "web_size": cfg.web_size,
            },
            "categories": [c.to_json() for c in cats],
            "colours": colours_json(),
            "textures": textures_json(),
            "frequency_weights": weights,
            "splits": summary,
            "config": config_json(cfg),
        }
        write_text(tmp / "world.json", json.dumps(world_json, indent=2) + "\n")  # last: marks completion
        if out.exists():
            if any(out.iterdir()):
                shutil.rmtree(out)
            else:
                out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        if runner is not None:
            runner.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_world(out)


def _generator() -> str:
    from vild import __version__

    return f"vild {__version__}"


def _check_out(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise VildError(f"{out} exists and is not a folder")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    if not overwrite:
        raise VildError(f"{out} is not empty; pass --overwrite to replace it")
    if not entries <= WORLD_ENTRIES:
        raise VildError(
            f"{out} does not look like a ShapeWorld-OV folder (it holds {sorted(entries - WORLD_ENTRIES)[:5]}); "
            f"refusing to delete it even with --overwrite"
        )


def _generate(runner: TaskRunner, root: Path, cfg: WorldConfig, cats: list[Category], variant: str) -> dict:
    all_ids = {c.id for c in cats}
    base_ids = {c.id for c in cats if not c.novel}

    # --- detection splits
    train_images, train_per_image = _detection_split(runner, "train", cfg.num_train, cats)
    val_images, val_per_image = _detection_split(runner, "val", cfg.num_val, cats)

    inst = Counter(a["category_id"] for anns in train_per_image for a in anns)
    imgs = Counter(cid for anns in train_per_image for cid in {a["category_id"] for a in anns})
    cat_entries = category_entries(cats, imgs, inst)  # train counts in every file, as LVIS does

    t_imgs_all, t_anns_all = lvis_annotations(train_images, train_per_image, all_ids, all_ids)
    write_text(root / "train" / "annotations_all.json",
               lvis_json(f"ShapeWorld-OV ({variant}) train, all categories labelled", t_imgs_all, t_anns_all, cat_entries))
    t_imgs_base, t_anns_base = lvis_annotations(train_images, train_per_image, base_ids, base_ids)
    write_text(root / "train" / "annotations_base.json",
               lvis_json(f"ShapeWorld-OV ({variant}) train, base categories labelled", t_imgs_base, t_anns_base, cat_entries))
    v_imgs, v_anns = lvis_annotations(val_images, val_per_image, all_ids, all_ids)
    write_text(root / "val" / "annotations.json",
               lvis_json(f"ShapeWorld-OV ({variant}) val, every category annotated", v_imgs, v_anns, cat_entries))

    def group_counts(anns: list[dict]) -> dict:
        freq = {c.id: c.frequency for c in cats}
        cnt = Counter(freq[a["category_id"]] for a in anns)
        return {g: int(cnt[g]) for g in "fcr"}

    # --- web corpus
    web = {}
    for split, per_cat in (("train", cfg.num_web), ("val", cfg.num_web_val)):
        seq = np.random.default_rng([cfg.seed, STREAMS["web_" + split], 1 << 30]).permutation(
            np.repeat(np.arange(len(cats)), per_cat))
        n = len(seq)
        images = np.empty((n, cfg.web_size, cfg.web_size, 3), dtype=np.uint8)
        captions: list[str] = []
        tasks = [(split, i, int(seq[i])) for i in range(n)]
        for i, (image, caption) in enumerate(runner.map(web_task, tasks, f"web {split}")):
            images[i] = image
            captions.append(caption)
        ids = np.array([cats[k].id for k in seq], dtype=np.int64)
        write_npz(root / "web" / f"{split}.npz", {"images": images, "category_ids": ids})
        write_text(root / "web" / f"{split}_captions.json", json.dumps(captions, indent=0) + "\n")
        web[split] = f"web/{split}.npz"
        web[f"{split}_captions"] = f"web/{split}_captions.json"
        web[f"num_{split}"] = int(n)

    return {
        "train": {
            "images": "train/images",
            "annotations_base": "train/annotations_base.json",
            "annotations_all": "train/annotations_all.json",
            "num_images": len(train_images),
            "num_instances": len(t_anns_all),
            "num_instances_base": len(t_anns_base),
            "instances_per_group": group_counts(t_anns_all),
        },
        "val": {
            "images": "val/images",
            "annotations": "val/annotations.json",
            "num_images": len(val_images),
            "num_instances": len(v_anns),
            "instances_per_group": group_counts(v_anns),
        },
        "web": web,
    }
