"""What the rows of the ShapeWorld-OV table learned, measured apart from detection.

    .venv/bin/python benchmarks/shapeworld_diagnostics.py --seed-dir benchmarks/work/shapeworld/seed0

For the models of one seed of `benchmarks/shapeworld.py`, on the first --val-images val images:
  * region classification on ground-truth boxes: top-1 accuracy of each head's region
    embedding against the 24 text embeddings (all, base, novel), so distillation's effect on
    novel categories is seen without proposals, background or NMS; the share of base boxes
    given a novel name; per novel category, each head's top-1 and the name it gives those
    boxes most often, beside the teacher's own top-1;
  * the share of detections (score > 0.05) labelled with a novel category (hubness);
  * base AP (LVIS mask APc/APf) with the full 24-name vocabulary vs with the 16 base names only;
  * statistics of the teacher's text embeddings (pairwise cosine).
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

from vild.data.detection import DetectionDataset  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import save_json  # noqa: E402
from vild.teacher import Teacher  # noqa: E402
from vild.training.checkpoint import load_model, load_vocabulary  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for, world_paths  # noqa: E402


def images_with_objects(model, dataset: DetectionDataset, max_images: int):
    """Yield (target, the model's image list, its boxes resized to it, backbone features) for
    each of the first `max_images` images that has objects."""
    for i in range(min(max_images, len(dataset))):
        image, target = dataset[i]
        if len(target["boxes"]) == 0:
            continue
        image_list, resized = model.transform([image], [{"boxes": target["boxes"], "labels": target["labels"]}])
        with torch.no_grad():
            features = model.backbone(image_list.tensors)
        yield target, image_list, resized[0]["boxes"], features


@torch.no_grad()
def ground_truth_box_accuracy(model, dataset: DetectionDataset, text: torch.Tensor, base: torch.Tensor,
                              max_images: int, names: list[str] | None = None) -> dict:
    """Top-1 of each head's embedding of every ground-truth box against all text embeddings.
    With `names`, also each novel category's top-1 and the name each head gives its boxes
    most often (the category's own name unless another takes more of its boxes)."""
    model.eval()
    heads = model.roi_heads
    hits: dict[str, list[bool]] = {"text_head": [], "distillation_head": [], "model_scores": []}
    is_novel: list[bool] = []
    predicted: dict[str, list[int]] = {name: [] for name in hits}
    truth: list[int] = []
    for target, image_list, resized_boxes, features in images_with_objects(model, dataset, max_images):
        pooled = heads.box_roi_pool(features, [resized_boxes], image_list.image_sizes)
        _, embeddings = heads.text_head(pooled)
        image_embeddings = heads.image_head(pooled)[1] if heads.image_head is not None else None
        labels = target["labels"]
        probs = heads.class_probabilities(embeddings, image_embeddings, text, base)
        guesses = {"model_scores": probs.argmax(1), "text_head": (embeddings @ text.T).argmax(1)}
        if image_embeddings is not None:
            guesses["distillation_head"] = (image_embeddings @ text.T).argmax(1)
        for name, guess in guesses.items():
            hits[name] += (guess == labels).tolist()
            predicted[name] += guess.tolist()
        truth += labels.tolist()
        is_novel += (~base[labels]).tolist()
    novel = torch.tensor(is_novel)
    out = {}
    for name, h in hits.items():
        if h:
            h = torch.tensor(h, dtype=torch.float64)
            named_novel = ~base[torch.tensor(predicted[name])]
            out[name] = {"all": round(100 * float(h.mean()), 1), "base": round(100 * float(h[~novel].mean()), 1),
                         "novel": round(100 * float(h[novel].mean()), 1),
                         # base objects the head gives a novel name: false positives for novel AP
                         "base_named_novel": round(100 * float(named_novel[~novel].double().mean()), 1)}
    out["boxes"] = len(is_novel)
    if names is not None:
        out["novel_by_category"] = _novel_by_category(predicted, truth, base, names)
    return out


@torch.no_grad()
def teacher_novel_by_category(teacher, dataset: DetectionDataset, text: torch.Tensor, base: torch.Tensor,
                              names: list[str], max_images: int) -> dict:
    """The teacher's own top-1 per novel category on the same boxes (1x + 1.5x crops): the bound."""
    guesses, truth = [], []
    for i in range(min(max_images, len(dataset))):
        image, target = dataset[i]
        if len(target["boxes"]):
            guesses += (teacher.encode_regions(image, target["boxes"]).float() @ text.T).argmax(1).tolist()
            truth += target["labels"].tolist()
    return _novel_by_category({"teacher": guesses}, truth, base, names)["teacher"]


def _novel_by_category(predicted: dict[str, list[int]], truth: list[int], base: torch.Tensor,
                       names: list[str]) -> dict:
    """{head: {novel name: {"boxes", "top1", "named_most_often"}}} on ground-truth boxes."""
    labels = torch.tensor(truth)
    out: dict = {}
    for head, guesses in predicted.items():
        if not guesses:
            continue
        guesses_t = torch.tensor(guesses)
        per: dict = {}
        for c in torch.where(~base)[0].tolist():
            mine = guesses_t[labels == c]
            if len(mine):
                per[names[c]] = {"boxes": len(mine), "top1": round(100 * float((mine == c).double().mean()), 1),
                                 "named_most_often": names[int(torch.mode(mine).values)]}
        out[head] = per
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=ROOT / "benchmarks/work/world")
    parser.add_argument("--teacher", type=Path, default=ROOT / "benchmarks/work/teacher")
    parser.add_argument("--seed-dir", type=Path, default=ROOT / "benchmarks/work/shapeworld/seed0")
    parser.add_argument("--rows", nargs="*", default=["text", "image", "vild", "ensemble", "supervised"],
                        help="row folders of --seed-dir, or paths to model folders")
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
    gt_boxes = DetectionDataset(paths["val_images"], paths["val"], category_ids=ids, with_masks=False)
    result["teacher_novel_by_category"] = teacher_novel_by_category(teacher, gt_boxes, text, base, vocab["names"],
                                                                    args.val_images)
    print("teacher", json.dumps(result["teacher_novel_by_category"]), flush=True)
    for row in args.rows:
        # a row is a folder of --seed-dir, or a path (rows of one seed kept in several folders)
        model = load_model(Path(row) if "/" in row else args.seed_dir / row)
        accuracy = ground_truth_box_accuracy(model, gt_boxes, text, base, args.val_images, vocab["names"])
        tmp = args.out.with_suffix(f".{row.replace('/', '_')}.detections.json")
        full = evaluate_detector(model, paths["val_images"], paths["val"], text, ids, base_mask=base,
                                 novel_category_ids=novel_ids, progress=False, max_images=args.val_images,
                                 results_path=tmp)
        dets = json.loads(tmp.read_text())
        tmp.unlink()
        base_only = evaluate_detector(model, paths["val_images"], paths["val"], text[base], base_ids,
                                      base_mask=torch.ones(int(base.sum()), dtype=torch.bool),
                                      novel_category_ids=novel_ids, progress=False, max_images=args.val_images)
        entry = {
            "ground_truth_box_top1": accuracy,
            "full_vocabulary": {k: full["lvis"]["segm"][k] for k in ("AP", "APr", "APc", "APf")},
            "base_vocabulary_only": {k: base_only["lvis"]["segm"][k] for k in ("APc", "APf")},
        }
        if isinstance(dets, list):
            kept = [d for d in dets if d["score"] > 0.05]
            entry["share_of_detections_labelled_novel"] = round(
                sum(d["category_id"] in set(novel_ids) for d in kept) / max(1, len(kept)), 3)
        result["rows"][row] = entry
        print(row, json.dumps(entry), flush=True)
    trunk = args.seed_dir.parent / "trunk"
    if (trunk / "model.safetensors").is_file():
        # The shared trunk classifies with fixed random prototypes (no teacher); on the base
        # names alone its AP says whether the detector under every row is trained.
        _, prototypes = load_vocabulary(trunk)
        closed = evaluate_detector(load_model(trunk), paths["val_images"], paths["val"], prototypes[base],
                                   base_ids, base_mask=torch.ones(int(base.sum()), dtype=torch.bool),
                                   novel_category_ids=novel_ids, progress=False, max_images=args.val_images)
        result["trunk_base_vocabulary"] = {
            "mask": {k: closed["lvis"]["segm"][k] for k in ("AP", "APc", "APf")},
            "box": {k: closed["lvis"]["bbox"][k] for k in ("AP", "APc", "APf")},
        }
        print("trunk", json.dumps(result["trunk_base_vocabulary"]), flush=True)
    result["seconds"] = round(time.perf_counter() - started, 1)
    save_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
