"""Issue 14 diagnostic (an oracle: it reads the novel labels): how much does the text loss's
"background" label on the unlabelled novel objects of the train images cost the distilled rows?

The train images show the novel shapes too; with base labels only, every RoI on one of them is
a background RoI of the classification loss, while the distillation loss pulls the same
region towards the teacher's embedding of a novel shape: the paper's "conflicting objectives"
of one head. This script trains rows exactly as `benchmarks/distill_rows.py` does, except that
the training targets also hold the novel objects' boxes, labelled "ignore": RoIs matched to
them (IoU >= 0.5) take no classification, box or mask loss, and nothing else changes: the
novel boxes only mark RoIs to leave out, and no novel class or name enters a loss. It is not a
method (training may not read novel labels); it bounds what a label-free way of finding those
objects could gain.

    .venv/bin/python benchmarks/distill_ignore_novel.py --world benchmarks/work/world-s7 \\
        --teacher benchmarks/work/teacher-s7 --trunk benchmarks/work/sw-s7/trunk \\
        --store benchmarks/work/sw-s7/regions --modes vild --steps 4000 \\
        --set distill_rarity=0.5 --out benchmarks/work/sw-s7-ignore-novel/seed0

Arguments are `distill_rows.py`'s. Evaluate with `benchmarks/distill_eval_sweep.py`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import distill_rows  # noqa: E402
import vild.training.loop as training_loop  # noqa: E402
from vild.data.detection import DetectionDataset, load_annotation_file  # noqa: E402

#: target label of an object whose RoIs are ignored (`ViLDRoIHeads.sample_rois` adds 1: -1 = ignore)
IGNORED = -2


class NovelObjectsIgnored(DetectionDataset):
    """The train split with every category's boxes: base objects keep their base label, the
    others are labelled IGNORED. Reads the all-labels file beside the base-labels one."""

    def __init__(self, images_dir, annotation_file, *, category_ids, **kwargs):
        all_labels = Path(annotation_file).with_name("annotations_all.json")
        if not all_labels.is_file():
            raise SystemExit(f"{all_labels} is missing: the oracle needs the all-labels train file")
        every_id = sorted(int(c["id"]) for c in load_annotation_file(all_labels)["categories"])
        super().__init__(images_dir, all_labels, category_ids=every_id, **kwargs)
        base_label = {int(c): i for i, c in enumerate(category_ids)}
        self._to_base = torch.tensor([base_label.get(c, IGNORED) for c in every_id], dtype=torch.int64)

    def __getitem__(self, index):
        image, target = super().__getitem__(index)
        target["labels"] = self._to_base[target["labels"]]
        return image, target


if __name__ == "__main__":
    training_loop.DetectionDataset = NovelObjectsIgnored
    sys.exit(distill_rows.main())
