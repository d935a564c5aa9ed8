"""Generating a whole ShapeWorld-OV world: splits, LVIS v1 json, web corpus, world.json.

Every image (detection or web) is a pure function of `(seed, stream, index)`, so the output
does not depend on the number of worker processes; json is written with sorted, fixed content
and the npz files with fixed zip timestamps, so the same config gives byte-identical files.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from vild.errors import VildError
from vild.data.world.categories import (
    Category, build_categories, colours_json, load_category_specs, resolve_novel, textures_json,
)
from vild.data.world.layout import WORLD_VERSION, World, load_world

STREAMS = {"train": 1, "val": 2, "web_train": 3, "web_val": 4}
IMAGE_SIZE_RANGE = (64, 512)
WEB_SIZE_RANGE = (16, 256)
MAX_OBJECTS = 32
WORLD_ENTRIES = {"world.json", "train", "val", "web"}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines a world. Same config -> byte-identical files."""

    seed: int = 0
    num_train: int = 2000  # detection training images
    num_val: int = 500  # detection validation images
    num_web: int = 1000  # web (image, caption) training pairs PER CATEGORY
    num_web_val: int = 100  # held-out web pairs PER CATEGORY
    image_size: tuple[int, int] = (128, 128)  # (min, max) side; each image's H and W drawn in range
    web_size: int = 64  # web images are web_size x web_size
    min_objects: int = 1
    max_objects: int = 8
    min_object_size: float = 10.0  # px, the shape's longer side before rotation
    max_object_frac: float = 0.6  # largest object size as a fraction of the image's shorter side
    categories: str = "default"  # built-in variant name or path to a categories JSON file
    novel: str | int | tuple[str, ...] | None = None  # None: designed rare; k: k drawn by seed; names
    train_weights: tuple[float, float, float] = (1.0, 0.3, 0.06)  # object sampling weight f, c, r
    val_weights: tuple[float, float, float] = (1.0, 0.75, 0.5)  # flatter: APr must be measurable


