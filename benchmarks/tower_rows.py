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

from shapeworld import row_metrics  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import load_json, save_json  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.tower_head import TowerHeadConfig, tower_detector  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


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
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--model", type=Path, help="a tower model folder (vild distill-tower)")
    p.add_argument("--text-model", type=Path, help="a ViLD-text row folder (with --head)")
    p.add_argument("--head", type=Path, help="a head saved by teacher_trunk_rows.py --head")
    p.add_argument("--reads", nargs="+", default=["refined", "proposals"], choices=["refined", "proposals"])
    p.add_argument("--methods", nargs="+", default=["vild-ensemble", "vild-image"])
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    teacher = Teacher.load(str(args.teacher))
    paths = world_paths(args.world)
    vocab = dataset_vocabulary(paths["val"])
    text = text_embeddings_for(teacher, vocab).float()
    novel = [c for c, b in zip(vocab["category_ids"], vocab["base"]) if not b]
    model = tower_model(args, teacher)
    result = load_json(args.out) if args.out.is_file() else {"commands": [], "rows": {}}
    result["commands"].append({"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                               "loadavg_start": os.getloadavg()})
    for reads in args.reads:
        model.config = dataclasses.replace(model.config, tower_reads=reads)
        for method in args.methods:
            t = time.perf_counter()
            metrics = evaluate_detector(
                model, paths["val_images"], paths["val"], text, vocab["category_ids"],
                base_mask=torch.tensor(vocab["base"]), novel_category_ids=novel, method=method,
                teacher=teacher, progress=False, max_images=args.val_images)
            label = f"{method}, tower head reads {reads} boxes"
            result["rows"][label] = {**row_metrics(metrics), "seconds": round(time.perf_counter() - t, 1)}
            print(f"{label}: APr {result['rows'][label]['APr']:.2f} AP {result['rows'][label]['AP']:.2f}", flush=True)
            save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
