"""Teacher quality benchmark: zero-shot top-1 of the ShapeWorld-OV teacher with ViLD's 63 prompts.

    .venv/bin/python benchmarks/teacher.py --world /tmp/world [--teacher DIR] [--threads 2]

Trains the teacher into --teacher (default benchmarks/work/teacher) if that folder does not
exist yet, then measures, with the 63-prompt classifier from `vild.text.build_text_classifier`
(category name + synonyms):
  * held-out web crops (WORLD/web/val.npz): top-1 overall / base / novel;
  * ground-truth boxes of the detection val split (WORLD/val): top-1 of the ViLD region
    embedding (1x + 1.5x crops, what the detector distils), and of 1x / 1.5x crops alone.
Writes benchmarks/results/teacher.json (training wall time, CPU time, settings, load average).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared cores, no spin-waiting

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.io import save_json  # noqa: E402
from vild.teacher import Teacher, TeacherTrainConfig, load_web_corpus, train_teacher  # noqa: E402
from vild.teacher.corpus import load_categories  # noqa: E402


def accuracy(pred: torch.Tensor, labels: torch.Tensor, novel_mask: torch.Tensor) -> dict:
    correct = (pred == labels).float()
    novel = novel_mask[labels]
    out = {"top1": round(float(correct.mean()), 4), "n": int(labels.numel())}
    if novel.any():
        out["top1_novel"] = round(float(correct[novel].mean()), 4)
        out["n_novel"] = int(novel.sum())
    if (~novel).any():
        out["top1_base"] = round(float(correct[~novel].mean()), 4)
    return out


def per_category(pred, labels, names) -> dict:
    return {names[c]: round(float((pred[labels == c] == c).float().mean()), 3)
            for c in range(len(names)) if (labels == c).any()}


@torch.no_grad()
def web_val(teacher: Teacher, world: Path, classifier: torch.Tensor, cats: list[dict]) -> dict:
    val = load_web_corpus(world, "val")
    id_to_index = {int(c["id"]): i for i, c in enumerate(cats)}
    labels = torch.tensor([id_to_index[int(i)] for i in val.category_ids])
    preds = []
    for s in range(0, len(val), 512):
        emb = teacher.encode_images(val.images[s:s + 512].float() / 255.0)
        preds.append((emb @ classifier.T).argmax(1))
    pred = torch.cat(preds)
    novel = torch.tensor([bool(c["novel"]) for c in cats])
    out = accuracy(pred, labels, novel)
    out["per_category"] = per_category(pred, labels, [c["name"] for c in cats])
    return out


@torch.no_grad()
def gt_regions(teacher: Teacher, world: Path, classifier: torch.Tensor, cats: list[dict]) -> dict | None:
    ann_path = world / "val" / "annotations.json"
    if not ann_path.is_file():
        return None
    from PIL import Image

    data = json.loads(ann_path.read_text())
    id_to_index = {int(c["id"]): i for i, c in enumerate(cats)}
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    novel = torch.tensor([bool(c["novel"]) for c in cats])
    preds = {"1x+1.5x": [], "1x": [], "1.5x": []}
    labels = []
    seconds = 0.0
    n_regions = 0
    for img in data["images"]:
        anns = by_image.get(img["id"], [])
        if not anns:
            continue
        pil = Image.open(world / "val" / "images" / img["file_name"]).convert("RGB")
        image = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255.0
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32)
        start = time.perf_counter()
        ens = teacher.encode_regions(image, boxes)
        seconds += time.perf_counter() - start
        n_regions += len(anns)
        crops = teacher.region_crops(image, boxes)  # [2, N, 3, S, S]
        one = F.normalize(teacher.model.encode_image(crops[0]).float(), dim=-1)
        wide = F.normalize(teacher.model.encode_image(crops[1]).float(), dim=-1)
        for key, emb in (("1x+1.5x", ens), ("1x", one), ("1.5x", wide)):
            preds[key].append((emb @ classifier.T).argmax(1))
        labels.extend(id_to_index[int(a["category_id"])] for a in anns)
    labels_t = torch.tensor(labels)
    out = {}
    for key, p in preds.items():
        out[key] = accuracy(torch.cat(p), labels_t, novel)
    out["1x+1.5x"]["per_category"] = per_category(torch.cat(preds["1x+1.5x"]), labels_t, [c["name"] for c in cats])
    out["regions_per_second"] = round(n_regions / max(seconds, 1e-9), 1)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", required=True, help="a ShapeWorld-OV world (vild make-world)")
    parser.add_argument("--teacher", default=str(ROOT / "benchmarks" / "work" / "teacher"),
                        help="teacher folder; trained here first if missing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = Path(args.world)
    teacher_dir = Path(args.teacher)
    result: dict = {
        "benchmark": "teacher zero-shot top-1 (ViLD 63 prompts, name + synonyms)",
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "world": str(world),
        "teacher": str(teacher_dir),
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "loadavg_start": [round(x, 2) for x in os.getloadavg()],
                    "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
    }
    info_path = teacher_dir / "vild_teacher.json"
    if not teacher_dir.exists():
        overrides = {k: v for k, v in (("epochs", args.epochs), ("steps", args.steps), ("seed", args.seed))
                     if v is not None}
        config = dataclasses.replace(TeacherTrainConfig(threads=args.threads), **overrides)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        load0 = os.getloadavg()
        summary = train_teacher(world, teacher_dir, config)
        result["training"] = {
            "trained_by_this_run": True,
            "wall_seconds": round(time.perf_counter() - wall0, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1),
            "loadavg_before": [round(x, 2) for x in load0],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        }
    else:
        result["training"] = {"trained_by_this_run": False}
    if info_path.is_file():
        info = json.loads(info_path.read_text())
        result["training"]["summary"] = {k: v for k, v in info.items() if k != "arch"}
        result["training"]["arch"] = info.get("arch")

    teacher = Teacher.load(teacher_dir)
    result["identity"] = teacher.identity
    cats = load_categories(world)
    vocabulary = [[c["name"], *c.get("synonyms", [])] for c in cats]
    from vild.text import build_text_classifier

    start = time.perf_counter()
    clf = build_text_classifier(teacher, vocabulary, templates="vild", use_cache=False, progress=False)
    result["classifier_seconds"] = round(time.perf_counter() - start, 2)
    classifier = clf.embeddings.to(teacher.device)
    result["categories"] = {"total": len(cats), "novel": [c["name"] for c in cats if c["novel"]]}
    result["web_val"] = web_val(teacher, world, classifier, cats)
    regions = gt_regions(teacher, world, classifier, cats)
    if regions is not None:
        result["val_gt_regions"] = regions
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = {"web_val_top1": 0.90, "web_val_top1_novel": 0.85, "train_minutes_2_cores": 10}
    out = Path(args.out)
    save_json(out, result)
    w = result["web_val"]
    line = f"web val top-1 {100 * w['top1']:.1f}% (novel {100 * w.get('top1_novel', float('nan')):.1f}%)"
    if regions is not None:
        r = regions["1x+1.5x"]
        line += f"; GT regions 1x+1.5x top-1 {100 * r['top1']:.1f}% (novel {100 * r.get('top1_novel', float('nan')):.1f}%)"
    if result["training"].get("trained_by_this_run"):
        line += f"; trained in {result['training']['wall_seconds']:.0f} s wall"
    print(line)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
