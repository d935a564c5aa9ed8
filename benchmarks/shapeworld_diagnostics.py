"""Why ViLD-text scores so low on ShapeWorld-OV base categories: novel names absorb regions.

    .venv/bin/python benchmarks/shapeworld_diagnostics.py [--seed-dir benchmarks/work/shapeworld/seed0]

For the ViLD-text and ViLD-ensemble models of one seed of `benchmarks/shapeworld.py`, on the
first --val-images val images:
  * the share of detections (score > 0.05) labelled with a novel category;
  * base AP (LVIS mask APc/APf) with the full 24-name vocabulary vs with the 16 base names only;
  * statistics of the teacher's text embeddings (pairwise cosine) and, per novel name, how
    often it is the nearest text embedding of a ViLD-text region embedding.
Writes benchmarks/results/shapeworld_diagnostics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=ROOT / "benchmarks/work/world")
    parser.add_argument("--teacher", type=Path, default=ROOT / "benchmarks/work/teacher")
    parser.add_argument("--seed-dir", type=Path, default=ROOT / "benchmarks/work/shapeworld/seed0")
    parser.add_argument("--val-images", type=int, default=250)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/shapeworld_diagnostics.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    paths = world_paths(args.world)
    vocab = dataset_vocabulary(paths["val"])
    teacher = Teacher.load(args.teacher)
    text = text_embeddings_for(teacher, vocab)
    base = torch.tensor(vocab["base"])
    ids = vocab["category_ids"]
    novel_ids = [c for c, b in zip(ids, vocab["base"]) if not b]
    base_ids = [c for c, b in zip(ids, vocab["base"]) if b]

    sim = text @ text.T
    off = sim[~torch.eye(len(sim), dtype=torch.bool)]
    result: dict = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "seed_dir": str(args.seed_dir), "val_images": args.val_images,
        "loadavg_start": os.getloadavg(),
        "text_cosine": {"mean": round(float(off.mean()), 3), "min": round(float(off.min()), 3),
                        "max": round(float(off.max()), 3),
                        "novel_to_base_mean": round(float(sim[~base][:, base].mean()), 3),
                        "base_to_base_mean": round(float(sim[base][:, base][~torch.eye(int(base.sum()), dtype=torch.bool)].mean()), 3)},
        "rows": {},
    }
    for row in ("text", "ensemble"):
        model = load_model(args.seed_dir / row)
        tmp = args.out.with_suffix(f".{row}.detections.json")
        full = evaluate_detector(model, paths["val_images"], paths["val"], text, ids, base_mask=base,
                                 novel_category_ids=novel_ids, progress=False, max_images=args.val_images,
                                 results_path=tmp)
        dets = json.loads(tmp.read_text())
        tmp.unlink()
        base_only = evaluate_detector(model, paths["val_images"], paths["val"], text[base], base_ids,
                                      base_mask=torch.ones(int(base.sum()), dtype=torch.bool),
                                      novel_category_ids=novel_ids, progress=False, max_images=args.val_images)
        entry = {
            "full_vocabulary": {k: full["lvis"]["segm"][k] for k in ("AP", "APr", "APc", "APf")},
            "base_vocabulary_only": {k: base_only["lvis"]["segm"][k] for k in ("APc", "APf")},
        }
        if isinstance(dets, list):
            kept = [d for d in dets if d["score"] > 0.05]
            entry["share_of_detections_labelled_novel"] = round(
                sum(d["category_id"] in set(novel_ids) for d in kept) / max(1, len(kept)), 3)
        result["rows"][row] = entry
        print(row, json.dumps(entry), flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    save_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
