"""Mask AP of region embeddings read from the teacher's own feature map (a teacher-tower trunk).

    .venv/bin/python benchmarks/teacher_trunk_rows.py --world benchmarks/work/world-s13 \
        --teacher benchmarks/work/teacher-s13 --store benchmarks/work/sw-s13/regions \
        --text-model benchmarks/work/sw-s13/seed0/text \
        --out benchmarks/results/teacher_trunk/rows_s13_seed0.json

`benchmarks/teacher_trunk_probe.py` measures top-1 on ground-truth boxes; this script measures
what the table measures. Every row scores the same regions, boxes and masks: those of a trained
ViLD-text row (`--text-model`, its top `--crop-regions` proposals), exactly as the table's
"CLIP on cropped regions" row does; only the region embedding changes:

  * `CLIP on cropped regions`: the teacher on 1x + 1.5x crops (the table's row, rerun here);
  * `dense teacher, zero-shot`: the teacher's last feature map of the image, each box read at
    the upsampling that brings it nearest the tower's crop size, then the tower's own pooling
    and projection (no training);
  * `dense teacher, distilled head`: a head trained with ViLD-image's L1 loss towards the
    region store's teacher embeddings on those pooled features (the teacher's tower frozen);
  * `ViLD-text`, `ViLD-text + dense distilled head` and, for reference, `ViLD-text + CLIP on
    crops` (the ensemble's geometric weighting, lambda 2/3 on base categories).
Scores are the teacher's softmax at its logit scale, as for CLIP on crops. The dense head
stands in for a ViLD-image head whose trunk is the teacher's tower; nothing here is in the
library yet.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from benchmarks.distill_probe import log  # noqa: E402
from benchmarks.shapeworld_report import row_metrics  # noqa: E402
from benchmarks.teacher_trunk_probe import (  # noqa: E402
    DenseTeacher, Head, load_teacher_and_world, new_head, pool_train_proposals, train_distilled)
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import load_json, save_json  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402


class DenseRegionEncoder:
    """Stands in for the teacher where prediction asks for crop embeddings (`encode_regions`):
    the distilled head on the tower's per-box-scale features, or (head None) the tower's own
    pooling and projection on its full-map features."""

    def __init__(self, dense: DenseTeacher, factors, head: Head | None) -> None:
        self.dense, self.head = dense, head
        self.reader = dense.reader(factors, grid=2 if head is not None else None)
        self.logit_scale = dense.teacher.logit_scale

    @torch.no_grad()
    def encode_regions(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        features = self.reader(image.cpu()[None], [torch.as_tensor(boxes, dtype=torch.float32).cpu()])
        return self.head(features) if self.head is not None else self.dense.zero_shot(features)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True, help="the region store of the trunk")
    p.add_argument("--text-model", type=Path, required=True, help="a trained ViLD-text row folder")
    p.add_argument("--upsample", type=float, nargs="+", default=[1, 1.5, 2, 3, 4, 6])
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="seed of the distilled head")
    p.add_argument("--head", type=Path, help="keep the trained head here (safetensors); reused if present")
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--crop-regions", type=int, default=300)
    p.add_argument("--rows", nargs="+", default=["clip", "zero_shot", "distilled", "text", "text+distilled", "text+clip"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    started = time.perf_counter()
    teacher, dense, paths, vocab, text, base_mask = load_teacher_and_world(args)
    factors = args.upsample
    novel_ids = [c for c, b in zip(vocab["category_ids"], vocab["base"]) if not b]
    model = load_model(args.text_model).eval()
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    # rows of an earlier run into the same file are kept (a row run again replaces its own)
    result: dict = load_json(args.out) if args.out.is_file() else {"commands": [], "rows": {}}
    result["commands"].append({"command": command, "loadavg_start": os.getloadavg()})
    result["teacher_logit_scale"] = teacher.logit_scale
    head = None
    if any("distilled" in r for r in args.rows):
        head = trained_head(args, dense, factors, result)
    encoders = {"zero_shot": DenseRegionEncoder(dense, factors, None),
                "distilled": DenseRegionEncoder(dense, factors, head)}
    plan = {"clip": ("CLIP on cropped regions", "clip", teacher),
            "zero_shot": ("dense teacher, zero-shot", "clip", encoders["zero_shot"]),
            "distilled": ("dense teacher, distilled head", "clip", encoders["distilled"]),
            "text": ("ViLD-text", "vild-text", None),
            "text+distilled": ("ViLD-text + dense distilled head", "vild-text+clip", encoders["distilled"]),
            "text+clip": ("ViLD-text + CLIP on crops", "vild-text+clip", teacher)}
    for key in args.rows:
        label, method, encoder = plan[key]
        t = time.perf_counter()
        metrics = evaluate_detector(
            model, paths["val_images"], paths["val"], text, vocab["category_ids"], base_mask=base_mask,
            novel_category_ids=novel_ids, method=method, teacher=encoder, progress=False,
            max_images=args.val_images, num_crop_regions=args.crop_regions)
        result["rows"][label] = {**row_metrics(metrics), "seconds": round(time.perf_counter() - t, 1)}
        log(f"{label}: APr {result['rows'][label]['APr']:.1f} AP {result['rows'][label]['AP']:.1f}")
        save_json(args.out, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    save_json(args.out, result)
    return 0


def trained_head(args, dense, factors, result) -> Head:
    from safetensors.torch import load_file, save_file

    head = new_head(dense.reader(factors, grid=2).out_dim, dense.teacher.embed_dim)
    if args.head is not None and args.head.is_file():
        head.load_state_dict(load_file(str(args.head)))
        result.setdefault("head", {"loaded": str(args.head)})
        return head.eval()
    t = time.perf_counter()
    feats, targets, image_of = pool_train_proposals(dense, args.world, args.store, factors, args.train_images)
    cut = int(image_of.max()) + 1  # no hold-out: the table's rows train on every train image
    head = train_distilled(feats, targets, image_of, cut, steps=args.steps, seed=args.seed).eval()
    with torch.no_grad():
        sample = torch.arange(0, len(feats), max(1, len(feats) // 20000))
        cos = float((head(feats[sample]) * F.normalize(targets[sample].float(), dim=-1)).sum(1).mean())
    result["head"] = {"train_proposals": len(feats), "steps": args.steps, "seed": args.seed,
                      "train_proposal_cosine": round(cos, 4), "seconds": round(time.perf_counter() - t, 1)}
    if args.head is not None:
        args.head.parent.mkdir(parents=True, exist_ok=True)
        save_file(head.state_dict(), str(args.head))
    return head


if __name__ == "__main__":
    sys.exit(main())
