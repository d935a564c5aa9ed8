"""What a region store distils: its proposals by kind, their share of the (rarity-weighted)
loss, how often the teacher names them novel, and what `distill_skip_part_iou` leaves out.

    .venv/bin/python benchmarks/store_parts.py --world benchmarks/work/world-s7 \
        --teacher benchmarks/work/teacher-s7 --store benchmarks/work/sw-s7/regions --out R.json

Each proposal of the first --images store images is put in one kind by its box IoU with the
train split's objects, novel ones included (`annotations_all.json`; this reads novel labels,
so it is a diagnostic, not something training may use): "novel object" / "base object" (IoU
>= 0.5), "part or loose box" (best IoU in [0.1, 0.5)), "background" (below 0.1). "named novel"
is the share whose teacher embedding is nearest a novel category's text embedding. "skipped"
is what `distill_skip_part_iou` (IoU with the labelled base boxes alone in [--skip-iou, 0.5))
leaves out. docs/distillation.md section 27.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torchvision.ops import box_convert, box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.data.detection import labelled_parts  # noqa: E402
from vild.io import load_json, save_json  # noqa: E402
from vild.regions import RegionStore  # noqa: E402
from vild.regions.rarity import rarity_weights  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402

KINDS = ("novel object", "base object", "part or loose box", "background")


def proposal_kinds(boxes: torch.Tensor, objects: list[dict], novel_ids: set[int]) -> tuple[list[str], torch.Tensor]:
    """(kind of each proposal [P], its best IoU with a base object [P]) for one image."""
    base = [a for a in objects if a["category_id"] not in novel_ids]
    novel = [a for a in objects if a["category_id"] in novel_ids]
    best_base, best_novel = (_best_iou(boxes, group) for group in (base, novel))
    kinds = ["novel object" if n >= 0.5 else "base object" if b >= 0.5
             else "part or loose box" if max(b, n) >= 0.1 else "background"
             for b, n in zip(best_base.tolist(), best_novel.tolist())]
    return kinds, best_base


def _xyxy(objects: list[dict]) -> torch.Tensor:
    return box_convert(torch.tensor([a["bbox"] for a in objects], dtype=torch.float32).reshape(-1, 4), "xywh", "xyxy")


def _best_iou(boxes: torch.Tensor, objects: list[dict]) -> torch.Tensor:
    if not objects:
        return torch.zeros(len(boxes))
    return box_iou(boxes.float(), _xyxy(objects)).max(dim=1).values


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--rarity", type=float, default=0.5, help="the rows' distill_rarity (0: uniform)")
    p.add_argument("--skip-iou", type=float, default=0.1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    paths = world_paths(args.world)
    vocab = dataset_vocabulary(paths["val"])
    novel_ids = {c for c, b in zip(vocab["category_ids"], vocab["base"]) if not b}
    is_base = torch.tensor(vocab["base"])
    text = text_embeddings_for(Teacher.load(args.teacher), vocab)
    objects: dict[int, list[dict]] = {}
    for ann in load_json(paths["train_all"])["annotations"]:
        objects.setdefault(ann["image_id"], []).append(ann)
    store = RegionStore(args.store)
    weights = rarity_weights(store, power=args.rarity) if args.rarity else None
    stats = {k: {"proposals": 0, "weight": 0.0, "named_novel": 0, "skipped": 0, "skipped_weight": 0.0} for k in KINDS}
    for image_id in store.image_ids[:args.images]:
        boxes, _, embeddings = store.get(image_id)
        kinds, best_base = proposal_kinds(boxes, objects.get(image_id, []), novel_ids)
        w = weights[image_id] if weights is not None else torch.ones(len(boxes))
        named_novel = ~is_base[(embeddings @ text.T).argmax(dim=1)]
        base_objects = [a for a in objects.get(image_id, []) if a["category_id"] not in novel_ids]
        skipped = labelled_parts(boxes, _xyxy(base_objects), (args.skip_iou, 0.5))
        for kind, wi, nn, sk in zip(kinds, w.tolist(), named_novel.tolist(), skipped.tolist()):
            s = stats[kind]
            s["proposals"] += 1
            s["weight"] += wi
            s["named_novel"] += nn
            s["skipped"] += sk
            s["skipped_weight"] += wi * sk
    total = sum(s["weight"] for s in stats.values())
    kept_total = total - sum(s["skipped_weight"] for s in stats.values())
    rows = {k: {"proposals": s["proposals"],
                "loss_share_pct": round(100 * s["weight"] / total, 1),
                "named_novel_pct": round(100 * s["named_novel"] / max(s["proposals"], 1), 1),
                "skipped_pct": round(100 * s["skipped"] / max(s["proposals"], 1), 1),
                "loss_share_after_skip_pct": round(100 * (s["weight"] - s["skipped_weight"]) / kept_total, 1)}
            for k, s in stats.items()}
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "loadavg_start": os.getloadavg(), "images": min(args.images, len(store.image_ids)),
              "skipped_loss_share_pct": round(100 * (1 - kept_total / total), 1), "kinds": rows}
    for k, r in rows.items():
        print(f"{k:18s} {r}")
    print("skipped share of the loss:", result["skipped_loss_share_pct"], "%")
    save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
