"""The teacher's top-1 on ground-truth boxes with 1x, 1.5x and 1x + 1.5x crops (issue 14's
"1x vs 1x + 1.5x crops" ablation, on the targets' side): which crops name the objects best,
base and novel, and by object size.

    .venv/bin/python benchmarks/teacher_crop_scales.py --world benchmarks/work/world-s7 \
        --teacher benchmarks/work/teacher-s7 --out benchmarks/results/distill_s7/teacher_crop_scales.json

The region store and the rows distil `Teacher.encode_regions` (the paper's 1x + 1.5x crops,
each embedding normalised, summed, normalised again); this measures the same embeddings
(`encode_regions(..., scales=...)`) from other crop sets, against the same 63-prompt text
embeddings, on the first `--images` images of a split. It is a bound on what distillation can
carry, not a row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.data.detection import DetectionDataset  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402

CROP_SETS = {"1x": (1.0,), "1.5x": (1.5,), "2x": (2.0,), "1x+1.5x (the paper)": (1.0, 1.5), "1x+1.5x+2x": (1.0, 1.5, 2.0)}


def top1_table(hits: torch.Tensor, novel: torch.Tensor, size: torch.Tensor, edges: list[float]) -> dict:
    out = {"base": round(100 * float(hits[~novel].mean()), 1), "novel": round(100 * float(hits[novel].mean()), 1)}
    bounds = [0.0, *edges, float("inf")]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        keep = (size >= lo) & (size < hi)
        name = f"<{hi:g}px" if lo == 0 else (f">={lo:g}px" if hi == float("inf") else f"{lo:g}-{hi:g}px")
        out[name] = {k: round(100 * float(hits[keep & m].mean()), 1) if bool((keep & m).any()) else None
                     for k, m in (("base", ~novel), ("novel", novel))}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--images", type=int, default=250, help="the first N images of the split")
    p.add_argument("--by-size", type=float, nargs="*", default=[16, 22, 30], metavar="PX")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    paths = world_paths(args.world)
    teacher = Teacher.load(str(args.teacher))
    vocab = dataset_vocabulary(paths["val"])
    text = text_embeddings_for(teacher, vocab).float()
    base = torch.tensor(vocab["base"])
    images, annotations = ((paths["val_images"], paths["val"]) if args.split == "val"
                           else (paths["train_images"], paths["train_all"]))
    data = DetectionDataset(images, annotations, category_ids=vocab["category_ids"], with_masks=False)
    embeddings: dict[str, list] = {name: [] for name in CROP_SETS}
    labels, sizes = [], []
    for i in range(min(args.images, len(data))):
        image, target = data[i]
        boxes = target["boxes"]
        if not len(boxes):
            continue
        labels.append(target["labels"])
        sizes.append(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp_min(0).sqrt())
        for name, scales in CROP_SETS.items():
            embeddings[name].append(teacher.encode_regions(image, boxes, scales=scales))
    label, size = torch.cat(labels), torch.cat(sizes)
    novel = ~base[label]
    result = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "loadavg_start": os.getloadavg(),
        "boxes": {"base": int((~novel).sum()), "novel": int(novel.sum())},
        "top1": {name: top1_table(((torch.cat(e) @ text.T).argmax(1) == label).double(), novel, size, args.by_size)
                 for name, e in embeddings.items()},
    }
    result["seconds"] = round(time.perf_counter() - started, 1)
    for name, row in result["top1"].items():
        print(f"{name:22s} base {row['base']:5.1f}  novel {row['novel']:5.1f}", flush=True)
    save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
