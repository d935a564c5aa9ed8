"""Issue 14: what the distillation targets hold. For the region store's proposals on the train
images: how many cover a base object, a novel object or background (IoU >= 0.5 with a
ground-truth box, all labels), and the teacher's own top-1 (against the 24 text embeddings) on
the proposals that cover an object, which bounds what imitating them can teach.

    .venv/bin/python benchmarks/distill_targets.py --world benchmarks/work/world-s7 \\
        --teacher benchmarks/work/teacher-s7 --store benchmarks/work/sw-s7/regions \\
        --out benchmarks/results/distill_s7/targets.json

A proposal counts for the ground-truth box it overlaps most. Reported per object kind:
  * proposals: top-1 over every covering proposal;
  * best_proposal: top-1 of each object's best-overlapping proposal;
  * mean_embedding: top-1 of the mean of each object's covering proposals' embeddings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.data.detection import DetectionDataset  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.regions.store import RegionStore  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--iou", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    teacher = Teacher.load(str(args.teacher))
    paths = world_paths(args.world)
    vocab = dataset_vocabulary(paths["val"])
    text = text_embeddings_for(teacher, vocab).float()
    is_base = torch.tensor(vocab["base"])
    store = RegionStore(args.store)
    train = DetectionDataset(paths["train_images"], paths["train_all"], category_ids=vocab["category_ids"],
                             with_masks=False)
    hits = {f"{what}_{kind}": [0, 0] for what in ("proposals", "best_proposal", "mean_embedding")
            for kind in ("base", "novel")}
    covering = {"base": 0, "novel": 0, "background": 0}
    for i in range(len(train)):
        entry = store.get(train.image_ids[i])
        if entry is None:
            continue
        boxes, _, emb = entry
        emb = emb.float()
        target = train[i][1]
        if not len(target["boxes"]):
            covering["background"] += len(boxes)
            continue
        iou = box_iou(target["boxes"].float(), boxes.float())
        best_iou, owner = iou.max(0)
        predicted = (emb @ text.T).argmax(1)
        covering["background"] += int((best_iou < args.iou).sum())
        for j, label in enumerate(target["labels"].tolist()):
            kind = "base" if bool(is_base[label]) else "novel"
            mine = (iou[j] >= args.iou) & (owner == j)
            if not mine.any():
                continue
            covering[kind] += int(mine.sum())
            for what, right, count in (
                ("proposals", int((predicted[mine] == label).sum()), int(mine.sum())),
                ("best_proposal", int(predicted[iou[j].argmax()] == label), 1),
                ("mean_embedding", int((F.normalize(emb[mine].mean(0), dim=0) @ text.T).argmax() == label), 1),
            ):
                hits[f"{what}_{kind}"][0] += right
                hits[f"{what}_{kind}"][1] += count
    total = sum(covering.values())
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "proposals": total,
        "share_percent": {k: round(100 * v / total, 2) for k, v in covering.items()},
        "teacher_top1_percent": {k: round(100 * right / max(n, 1), 1) for k, (right, n) in hits.items()},
        "counted": {k: n for k, (_, n) in hits.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_json(args.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
