"""Inference-time settings of trained ShapeWorld rows, swept without retraining.

    .venv/bin/python benchmarks/distill_eval_sweep.py --world benchmarks/work/world \
        --teacher benchmarks/work/teacher --rows benchmarks/work/shapeworld/seed0/{image,ensemble} \
        --set image_temperature=50 --set image_temperature=teacher --out benchmarks/results/x.json

Each `--set` is one evaluation of every row with those model settings replaced (`KEY=VALUE`
pairs separated by commas; `teacher` stands for the teacher's own logit scale). Used to check
how the distillation head's scores are calibrated: its softmax has no background, so its
temperature decides how confidently every proposal, background included, is named.
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

from tower_rows import ValWorld  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.model import build_detector  # noqa: E402
from vild.model.methods import CROP_METHODS  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.presets import parse_overrides  # noqa: E402


def with_settings(model, settings: dict):
    """The same weights in a detector rebuilt from the config with `settings` replaced. Rebuilt,
    not patched: the RPN's proposal counts and NMS are fixed when it is constructed, so
    replacing `model.config` alone would leave `rpn_*` settings without effect."""
    rebuilt = build_detector(dataclasses.replace(model.config, **settings))
    rebuilt.load_state_dict(model.state_dict())
    return rebuilt.eval()


def val_world(world: Path, teacher_dir: Path) -> tuple:
    """(the world's paths, val vocabulary, teacher, its text embeddings, base mask, novel
    category ids): what evaluating a row on the world's val split needs."""
    val = ValWorld(world, teacher_dir, val_images=None)
    return val.paths, val.vocab, val.teacher, val.text, torch.tensor(val.vocab["base"]), val.novel


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--rows", type=Path, nargs="+", required=True, help="model folders")
    p.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--method", default="native",
                   help="scoring method (vild.model.methods.METHODS), e.g. clip: the teacher on crops")
    p.add_argument("--crop-regions", type=int, nargs="+", default=[300],
                   help="proposals the CLIP methods classify (each value is one evaluation)")
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths, vocab, teacher, text, base, novel_ids = val_world(args.world, args.teacher)
    scale = teacher.logit_scale
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "loadavg_start": os.getloadavg(), "teacher_logit_scale": scale, "runs": []}
    crop_counts = args.crop_regions if args.method in CROP_METHODS else [None]
    for row in args.rows:
        for spec in args.sets or [""]:
            for crop_regions in crop_counts:
                pairs = [s.replace("=teacher", f"={scale}") for s in spec.split(",") if s]
                model_settings, _ = parse_overrides(pairs)
                started = time.perf_counter()
                model = with_settings(load_model(row), model_settings)
                out = evaluate_detector(model, paths["val_images"], paths["val"], text, vocab["category_ids"],
                                        base_mask=base, novel_category_ids=novel_ids, progress=False,
                                        max_images=args.val_images, method=args.method, teacher=teacher,
                                        num_crop_regions=crop_regions or 300)
                segm = out["lvis"]["segm"]
                entry = {"row": str(row), "method": args.method, "settings": model_settings,
                         **({"crop_regions": crop_regions} if crop_regions else {}),
                         **{k: round(segm[k], 2) for k in ("APr", "APc", "APf", "AP")},
                         "seconds": round(time.perf_counter() - started, 1)}
                result["runs"].append(entry)
                print(entry, flush=True)
                save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
