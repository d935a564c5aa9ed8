"""Rendering a world's images in worker processes (or in this one), in task order.

Every image is a pure function of `(seed, stream, index)` (`STREAMS`), so the output does not
depend on the number of workers. A worker gets the run's state once (`init_worker`); each
task then renders one image: a detection image is written as PNG here and returns its LVIS
annotations, a web image returns its pixels and caption.
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from vild.data.world.categories import Category
from vild.data.world.config import WorldConfig, size_pair
from vild.data.world.layout import image_file_name

STREAMS = {"train": 1, "val": 2, "web_train": 3, "web_val": 4}

_STATE: dict = {}


def init_worker(state: dict) -> None:
    """Keep the run's state (config, categories, weights, output root) for this process's tasks,
    which then carry only their indices."""
    _STATE.clear()
    _STATE.update(state)


def detection_task(task: tuple[str, int]) -> tuple[int, int, int, list[dict]]:
    """Render detection image `index` of `split`, write its PNG, return (index, H, W, anns)."""
    from PIL import Image
    import pycocotools.mask as mask_utils

    from vild.data.world.render import render_scene

    split, index = task
    cfg: WorldConfig = _STATE["config"]
    cats: list[Category] = _STATE["categories"]
    rng = np.random.default_rng([cfg.seed, STREAMS[split], index])
    lo, hi = size_pair(cfg.image_size)
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


def web_task(task: tuple[str, int, int]) -> tuple[np.ndarray, str]:
    """Render web image `index` of `split` (one object of category `cat_index`); return it and its caption."""
    from vild.data.world.captions import make_caption
    from vild.data.world.render import render_crop

    split, index, cat_index = task
    cfg: WorldConfig = _STATE["config"]
    cats: list[Category] = _STATE["categories"]
    rng = np.random.default_rng([cfg.seed, STREAMS["web_" + split], index])
    lo, hi = size_pair(cfg.image_size)
    ref = int(rng.integers(lo, hi + 1))
    crop = render_crop(rng, cats, cat_index, out_size=cfg.web_size, ref_size=ref,
                       min_size=cfg.min_object_size, max_frac=cfg.max_object_frac)
    caption = make_caption(rng, cats[cat_index], colour=crop.colour, texture=crop.texture,
                           size_word=crop.size_word, neighbours=crop.neighbours)
    return crop.image, caption


class TaskRunner:
    """Maps tasks in order, in-process or over a fork pool, with an optional progress bar."""

    def __init__(self, state: dict, workers: int, progress: bool) -> None:
        self.state, self.workers, self.progress = state, workers, progress
        self.pool = None
        if workers > 1:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            self.pool = mp.get_context(method).Pool(workers, init_worker, (state,))
        else:
            init_worker(state)

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
