"""Would a detector trunk made from the teacher's image tower carry what the teacher knows?

    .venv/bin/python benchmarks/teacher_trunk_probe.py --world benchmarks/work/world-s7 \
        --teacher benchmarks/work/teacher-s7 --store benchmarks/work/sw-s7/regions \
        --out benchmarks/results/distill_s7/teacher_trunk_probe.json

Sections 4-6 of docs/distillation.md find that every head on the detector's own (base-trained)
RoI features names 37-54% of novel val objects, while the teacher, shown a crop of each box,
names 78%. This probe asks whether the teacher's tower, run once over the whole image as a
detector trunk would be, keeps that knowledge in its feature map. It measures, on ground-truth
boxes of the first `--val-images` val images (novel and base top-1 against the 24 text
embeddings):

  * `crops`: the teacher itself (1x + 1.5x crops resized to its input size): the bound;
  * `dense_x{k}`, zero-shot: the tower's last feature map of the image upsampled k times,
    RoI-aligned over each 1x and 1.5x box to the map size the tower sees on a crop, then the
    tower's own pooling and projection (no training at all; what F-VLM does with CLIP);
  * `dense_per_box_scale`: the same, each box read from the map on which its longest side is
    nearest the tower's crop size (`vild.model.tower_regions`, as FPN assigns boxes to levels);
  * `distilled_per_box_scale`, optional (`--distill`): a head (FC 1024, projection, L2 norm)
    trained, as ViLD-image's head is, with L1 towards the region store's teacher embeddings of
    proposals, on those per-box-scale features (1x and 1.5x boxes, 2x2 grid; train images, the
    last `--holdout` held out for the label-free cosine).
Nothing here is a method of the library; it bounds what a teacher-initialised trunk could give.
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

from benchmarks.distill_probe import Head, log, lr_at, top1  # noqa: E402
from vild.data.detection import DetectionDataset  # noqa: E402
from vild.errors import VildError  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.regions.store import RegionStore  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.model.tower_regions import TowerRegionFeatures  # noqa: E402
from vild.training.tower_head import teacher_tower  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


def load_teacher_and_world(args) -> tuple:
    """(teacher, its DenseTeacher, the world's paths, val vocabulary, text embeddings, base mask)."""
    torch.set_num_threads(args.threads)
    teacher = Teacher.load(str(args.teacher))
    paths = world_paths(args.world)
    vocab = dataset_vocabulary(paths["val"])
    text = text_embeddings_for(teacher, vocab).float()
    return teacher, DenseTeacher(teacher), paths, vocab, text, torch.tensor(vocab["base"])


class DenseTeacher:
    """The teacher's image tower read as a dense trunk (`vild.model.tower_regions`), and its own
    pooling and projection for the zero-shot reading."""

    def __init__(self, teacher: Teacher) -> None:
        try:
            _, vision_cfg, trunk = teacher_tower(teacher)  # the library's check: a tower with a feature map
        except VildError as e:
            raise SystemExit(str(e)) from None
        if vision_cfg:  # the zero-shot reading pools with timm's forward_head
            raise SystemExit(f"teacher {teacher.name}: the probe reads timm towers only (this one is open_clip's)")
        self.teacher = teacher
        self.trunk, self.projection = trunk.eval(), teacher.model.visual.head.eval()
        probe = self.reader([1.0], grid=1)
        self.map_size, self.stride = probe.map_size, probe.stride  # the map the tower pools on a crop

    def reader(self, factors, grid: int | None = None) -> TowerRegionFeatures:
        """Per-box-scale RoI features over `factors`, averaged to grid x grid (None: the full map)."""
        t = self.teacher
        return TowerRegionFeatures(self.trunk, crop_size=t.image_size, mean=t.mean.flatten().tolist(),
                                   std=t.std.flatten().tolist(), factors=[float(f) for f in factors],
                                   grid=self.map_size if grid is None else grid)

    @torch.no_grad()
    def zero_shot(self, features: torch.Tensor) -> torch.Tensor:
        """Full-map features [N, K*C*S*S] -> the tower's own pooling and projection per box
        scale, summed and normalised as the teacher sums its 1x and 1.5x crops."""
        n, s = len(features), self.map_size
        maps = features.view(n, -1, self.trunk.num_features, s, s)
        emb = F.normalize(self.projection(self.trunk.forward_head(maps.flatten(0, 1).float())), dim=-1)
        return F.normalize(emb.view(n, maps.shape[1], -1).sum(1), dim=-1)


def new_head(in_dim: int, out_dim: int) -> Head:
    """The distilled head: FC 1024, projection, L2 norm (distill_probe's head, one hidden layer)."""
    return Head(in_dim, (1024,), out_dim)


def train_distilled(feats, targets, image_of, cut, *, steps, lr=1e-3, images_per_step=8, seed=0) -> Head:
    torch.manual_seed(seed)
    head = new_head(feats[0].numel(), targets.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    values, counts = torch.unique_consecutive(image_of, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    train_images = torch.where(values < cut)[0]
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        pick = train_images[torch.randint(len(train_images), (images_per_step,), generator=gen)]
        rows = torch.cat([torch.arange(int(starts[i]), int(starts[i] + counts[i])) for i in pick])
        loss = 0.5 * (head(feats[rows]) - targets[rows].float()).abs().sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--store", type=Path, help="region store (needed with --distill)")
    p.add_argument("--upsample", type=float, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--distill", action="store_true", help="also train distilled heads on the pooled maps")
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--holdout", type=int, default=200)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    started = time.perf_counter()
    teacher, dense, paths, vocab, text, base = load_teacher_and_world(args)
    ids = vocab["category_ids"]
    val = DetectionDataset(paths["val_images"], paths["val"], category_ids=ids, with_masks=False)
    result: dict = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                    "loadavg_start": os.getloadavg(), "tower_map_size": dense.map_size,
                    "tower_stride": dense.stride, "rows": {}}
    val_items = [val[i] for i in range(min(args.val_images, len(val)))]
    val_items = [(img, t) for img, t in val_items if len(t["boxes"])]
    labels = torch.cat([t["labels"] for _, t in val_items])
    sizes = torch.cat([(t["boxes"][:, 2:] - t["boxes"][:, :2]).amax(1) for _, t in val_items])
    result["val_boxes"] = {"count": len(labels), "novel": int((~base[labels]).sum()),
                           "median_longest_side_px": float(sizes.median())}
    crops = torch.cat([teacher.encode_regions(img, t["boxes"]) for img, t in val_items])
    result["rows"]["crops"] = top1("val_gt", crops, labels, text, base)
    log(f"crops {result['rows']['crops']}")
    for k in args.upsample:
        reader = dense.reader([k])
        emb = torch.cat([dense.zero_shot(reader(img[None], [t["boxes"]])) for img, t in val_items])
        result["rows"][f"dense_x{k:g}"] = row = dense_row(emb, crops, labels, text, base)
        log(f"dense x{k:g} {row}")
        save_json(args.out, result)
    reader = dense.reader(args.upsample)  # each box at the upsampling nearest the crop size
    emb = torch.cat([dense.zero_shot(reader(img[None], [t["boxes"]])) for img, t in val_items])
    result["rows"]["dense_per_box_scale"] = dense_row(emb, crops, labels, text, base)
    log(f"dense per-box scale {result['rows']['dense_per_box_scale']}")
    save_json(args.out, result)
    if args.distill:
        result["rows"]["distilled_per_box_scale"] = distilled_row(args, dense, val_items, labels, text, base)
        log(f"distilled per-box scale {result['rows']['distilled_per_box_scale']}")
    result["seconds"] = round(time.perf_counter() - started, 1)
    save_json(args.out, result)
    return 0


def dense_row(emb, crops, labels, text, base) -> dict:
    return {**top1("val_gt", emb, labels, text, base),
            "cosine_to_crops": round(float((emb * crops).sum(1).mean()), 4)}


def pool_train_proposals(dense, world, store_dir, factors, max_images) -> tuple:
    """Pooled features, stored teacher embeddings and image index of the region store's proposals."""
    t0 = time.perf_counter()
    reader = dense.reader(factors, grid=2)
    paths = world_paths(world)
    store = RegionStore(store_dir)
    train = DetectionDataset(paths["train_images"], paths["train_all"], with_masks=False)
    feats, targets, image_of = [], [], []
    for i in range(min(max_images, len(train))):
        entry = store.get(train.image_ids[i])
        if entry is None or not len(entry[0]):
            continue
        image, _ = train[i]
        feats.append(reader(image[None], [entry[0].float()]).half())
        targets.append(entry[2])
        image_of.append(torch.full((len(entry[0]),), i))
        if i % 500 == 0:
            log(f"pooled train image {i} ({time.perf_counter() - t0:.0f} s)")
    return torch.cat(feats), torch.cat(targets), torch.cat(image_of)


def distilled_row(args, dense, val_items, labels, text, base) -> dict:
    if args.store is None:
        raise SystemExit("--distill needs --store")
    t0 = time.perf_counter()
    feats, targets, image_of = pool_train_proposals(dense, args.world, args.store, args.upsample, args.train_images)
    cut = int(image_of.max()) + 1 - args.holdout
    head = train_distilled(feats, targets, image_of, cut, steps=args.steps)
    with torch.no_grad():
        held = image_of >= cut
        cos = float((head(feats[held]) * targets[held].float()).sum(1).mean())
        reader = dense.reader(args.upsample, grid=2)
        emb = head(torch.cat([reader(img[None], [t["boxes"]]) for img, t in val_items]))
    return {**top1("val_gt", emb, labels, text, base), "heldout_proposal_cosine": round(cos, 4),
            "train_proposals": int((~held).sum()), "steps": args.steps,
            "seconds": round(time.perf_counter() - t0, 1)}


if __name__ == "__main__":
    sys.exit(main())
