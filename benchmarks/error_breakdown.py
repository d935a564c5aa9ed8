"""What the top-ranked detections of each row are: hits, loose boxes, other objects or background.

    .venv/bin/python benchmarks/error_breakdown.py --world benchmarks/work/world-s13 \
        --teacher benchmarks/work/teacher-s13 \
        --row tower-image=benchmarks/work/sw-s13/seed1/tower:vild-image \
        --row clip=benchmarks/work/sw-s13/seed1/text:clip --out R.json

Each row is predicted on the first --val-images val images through `vild.evaluation.run`'s
`predict_split` (the path `vild eval` measures). For every category, its detections are ranked
by score over all images and the first N are kept, N = its number of ground-truth objects (at
AP 100 they would all be hits). Each kept detection is, in this order:
  * hit: box IoU >= 0.5 with an object of its category that no higher-ranked detection took;
  * duplicate: IoU >= 0.5 with an object of its category, already taken;
  * loose: IoU in [0.1, 0.5) with an object of its category (a localisation error);
  * other object: IoU >= 0.5 with an object of another category (a naming error);
  * part of an object: IoU in [0.1, 0.5) with an object of another category;
  * background: none of these (IoU < 0.1 with every object).
Counts are summed over the novel categories and over the base ones. Box AP falling further
below CLIP on crops' than mask AP does (docs/distillation.md section 21) points at loose boxes.
With --recall F, each row also gets what it ranks before hitting F of each category's objects
(every detection met on the way, hits included): the false positives that set its precision
there (docs/distillation.md section 27).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from torchvision.ops import box_convert, box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

sys.path.insert(0, str(ROOT / "benchmarks"))

from distill_eval_sweep import val_world  # noqa: E402
from vild.data.detection import load_annotation_file  # noqa: E402
from vild.evaluation.run import predict_split  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402

KINDS = ("hit", "duplicate", "loose", "other object", "part of an object", "background")


def _xyxy(xywh: list[list[float]]) -> torch.Tensor:
    return box_convert(torch.tensor(xywh, dtype=torch.float64).reshape(-1, 4), "xywh", "xyxy")


def breakdown(detections: list[dict], annotations: dict, image_ids: set[int], novel_ids: set[int],
              recall: float | None = None) -> dict:
    """{"novel": {kind: count}, "base": {...}} over each category's top-N detections.

    recall: instead of the first N, every detection met while walking a category's detections
    by score until that fraction of its N objects is hit (or the detections run out): what a
    row ranks above its hits, which sets its precision at that recall."""
    objects: dict[int, list[dict]] = {}
    for ann in annotations["annotations"]:
        if ann["image_id"] in image_ids:
            objects.setdefault(ann["image_id"], []).append(ann)
    counts = {"novel": Counter(), "base": Counter()}
    for cat in {c["id"] for c in annotations["categories"]}:
        wanted = sum(a["category_id"] == cat for anns in objects.values() for a in anns)
        ranked = sorted((d for d in detections if d["category_id"] == cat and d["image_id"] in image_ids),
                        key=lambda d: -d["score"])
        taken: set[int] = set()
        split = counts["novel" if cat in novel_ids else "base"]
        hits = 0
        for det in (ranked if recall is not None else ranked[:wanted]):
            if recall is not None and hits >= recall * wanted:
                break
            kind = _kind(det, objects.get(det["image_id"], []), cat, taken)
            hits += kind == "hit"
            split[kind] += 1
    return {split: {kind: c[kind] for kind in KINDS} | {"ranked": sum(c.values())} for split, c in counts.items()}


def _kind(det: dict, anns: list[dict], cat: int, taken: set[int]) -> str:
    """One of KINDS for a detection of category `cat` among its image's objects; a hit takes
    its object (added to `taken`)."""
    if not anns:
        return "background"
    iou = box_iou(_xyxy([det["bbox"]]), _xyxy([a["bbox"] for a in anns]))[0]
    same = torch.tensor([a["category_id"] == cat for a in anns])
    same_iou = torch.where(same, iou, torch.zeros_like(iou))
    free = [i for i in same_iou.argsort(descending=True).tolist()
            if same_iou[i] >= 0.5 and anns[i]["id"] not in taken]
    if free:
        taken.add(anns[free[0]]["id"])
        return "hit"
    if same_iou.max() >= 0.5:
        return "duplicate"
    if same_iou.max() >= 0.1:
        return "loose"
    if torch.where(same, torch.zeros_like(iou), iou).max() >= 0.5:
        return "other object"
    if iou.max() >= 0.1:
        return "part of an object"
    return "background"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--row", action="append", required=True, metavar="LABEL=MODEL_DIR:METHOD")
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--recall", type=float, nargs="*", default=[],
                   help="also count what each row ranks before hitting this fraction of a category's objects")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths, vocab, teacher, text, base, novel_ids = val_world(args.world, args.teacher)
    annotations = load_annotation_file(paths["val"])
    image_ids = {int(im["id"]) for im in annotations["images"][:args.val_images]}
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "loadavg_start": os.getloadavg(), "rows": {}}
    for spec in args.row:
        label, _, rest = spec.partition("=")
        model_dir, _, method = rest.rpartition(":")
        if not (label and model_dir and method):
            p.error(f"--row {spec!r}: LABEL=MODEL_DIR:METHOD")
        started = time.perf_counter()
        detections, _ = predict_split(load_model(model_dir), paths["val_images"], paths["val"], text,
                                      vocab["category_ids"], base_mask=base, method=method, teacher=teacher,
                                      max_images=args.val_images, progress=False)
        row = breakdown(detections, annotations, image_ids, set(novel_ids))
        for level in args.recall:
            row[f"before_recall_{level:g}"] = breakdown(detections, annotations, image_ids, set(novel_ids), level)
        row["seconds"] = round(time.perf_counter() - started, 1)
        result["rows"][label] = row
        print(label, row, flush=True)
        save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
