"""Why does the student not learn what the teacher knows? Distillation measured on cached RoI features.

    .venv/bin/python benchmarks/distill_probe.py --world benchmarks/work/world \
        --teacher benchmarks/work/teacher --trunk benchmarks/work/shapeworld/trunk \
        --store benchmarks/work/shapeworld/regions --out benchmarks/results/distill_probe.json

In the shared-trunk protocol of `benchmarks/shapeworld.py` the backbone, FPN and RPN are
frozen while a row trains, so a row's region-embedding head sees fixed RoI features. This
script pools those features once (no augmentation) and trains heads on them in seconds, which
lets each hypothesis be measured in isolation:

  * the bound: the teacher's own top-1 on ground-truth boxes (1x + 1.5x crops);
  * what the frozen features hold: a head trained with *every* label (novel included; an
    oracle, never a method) on train ground-truth boxes, scored on val ground-truth boxes;
  * what distillation carries: a ViLD-image head trained on the stored proposals' teacher
    embeddings, scored by its cosine to the teacher on held-out train proposals (label-free),
    its top-1 on held-out train ground-truth boxes and on val ground-truth boxes;
  * variants of that head's optimisation (the row's recipe, without gradient clipping,
    longer, Adam, L1 / L2 / cosine, proposals per image, head width).

Settings are chosen on the held-out part of train (`--holdout` last images: label-free cosine
and base top-1; novel top-1 there is reported as a diagnostic); val numbers are reported beside.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.data.detection import DetectionDataset  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.model.heads import TowerEmbeddingHead  # noqa: E402
from vild.regions.store import RegionStore  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------- caching
@torch.no_grad()
def pool(model, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """RoI features [N, C, S, S] (fp16) of boxes [N, 4] (original px) on the frozen trunk."""
    image_list, targets = model.transform([image], [{"boxes": boxes, "labels": torch.zeros(len(boxes), dtype=torch.int64)}])
    features = model.backbone(image_list.tensors)
    return model.roi_heads.box_roi_pool(features, [targets[0]["boxes"]], image_list.image_sizes).half()


@torch.no_grad()
def build_cache(args, model, teacher, vocab) -> dict:
    paths = world_paths(args.world)
    ids = vocab["category_ids"]
    store = RegionStore(args.store)
    train = DetectionDataset(paths["train_images"], paths["train_all"], category_ids=ids, with_masks=False)
    val = DetectionDataset(paths["val_images"], paths["val"], category_ids=ids, with_masks=False)
    cache: dict[str, list] = {k: [] for k in (
        "prop_feat", "prop_teacher", "prop_rank", "prop_image",
        "tgt_feat", "tgt_label", "tgt_image", "val_feat", "val_label", "val_teacher")}
    started = time.perf_counter()
    for i in range(len(train)):
        image, target = train[i]
        entry = store.get(train.image_ids[i])
        boxes = target["boxes"]
        if entry is not None and len(entry[0]):
            pboxes, _, pemb = entry
            feats = pool(model, image, torch.cat([pboxes.float(), boxes]))
            n = len(pboxes)
            cache["prop_feat"].append(feats[:n]); cache["prop_teacher"].append(pemb.half())
            cache["prop_rank"].append(torch.arange(n)); cache["prop_image"].append(torch.full((n,), i))
            feats = feats[n:]
        else:
            feats = pool(model, image, boxes) if len(boxes) else None
        if len(boxes):
            cache["tgt_feat"].append(feats); cache["tgt_label"].append(target["labels"])
            cache["tgt_image"].append(torch.full((len(boxes),), i))
        if i % 500 == 0:
            log(f"train {i}/{len(train)} ({time.perf_counter() - started:.0f} s)")
    for i in range(min(args.val_images, len(val))):
        image, target = val[i]
        if not len(target["boxes"]):
            continue
        cache["val_feat"].append(pool(model, image, target["boxes"]))
        cache["val_label"].append(target["labels"])
        cache["val_teacher"].append(teacher.encode_regions(image, target["boxes"]).half())
    return {k: torch.cat(v) for k, v in cache.items()}


# ------------------------------------------------------------------------------- heads
class Head(TowerEmbeddingHead):
    """The ShapeWorld box head (flatten -> FC ... -> projection -> L2 norm) -> embeddings alone:
    the library's tower head (`vild.model.heads.TowerEmbeddingHead`), whose layout it shares."""

    def __init__(self, in_dim: int, fc: tuple[int, ...], out_dim: int) -> None:
        super().__init__(in_dim=in_dim, fc_dims=tuple(fc), embed_dim=out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float())[1]


