"""How well each row's box regressor refines the same proposals of novel and base objects.

    .venv/bin/python benchmarks/box_refinement.py --world benchmarks/work/world-s7 \
        --row vild=benchmarks/work/sw-s7/seed2/vild --row ensemble=OTHER_ROW --out R.json

Rows trained on one frozen trunk and RPN see the same proposals, so their refined boxes can be
compared proposal by proposal: over the first --val-images val images, every proposal with IoU
>= 0.5 to an object, split by whether that object is novel or base, its IoU before and after
refinement (docs/distillation.md section 27: ViLD's lower novel AP is not its boxes).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from shapeworld_diagnostics import images_with_objects  # noqa: E402
from vild.data.detection import DetectionDataset  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, world_paths  # noqa: E402


@torch.no_grad()
def refinement(model, dataset: DetectionDataset, base: torch.Tensor, max_images: int) -> dict:
    """{"novel"|"base": {"proposals", "proposal_iou", "refined_iou"}} (mean IoUs)."""
    model.eval()
    sums = {split: [0, 0.0, 0.0] for split in ("novel", "base")}
    for target, image_list, objects, features in images_with_objects(model, dataset, max_images):
        proposals, _, _ = model._propose(image_list, features, None)
        refined = model.roi_heads.region_outputs(features, proposals, image_list.image_sizes)[0][0]
        best, match = box_iou(proposals[0], objects).max(dim=1)
        after = box_iou(refined, objects)[torch.arange(len(match)), match]
        on_base = base[target["labels"][match]]
        for split, of_split in (("novel", ~on_base), ("base", on_base)):
            keep = (best >= 0.5) & of_split
            sums[split][0] += int(keep.sum())
            sums[split][1] += float(best[keep].sum())
            sums[split][2] += float(after[keep].sum())
    return {split: {"proposals": n, "proposal_iou": round(b / max(n, 1), 4), "refined_iou": round(a / max(n, 1), 4)}
            for split, (n, b, a) in sums.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--row", action="append", required=True, metavar="LABEL=MODEL_DIR")
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths = world_paths(args.world)
    vocab = dataset_vocabulary(paths["val"])
    dataset = DetectionDataset(paths["val_images"], paths["val"], category_ids=vocab["category_ids"], with_masks=False)
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "loadavg_start": os.getloadavg(), "rows": {}}
    for spec in args.row:
        label, _, model_dir = spec.partition("=")
        if not (label and model_dir):
            p.error(f"--row {spec!r}: LABEL=MODEL_DIR")
        result["rows"][label] = refinement(load_model(model_dir), dataset, torch.tensor(vocab["base"]), args.val_images)
        print(label, result["rows"][label], flush=True)
        save_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