def validate_config(cfg: WorldConfig) -> None:
    """Raise VildError on any out-of-range setting."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise VildError(msg)

    for name in ("seed", "num_train", "num_val", "num_web", "num_web_val", "web_size", "min_objects", "max_objects"):
        v = getattr(cfg, name)
        need(isinstance(v, (int, np.integer)) and not isinstance(v, bool), f"{name} must be an integer, got {v!r}")
    need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(1 <= cfg.num_train <= 1_000_000, f"num_train must be in 1..1000000, got {cfg.num_train}")
    need(1 <= cfg.num_val <= 1_000_000, f"num_val must be in 1..1000000, got {cfg.num_val}")
    need(1 <= cfg.num_web <= 100_000, f"num_web (per category) must be in 1..100000, got {cfg.num_web}")
    need(1 <= cfg.num_web_val <= 100_000, f"num_web_val (per category) must be in 1..100000, got {cfg.num_web_val}")
    lo, hi = _size_pair(cfg.image_size)
    need(IMAGE_SIZE_RANGE[0] <= lo <= hi <= IMAGE_SIZE_RANGE[1],
         f"image size must be within {IMAGE_SIZE_RANGE[0]}..{IMAGE_SIZE_RANGE[1]} px with min <= max, got {lo}..{hi}")
    need(WEB_SIZE_RANGE[0] <= cfg.web_size <= WEB_SIZE_RANGE[1],
         f"web size must be in {WEB_SIZE_RANGE[0]}..{WEB_SIZE_RANGE[1]} px, got {cfg.web_size}")
    need(1 <= cfg.min_objects <= cfg.max_objects <= MAX_OBJECTS,
         f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got {cfg.min_objects}..{cfg.max_objects}")
    need(0.05 < cfg.max_object_frac <= 0.95, f"max_object_frac must be in (0.05, 0.95], got {cfg.max_object_frac}")
    need(4 <= cfg.min_object_size <= cfg.max_object_frac * lo,
         f"min_object_size must be >= 4 px and <= max_object_frac x smallest image side "
         f"({cfg.max_object_frac * lo:.0f} px), got {cfg.min_object_size}")
    for name in ("train_weights", "val_weights"):
        w = getattr(cfg, name)
        need(len(w) == 3 and all(float(x) > 0 for x in w), f"{name} must be three positive numbers (f, c, r), got {w}")


def _size_pair(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    try:
        lo, hi = size
        return int(lo), int(hi)
    except (TypeError, ValueError):
        raise VildError(f"image size must be an int or (min, max), got {size!r}") from None


# ------------------------------------------------------------------ worker side

_STATE: dict = {}


def _init_worker(state: dict) -> None:
    _STATE.clear()
    _STATE.update(state)


def _detection_task(task: tuple[str, int]) -> tuple[int, int, int, list[dict]]:
    """Render detection image `index` of `split`, write its PNG, return (index, H, W, anns)."""
    from PIL import Image
    import pycocotools.mask as mask_utils

    from vild.data.world.render import render_scene

    split, index = task
    cfg: WorldConfig = _STATE["config"]
    cats: list[Category] = _STATE["categories"]
    rng = np.random.default_rng([cfg.seed, STREAMS[split], index])
    lo, hi = _size_pair(cfg.image_size)
    height, width = (int(v) for v in rng.integers(lo, hi + 1, 2))
    weights = np.array([_STATE["weights"][split][c.frequency] for c in cats])
    img, instances = render_scene(
        rng, cats, weights, height=height, width=width, min_objects=cfg.min_objects,
        max_objects=cfg.max_objects, min_size=cfg.min_object_size, max_frac=cfg.max_object_frac,
    )
    path = Path(_STATE["root"]) / split / "images" / image_file_name(index)
    Image.fromarray(img).save(path, format="PNG", compress_level=_STATE.get("png_level", 6))
    anns = []
    for inst in instances:
        rle = mask_utils.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
        anns.append({
            "category_id": cats[inst.category].id,
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "area": int(mask_utils.area(rle)),
            "segmentation": {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")},
            "iscrowd": 0,
            "attributes": {"colour": inst.colour, "texture": inst.texture, "size": round(inst.size, 2)},
        })
    return index, height, width, anns


def _web_task(task: tuple[str, int, int]) -> tuple[np.ndarray, str]:
    from vild.data.world.captions import make_caption
    from vild.data.world.render import render_crop

    split, index, cat_index = task
    cfg: WorldConfig = _STATE["config"]
    cats: list[Category] = _STATE["categories"]
    rng = np.random.default_rng([cfg.seed, STREAMS["web_" + split], index])
    lo, hi = _size_pair(cfg.image_size)
    ref = int(rng.integers(lo, hi + 1))
    crop = render_crop(rng, cats, cat_index, out_size=cfg.web_size, ref_size=ref,
                       min_size=cfg.min_object_size, max_frac=cfg.max_object_frac)
    caption = make_caption(rng, cats[cat_index], colour=crop.colour, texture=crop.texture,
                           size_word=crop.size_word, neighbours=crop.neighbours)
    return crop.image, caption


def image_file_name(index: int) -> str:
    """File name of detection image `index` (0-based); its LVIS image id is index + 1."""
    return f"{index + 1:06d}.png"


# ------------------------------------------------------------------ parent side


class _Runner:
    """Maps tasks in order, in-process or over a fork pool, with an optional progress bar."""

    def __init__(self, state: dict, workers: int, progress: bool) -> None:
        self.state, self.workers, self.progress = state, workers, progress
        self.pool = None
        if workers > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(workers, _init_worker, (state,))
        else:
            _init_worker(state)

    def map(self, func: Callable, tasks: list, desc: str) -> Iterator:
        from tqdm import tqdm

        if self.pool is None:
            it: Iterable = map(func, tasks)
        else:
            chunk = max(1, min(64, len(tasks) // (self.workers * 8)))
            it = self.pool.imap(func, tasks, chunksize=chunk)
        return iter(tqdm(it, total=len(tasks), desc=desc, disable=not self.progress, unit="img",
                         leave=False, dynamic_ncols=True))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def _lvis_json(description: str, images: list[dict], anns: list[dict], categories: list[dict]) -> str:
    data = {
        "info": {"description": description, "version": str(WORLD_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
    return json.dumps(data, separators=(",", ":")) + "\n"


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez (stored, readable by np.load) but byte-reproducible: fixed zip timestamps."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


def _category_entries(cats: list[Category], counts_img: Counter, counts_inst: Counter) -> list[dict]:
    return [{
        "id": c.id,
        "name": c.name,
        "synonyms": list(c.synonyms),
        "frequency": c.frequency,
        "def": c.definition,
        "image_count": int(counts_img[c.id]),
        "instance_count": int(counts_inst[c.id]),
    } for c in cats]


def _detection_split(runner: _Runner, split: str, n: int, cats: list[Category]) -> tuple[list[dict], list[list[dict]]]:
    images, per_image = [], []
    for index, height, width, anns in runner.map(_detection_task, [(split, i) for i in range(n)], f"{split} images"):
        assert index == len(images)
        images.append({"id": index + 1, "file_name": image_file_name(index), "height": height, "width": width})
        per_image.append(anns)
    return images, per_image


def _annotations(images: list[dict], per_image: list[list[dict]], keep: set[int], vocab: set[int]) -> tuple[list, list]:
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
        runner = _Runner(state, workers, progress)
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
                "image_size": list(_size_pair(cfg.image_size)), "web_size": cfg.web_size,
            },
            "categories": [c.to_json() for c in cats],
            "colours": colours_json(),
            "textures": textures_json(),
            "frequency_weights": weights,
            "splits": summary,
            "config": _config_json(cfg),
        }
        _write_text(tmp / "world.json", json.dumps(world_json, indent=2) + "\n")  # last: marks completion
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


def _config_json(cfg: WorldConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k, v in d.items():
        if isinstance(v, tuple):
            d[k] = list(v)
    return d


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


def _generate(runner: _Runner, root: Path, cfg: WorldConfig, cats: list[Category], variant: str) -> dict:
    all_ids = {c.id for c in cats}
    base_ids = {c.id for c in cats if not c.novel}

    # --- detection splits
    train_images, train_per_image = _detection_split(runner, "train", cfg.num_train, cats)
    val_images, val_per_image = _detection_split(runner, "val", cfg.num_val, cats)

    inst = Counter(a["category_id"] for anns in train_per_image for a in anns)
    imgs = Counter(cid for anns in train_per_image for cid in {a["category_id"] for a in anns})
    cat_entries = _category_entries(cats, imgs, inst)  # train counts in every file, as LVIS does

    t_imgs_all, t_anns_all = _annotations(train_images, train_per_image, all_ids, all_ids)
    _write_text(root / "train" / "annotations_all.json",
                _lvis_json(f"ShapeWorld-OV ({variant}) train, all categories labelled", t_imgs_all, t_anns_all, cat_entries))
    t_imgs_base, t_anns_base = _annotations(train_images, train_per_image, base_ids, base_ids)
    _write_text(root / "train" / "annotations_base.json",
                _lvis_json(f"ShapeWorld-OV ({variant}) train, base categories labelled", t_imgs_base, t_anns_base, cat_entries))
    v_imgs, v_anns = _annotations(val_images, val_per_image, all_ids, all_ids)
    _write_text(root / "val" / "annotations.json",
                _lvis_json(f"ShapeWorld-OV ({variant}) val, every category annotated", v_imgs, v_anns, cat_entries))

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
        for i, (image, caption) in enumerate(runner.map(_web_task, tasks, f"web {split}")):
            images[i] = image
            captions.append(caption)
        ids = np.array([cats[k].id for k in seq], dtype=np.int64)
        _write_npz(root / "web" / f"{split}.npz", {"images": images, "category_ids": ids})
        _write_text(root / "web" / f"{split}_captions.json", json.dumps(captions, indent=0) + "\n")
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