def trunk_head(model, out_dim: int) -> Head:
    """A head whose body starts from the trunk's box-head body, as every row of the table does."""
    body = model.roi_heads.text_head.body
    linears = [m for m in body.modules() if isinstance(m, nn.Linear)]
    head = Head(linears[0].in_features, tuple(m.out_features for m in linears), out_dim)
    for mine, theirs in zip([m for m in head.body if isinstance(m, nn.Linear)], linears):
        mine.load_state_dict(theirs.state_dict())
    return head


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    diff = student - teacher
    if kind == "l1":
        return diff.abs().sum(1).mean()
    if kind == "l2":
        return diff.pow(2).sum(1).mean()
    return (1 - (student * teacher).sum(1)).mean()  # cosine


def lr_at(step: int, steps: int, lr: float, warmup: int = 50) -> float:
    for f in (0.9, 0.95):
        if step >= round(f * steps):
            lr *= 0.1
    if step < warmup:
        a = step / warmup
        lr *= 0.1 * (1 - a) + a
    return lr


def train_distill(cache, split, model, *, steps=1000, lr=0.04, clip=1.0, optim="sgd", loss="l1",
                  weight=0.5, proposals=100, fc=None, init="trunk", seed=0, images_per_step=8) -> tuple[Head, dict]:
    torch.manual_seed(seed)
    d = cache["prop_teacher"].shape[1]
    in_dim = cache["prop_feat"][0].numel()
    head = trunk_head(model, d) if init == "trunk" and fc is None else Head(in_dim, fc or (256, 256), d)
    params = list(head.parameters())
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4) if optim == "sgd"
           else torch.optim.AdamW(params, lr=lr, weight_decay=1e-4))
    keep = torch.where(split["train_props"] & (cache["prop_rank"] < proposals))[0]
    rows_of = {}  # image -> its rows (the cache lists proposals image by image)
    for image, rows in zip(*_runs(cache["prop_image"][keep], keep)):
        rows_of[image] = rows
    images = list(rows_of)
    gen = torch.Generator().manual_seed(seed)
    clipped, norms = 0, []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        pick = torch.randint(len(images), (images_per_step,), generator=gen).tolist()
        sel = torch.cat([rows_of[images[k]] for k in pick])
        student = head(cache["prop_feat"][sel])
        value = weight * distill_loss(student, cache["prop_teacher"][sel].float(), loss)
        opt.zero_grad(set_to_none=True)
        value.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float("inf"))
        norms.append(float(norm)); clipped += int(bool(clip) and float(norm) > clip)
        opt.step()
    return head, {"grad_norm_median": sorted(norms)[len(norms) // 2], "share_of_steps_clipped": clipped / steps}


@torch.no_grad()
def score(head, cache, split, text, base) -> dict:
    held = split["held_props"]
    student = head(cache["prop_feat"][held])
    teacher = cache["prop_teacher"][held].float()
    cos = (student * teacher).sum(1)
    out = {"heldout_proposal_cosine": round(float(cos.mean()), 4),
           "heldout_proposal_l1": round(float((student - teacher).abs().sum(1).mean()), 3),
           # the part of the teacher that names things: cosine after removing the mean embedding
           "heldout_centred_cosine": round(float(F.cosine_similarity(
               student - student.mean(0), teacher - teacher.mean(0)).mean()), 4)}
    out.update(top1("heldout_train_gt", head(cache["tgt_feat"][split["held_tgt"]]),
                    cache["tgt_label"][split["held_tgt"]], text, base))
    out.update(top1("val_gt", head(cache["val_feat"]), cache["val_label"], text, base))
    return out


def top1(prefix: str, emb: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, base: torch.Tensor) -> dict:
    hit = ((emb @ text.T).argmax(1) == labels).double()
    novel = ~base[labels]
    return {f"{prefix}_top1_base": round(100 * float(hit[~novel].mean()), 1),
            f"{prefix}_top1_novel": round(100 * float(hit[novel].mean()), 1)}


def oracle_probe(cache, split, model, text, base, steps=1500) -> dict:
    """Every label, novel included, on train ground-truth boxes: what the frozen features hold."""
    torch.manual_seed(0)
    head = trunk_head(model, text.shape[1])
    opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)
    feats, labels = cache["tgt_feat"][split["train_tgt"]], cache["tgt_label"][split["train_tgt"]]
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(labels), (256,), generator=gen)
        logits = 50 * head(feats[idx]) @ text.T
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad(); loss.backward(); opt.step()
    with torch.no_grad():
        return {**top1("heldout_train_gt", head(cache["tgt_feat"][split["held_tgt"]]),
                       cache["tgt_label"][split["held_tgt"]], text, base),
                **top1("val_gt", head(cache["val_feat"]), cache["val_label"], text, base)}


