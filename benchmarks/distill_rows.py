"""Train rows of `benchmarks/shapeworld.py`'s shared-trunk protocol from an existing trunk and
region store, with other settings, into their own work folder (issue 14's ablations).

    .venv/bin/python benchmarks/distill_rows.py --world benchmarks/work/world-s7 \\
        --teacher benchmarks/work/teacher-s7 --trunk benchmarks/work/sw-s7/trunk \\
        --store benchmarks/work/sw-s7/regions --modes vild ensemble --set distill_rarity=0.5 \\
        --out benchmarks/work/sw-s7-rarity0.5/seed0

Each mode trains with `shapeworld.py`'s own `train_row` (the same preset, seed, 1000 steps,
backbone and RPN frozen, the heads that imitate the teacher at its logit scale, the ensemble's
distillation head unnormalised: `row_recipe`) into OUT/MODE, one after another; run one
process per mode to use more cores. `--scratch` trains the row from random initialisation
instead (the paper's protocol, `shapeworld.py --protocol scratch`; 4000 steps unless `--steps`
is given), distilling the same store; `--trunk` is then not needed.
Evaluate the rows with `benchmarks/distill_eval_sweep.py --rows OUT/MODE ... --set image_temperature=teacher`.
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import shapeworld  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.presets import parse_overrides, row_recipe  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--trunk", type=Path, help="the base trunk the rows start from (not with --scratch)")
    p.add_argument("--scratch", action="store_true", help="train from random initialisation, nothing frozen")
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--modes", nargs="+", required=True, choices=("text", "image", "vild", "ensemble"))
    p.add_argument("--set", dest="sets", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, help="default: 1000 on the trunk, 4000 with --scratch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if args.scratch == (args.trunk is not None):
        p.error("give either --trunk or --scratch")
    steps = args.steps or (4000 if args.scratch else 1000)
    torch.set_num_threads(args.threads)
    teacher = Teacher.load(str(args.teacher))
    vocab = dataset_vocabulary(world_paths(args.world)["val"])
    text = text_embeddings_for(teacher, vocab)
    model_over, train_over = parse_overrides(args.sets)
    row_args = types.SimpleNamespace(quick=False, rfs_threshold=0.1, init_modules=[],
                                     freeze=[] if args.scratch else ["backbone", "rpn"],
                                     progress=False, device=torch.device(args.device), workers=None)
    for mode in args.modes:
        shapeworld.train_row(args.out / mode, mode, seed=args.seed, args=row_args, world=args.world, vocab=vocab,
                             text=text, store=args.store, steps=steps, init_from=args.trunk,
                             overrides=(row_recipe(model_over, teacher.logit_scale, text.shape[1], mode,
                                                   shapeworld.row_preset(row_args)), train_over))
    return 0


if __name__ == "__main__":
    sys.exit(main())
