"""Issue 14: does the student fail to *fit* novel objects or to *generalise* to them, and does
rarity weighting (`vild.regions.rarity`) help? Measured on the cached RoI features of
`benchmarks/distill_probe.py` (its cache, split and heads), in seconds per variant.

    .venv/bin/python benchmarks/distill_rarity_probe.py --world benchmarks/work/world-s7 \\
        --teacher benchmarks/work/teacher-s7 --trunk benchmarks/work/sw-s7/trunk \\
        --cache benchmarks/work/sw-s7/probe_cache.pt --out benchmarks/results/distill_s7/rarity_probe.json

Variants (top-1 on ground-truth boxes against the 24 text embeddings, reported on the
distilled train images, the held-out train images and val):
  * oracle heads trained with every label, imbalanced and class-balanced: their top-1 on
    their own training boxes says whether the features can separate novel objects at all;
  * the ViLD-image head in the training loop's form (8 images x their 100 proposals a step,
    SGD 0.04, clip 1, 1000 steps) with per-proposal weights: uniform (the paper), and
    the formula of `vild.regions.rarity` (what `vild train --set distill_rarity=P` uses) at
    power 0.5 and 1 (threshold 0.8, and 0.9 at power 1), over the probe's proposals;
  * the same head distilled on each image's top 10/20/30 proposals only, and with a relational
    loss (the student's softmax similarities to the step's teacher embeddings against the
    teacher's own) instead of or beside L1.

`--by-size 16 24 32` also splits val top-1 by object size (the square root of the box area in
the original image's pixels, at those edges), for every head and for the teacher itself: does
the student fall short of the teacher on small objects only (resolution) or at every size?
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import distill_probe as P  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.regions.rarity import rarity_weights  # noqa: E402


class CachedStore:
    """The probe cache's proposals seen as a region store (image index -> its teacher embeddings),
    in the cache's order, which is the store's."""

    def __init__(self, cache: dict) -> None:
        images, counts = torch.unique_consecutive(cache["prop_image"], return_counts=True)
        self.image_ids = images.tolist()
        self._rows = dict(zip(self.image_ids, cache["prop_teacher"].split(counts.tolist())))

    def get(self, image_id: int):
        emb = self._rows.get(image_id)
        return None if emb is None else (None, None, emb)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--trunk", type=Path, required=True)
    p.add_argument("--cache", type=Path, required=True, help="benchmarks/distill_probe.py's pooled features")
    p.add_argument("--holdout", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", nargs="*", help="run only these variants (default: all)")
    p.add_argument("--by-size", type=float, nargs="*", metavar="PX",
                   help="also report val top-1 by object size, split at these edges (sqrt of box area, px)")
    p.add_argument("--val-images", type=int, default=250, help="the cache's val images (--by-size)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = P.load_model(args.trunk).eval()
    teacher = P.Teacher.load(str(args.teacher))
    vocab = P.dataset_vocabulary(P.world_paths(args.world)["val"])
    text = P.text_embeddings_for(teacher, vocab).float()
    base = torch.tensor(vocab["base"])
    cache = torch.load(args.cache, weights_only=True)
    cut = int(cache["prop_image"].max()) + 1 - args.holdout
    split = {"train_props": cache["prop_image"] < cut, "held_props": cache["prop_image"] >= cut,
             "train_tgt": cache["tgt_image"] < cut, "held_tgt": cache["tgt_image"] >= cut}
    teacher_emb = cache["prop_teacher"].float()
    size_bins = val_size_bins(args, cache) if args.by_size else None

    def report(head) -> dict:
        with torch.no_grad():
            r = {}
            for part, sel in (("distilled_train", split["train_tgt"]), ("heldout_train", split["held_tgt"])):
                r.update(P.top1(part, head(cache["tgt_feat"][sel]), cache["tgt_label"][sel], text, base))
            val_emb = head(cache["val_feat"])
            r.update(P.top1("val", val_emb, cache["val_label"], text, base))
            if size_bins is not None:
                r["val_by_size"] = top1_by_size(val_emb, cache["val_label"], text, base, size_bins)
        return r

    def oracle(balanced: bool) -> dict:
        torch.manual_seed(0)
        head = P.trunk_head(model, text.shape[1])
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
        feats, labels = cache["tgt_feat"][split["train_tgt"]], cache["tgt_label"][split["train_tgt"]]
        counts = torch.bincount(labels, minlength=len(text)).float()
        draw = 1 / counts[labels] if balanced else torch.ones(len(labels))
        gen = torch.Generator().manual_seed(0)
        for _ in range(1500):
            idx = torch.multinomial(draw, 256, replacement=True, generator=gen)
            loss = F.cross_entropy(50 * head(feats[idx]) @ text.T, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return report(head)

    def distill(weights: torch.Tensor, steps: int = 1000, top: int | None = None, l1: float = 1.0,
                relational: float = 0.0, tau: float = 0.05) -> dict:
        """top: only each image's `top` best-ranked proposals; relational: weight of a loss on
        the student's softmax similarities to the step's teacher embeddings, against the
        teacher's own (temperature tau), beside (l1 = 1) or instead of (l1 = 0) the L1 loss."""
        torch.manual_seed(0)
        head = P.trunk_head(model, teacher_emb.shape[1])
        params = list(head.parameters())
        opt = torch.optim.SGD(params, lr=0.04, momentum=0.9, weight_decay=1e-4)
        keep = split["train_props"] if top is None else split["train_props"] & (cache["prop_rank"] < top)
        keep = torch.where(keep)[0]
        w = weights / weights[keep].mean()
        images, rows = P._runs(cache["prop_image"][keep], keep)
        gen = torch.Generator().manual_seed(0)
        for step in range(steps):
            for g in opt.param_groups:
                g["lr"] = P.lr_at(step, steps, 0.04)
            sel = torch.cat([rows[k] for k in torch.randint(len(images), (8,), generator=gen).tolist()])
            student, target = head(cache["prop_feat"][sel]), teacher_emb[sel]
            loss = 0.5 * l1 * ((student - target).abs().sum(1) * w[sel]).mean()
            if relational:
                wanted = torch.softmax(target @ target.T / tau, 1)
                got = torch.log_softmax(F.normalize(student, dim=1) @ target.T / tau, 1)
                loss = loss + relational * (-(wanted * got).sum(1) * w[sel]).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return report(head)

    def rarity(power: float, threshold: float = 0.8) -> torch.Tensor:
        """`vild.regions.rarity.rarity_weights` on the probe's (train + held-out) proposals, row by row."""
        weights = rarity_weights(CachedStore(cache), power=power, threshold=threshold)
        return torch.cat([weights[i] for i in sorted(weights)])

    variants = {
        "oracle_all_labels": lambda: oracle(False),
        "oracle_all_labels_class_balanced": lambda: oracle(True),
        "distill_uniform": lambda: distill(torch.ones(len(teacher_emb))),
        "distill_rarity_0.5": lambda: distill(rarity(0.5)),
        "distill_rarity_1": lambda: distill(rarity(1.0)),
        "distill_rarity_1_threshold_0.9": lambda: distill(rarity(1.0, 0.9)),
        # four times the steps: with more distilled images, whether more passes carry more
        "distill_uniform_steps4000": lambda: distill(torch.ones(len(teacher_emb)), steps=4000),
        "distill_rarity_0.5_steps4000": lambda: distill(rarity(0.5), steps=4000),
        "distill_uniform_steps16000": lambda: distill(torch.ones(len(teacher_emb)), steps=16000),
        "distill_rarity_0.5_steps16000": lambda: distill(rarity(0.5), steps=16000),
        # fewer proposals per image: fewer background ones (store rank = RPN score order)
        "distill_top30": lambda: distill(torch.ones(len(teacher_emb)), top=30),
        "distill_top20": lambda: distill(torch.ones(len(teacher_emb)), top=20),
        "distill_top10": lambda: distill(torch.ones(len(teacher_emb)), top=10),
        "distill_top20_rarity_0.5": lambda: distill(rarity(0.5), top=20),
        # a relational loss: rank the step's teacher embeddings as the teacher does
        "distill_relational_only_tau0.05": lambda: distill(torch.ones(len(teacher_emb)), l1=0, relational=1),
        "distill_relational_only_tau0.1": lambda: distill(torch.ones(len(teacher_emb)), l1=0, relational=1, tau=0.1),
        "distill_relational_only_tau0.02": lambda: distill(torch.ones(len(teacher_emb)), l1=0, relational=1, tau=0.02),
        "distill_l1_plus_relational_tau0.05": lambda: distill(torch.ones(len(teacher_emb)), relational=1),
    }
    if args.variants:
        unknown = sorted(set(args.variants) - set(variants))
        if unknown:
            p.error(f"unknown --variants {unknown}; known: {sorted(variants)}")
        variants = {k: v for k, v in variants.items() if k in args.variants}
    result = {"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "variants": {}}
    if size_bins is not None:
        result["teacher_val_by_size"] = top1_by_size(cache["val_teacher"].float(), cache["val_label"],
                                                     text, base, size_bins)
        print("teacher", json.dumps(result["teacher_val_by_size"]), flush=True)
    for name, run in variants.items():
        started = time.perf_counter()
        result["variants"][name] = {**run(), "seconds": round(time.perf_counter() - started, 1)}
        print(name, json.dumps(result["variants"][name]), flush=True)
        save_json(args.out, result)
    return 0


def val_size_bins(args, cache) -> tuple[torch.Tensor, list[str]]:
    """(bin index of every cached val box, bin names): the cache's val boxes in its order
    (`distill_probe.build_cache`: the first --val-images images, those without boxes skipped)."""
    from vild.data.detection import DetectionDataset

    paths = P.world_paths(args.world)
    ids = P.dataset_vocabulary(paths["val"])["category_ids"]
    val = DetectionDataset(paths["val_images"], paths["val"], category_ids=ids, with_masks=False)
    sizes = []
    for i in range(min(args.val_images, len(val))):
        boxes = val[i][1]["boxes"]
        if len(boxes):
            sizes.append(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt())
    sizes = torch.cat(sizes)
    if len(sizes) != len(cache["val_label"]):
        raise SystemExit(f"{len(sizes)} val boxes in the world's first {args.val_images} images, "
                         f"{len(cache['val_label'])} in the cache: give the cache's --val-images")
    edges = sorted(args.by_size)
    names = [f"<{edges[0]:g}px"] + [f"{a:g}-{b:g}px" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]:g}px"]
    return torch.bucketize(sizes, torch.tensor(edges), right=True), names


def top1_by_size(emb, labels, text, base, size_bins) -> dict:
    """Top-1 (base / novel) and box counts in each size bin."""
    bins, names = size_bins
    hit = ((emb @ text.T).argmax(1) == labels).double()
    novel = ~base[labels]
    out = {}
    for b, name in enumerate(names):
        entry = {}
        for kind, sel in (("base", (bins == b) & ~novel), ("novel", (bins == b) & novel)):
            n = int(sel.sum())
            entry[f"top1_{kind}"] = round(100 * float(hit[sel].mean()), 1) if n else None
            entry[f"boxes_{kind}"] = n
        out[name] = entry
    return out


if __name__ == "__main__":
    sys.exit(main())