VARIANTS = {
    "row_recipe": {},  # what benchmarks/shapeworld.py's ViLD-image row does (SGD 0.04, clip 1, 1000 steps)
    "no_clip": dict(clip=None),
    "no_clip_4x_steps": dict(clip=None, steps=4000),
    "adamw_1e-3": dict(optim="adamw", lr=1e-3, clip=None),
    "adamw_1e-3_4x_steps": dict(optim="adamw", lr=1e-3, clip=None, steps=4000),
    "l2_no_clip": dict(loss="l2", clip=None),
    "cosine_no_clip": dict(loss="cosine", clip=None),
    "300_proposals_no_clip": dict(proposals=300, clip=None),
    "weight_2_no_clip": dict(weight=2.0, clip=None),
    "fc1024_adamw": dict(fc=(1024, 1024), optim="adamw", lr=1e-3, clip=None),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, required=True)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--trunk", type=Path, required=True)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--cache", type=Path, help="where pooled features are kept (default: STORE/../probe_cache.pt)")
    p.add_argument("--holdout", type=int, default=200, help="last N train images held out for choosing settings")
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = load_model(args.trunk).eval()
    teacher = Teacher.load(str(args.teacher))
    vocab = dataset_vocabulary(world_paths(args.world)["val"])
    text = text_embeddings_for(teacher, vocab).float()
    base = torch.tensor(vocab["base"])
    cache_path = args.cache or args.store.parent / "probe_cache.pt"
    if cache_path.is_file():
        cache = torch.load(cache_path, weights_only=True)
    else:
        log("pooling RoI features of the frozen trunk")
        cache = build_cache(args, model, teacher, vocab)
        torch.save(cache, cache_path)
    n_train = int(cache["prop_image"].max()) + 1
    cut = n_train - args.holdout
    split = {"train_props": cache["prop_image"] < cut, "held_props": cache["prop_image"] >= cut,
             "train_tgt": cache["tgt_image"] < cut, "held_tgt": cache["tgt_image"] >= cut}
    result: dict = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "loadavg_start": os.getloadavg(),
        "proposals_per_image_stored": int(cache["prop_rank"].max()) + 1,
        "teacher_top1_on_val_gt": top1("val_gt", cache["val_teacher"].float(), cache["val_label"], text, base),
        "teacher_proposal_embeddings": {
            "mean_pairwise_cosine": round(float(_mean_pairwise(cache["prop_teacher"][split["held_props"]].float())), 4)},
    }
    log(f"teacher bound {result['teacher_top1_on_val_gt']}")
    result["oracle_probe_all_labels"] = oracle_probe(cache, split, model, text, base)
    log(f"oracle {result['oracle_probe_all_labels']}")
    result["variants"] = {}
    for name in args.variants:
        t = time.perf_counter()
        head, stats = train_distill(cache, split, model, **VARIANTS[name])
        entry = {**VARIANTS[name], **stats, **score(head, cache, split, text, base),
                 "seconds": round(time.perf_counter() - t, 1)}
        entry = {k: (list(v) if isinstance(v, tuple) else v) for k, v in entry.items()}
        result["variants"][name] = entry
        log(f"{name}: {json.dumps(entry)}")
        save_json(args.out, result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    save_json(args.out, result)
    return 0


def _runs(image_of_row: torch.Tensor, rows: torch.Tensor):
    """Group `rows` by consecutive equal `image_of_row` -> (image ids, list of row tensors)."""
    values, counts = torch.unique_consecutive(image_of_row, return_counts=True)
    return values.tolist(), list(rows.split(counts.tolist()))


def _mean_pairwise(x: torch.Tensor) -> float:
    x = x[: 4000]
    s = x @ x.T
    return float((s.sum() - s.diagonal().sum()) / (len(x) * (len(x) - 1)))


if __name__ == "__main__":
    sys.exit(main())
