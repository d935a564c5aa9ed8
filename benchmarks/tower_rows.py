"""ViLD-ensemble and ViLD-image rows of a model whose distillation head reads the teacher's
tower (`vild distill-tower`), for each choice of the boxes the head reads at detection.

    python benchmarks/tower_rows.py --world W --teacher T --model TOWER_FOLDER --out R.json
    # or a tower model built from a ViLD-text row and a head saved by teacher_trunk_rows.py:
    python benchmarks/tower_rows.py --world W --teacher T --text-model TEXT --head H.safetensors --out R.json

Rows are evaluated like benchmarks/shapeworld.py's (first --val-images val images, LVIS mask AP,
novel = rare); a later run into the same --out adds its rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from shapeworld_report import row_metrics  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import load_json, save_json  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.tower_head import TowerHeadConfig, tower_detector  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


class ValWorld:
    """A world's val split as the tower scripts score it: its teacher, text embeddings and base
    flags; `evaluate` is benchmarks/shapeworld.py's evaluation of one row."""

    def __init__(self, world: Path, teacher: Path, val_images: int | None) -> None:
        self.teacher = Teacher.load(str(teacher))
        self.paths = world_paths(world)
        self.vocab = dataset_vocabulary(self.paths["val"])
        self.text = text_embeddings_for(self.teacher, self.vocab).float()
        self.novel = [c for c, b in zip(self.vocab["category_ids"], self.vocab["base"]) if not b]
        self.val_images = val_images

    def evaluate(self, model, method: str) -> dict:
        started = time.perf_counter()
        metrics = evaluate_detector(
            model, self.paths["val_images"], self.paths["val"], self.text, self.vocab["category_ids"],
            base_mask=torch.tensor(self.vocab["base"]), novel_category_ids=self.novel, method=method,
            teacher=self.teacher, progress=False, max_images=self.val_images)
        return {**row_metrics(metrics), "seconds": round(time.perf_counter() - started, 1)}


def open_results(path: Path) -> dict:
    """The results file (a later run adds its rows), with this run's command appended."""
    result = load_json(path) if path.is_file() else {"commands": [], "rows": {}}
    result["commands"].append({"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                               "loadavg_start": os.getloadavg()})
    return result


def world_arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    return p


def tower_model(args, teacher):
    if args.model:
        return load_model(args.model)
    if not (args.text_model and args.head):
        raise SystemExit("give --model, or --text-model and --head")
    from safetensors.torch import load_file

    model = tower_detector(load_model(args.text_model), teacher, TowerHeadConfig())
    model.roi_heads.image_head.load_state_dict(load_file(str(args.head)))
    return model.eval()


def main() -> int:
    p = world_arguments(__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="a tower model folder (vild distill-tower)")
    p.add_argument("--text-model", type=Path, help="a ViLD-text row folder (with --head)")
    p.add_argument("--head", type=Path, help="a head saved by teacher_trunk_rows.py --head")
    p.add_argument("--reads", nargs="+", default=["refined", "proposals"], choices=["refined", "proposals"])
    p.add_argument("--methods", nargs="+", default=["vild-ensemble", "vild-image"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    val = ValWorld(args.world, args.teacher, args.val_images)
    model = tower_model(args, val.teacher)
    result = open_results(args.out)
    for reads in args.reads:
        model.config = dataclasses.replace(model.config, tower_reads=reads)
        for method in args.methods:
            label = f"{method}, tower head reads {reads} boxes"
            result["rows"][label] = val.evaluate(model, method)
            print(f"{label}: APr {result['rows'][label]['APr']:.2f} AP {result['rows'][label]['AP']:.2f}", flush=True)
            save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
