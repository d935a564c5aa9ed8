"""Queries by example image on ShapeWorld-OV: novel categories found from one example crop
instead of (or beside) their name.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exemplars.py --threads 1    # ~10-15 min, 1 core

The bundled model (shapeworld-vild-ensemble) and its teacher (shapeworld-clip), the default
world (benchmarks/work/world, seed 0). For every draw (seed) and every novel category, `--shots`
ground-truth boxes of that category are drawn from the val images *after* the first
`--val-images` (so no exemplar image is evaluated); each box is an `Exemplar`. Evaluated on the
first `--val-images` val images with `vild.evaluation.run.evaluate_detector` (the table's
evaluation, through the prediction path of `vild detect`), with the vocabulary that
`Detector.encode_vocabulary(..., exemplars=...)` builds:

    text       every category by its name (the table's setting; no draw)
    exemplar   base categories by name, novel categories by their exemplars alone
    both       every category by name, novel names averaged with their exemplars

`--teacher-probe` runs no detector: it asks the teacher alone to name the ground-truth boxes of
the evaluated images (their 1x + 1.5x crop embeddings, nearest row) with each vocabulary, to
separate what the exemplars carry from what the detector makes of them.

Rows made of exemplars alone are weighted like base names in ViLD-ensemble (the library's rule,
`vild.inference.exemplars`); `--exemplar-weighting novel` measures the other rule.

`--self-label` runs on the model's bundled example images instead: the objects found by name at
0.3, each replaced in the vocabulary by an exemplar cut from its own box: is the exemplar the
best label at that box, under each weighting rule?

`--methods` scores every row with other methods (default: the model's own, vild-ensemble);
`--methods vild-image,vild-text` scores with each head alone (the distillation head, the text
head), to show how exemplar rows relate to the ensemble. Writes `--out` (.json and .md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.data.detection import load_annotation_file  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.inference import Detector, Exemplar  # noqa: E402
from vild.io import atomic_write_text, save_json  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, vocabulary_entries, world_paths  # noqa: E402

METRICS = ("APr", "APc", "APf", "AP", "box_APr", "box_AP")


def draw_exemplars(annotations: dict, images_dir: Path, category_ids, names, *, skip: int, shots: int,
                   seed: int) -> tuple[list[Exemplar], list[dict]]:
    """`shots` ground-truth boxes per category from the val images after the first `skip`
    (sorted by id, the order evaluate_detector's max_images takes) -> exemplars + a record."""
    images = sorted(annotations["images"], key=lambda im: im["id"])
    pool = {im["id"]: im for im in images[skip:]}
    by_category: dict[int, list[dict]] = {}
    for a in sorted(annotations["annotations"], key=lambda a: a["id"]):
        if a["image_id"] in pool and not a.get("iscrowd", 0):
            by_category.setdefault(a["category_id"], []).append(a)
    rng = random.Random(seed)
    exemplars, record = [], []
    for cid, name in zip(category_ids, names):
        candidates = by_category.get(cid, [])
        if len(candidates) < shots:
            raise SystemExit(f"category {name} has {len(candidates)} boxes in the exemplar pool, need {shots}")
        for a in rng.sample(candidates, shots):
            x, y, w, h = a["bbox"]
            path = images_dir / pool[a["image_id"]]["file_name"]
            exemplars.append(Exemplar(name, str(path), (x, y, x + w, y + h)))
            record.append({"category": name, "image_id": a["image_id"], "annotation_id": a["id"],
                           "box": [round(v, 2) for v in (x, y, x + w, y + h)]})
    return exemplars, record


def evaluate(det: Detector, vocabulary, exemplars, ids_by_name: dict, novel_ids, paths, args, method=None) -> dict:
    vocab = det.encode_vocabulary(vocabulary, exemplars=exemplars)
    if args.exemplar_weighting == "novel" and exemplars:
        # the other rule: rows made of exemplars alone weighted like novel names (lambda on the
        # distillation head) instead of like base names, as the library does
        text_names = {n if isinstance(n, str) else n[0] for n in vocabulary}
        alone = torch.tensor([n not in text_names for n in vocab.names], device=vocab.base.device)
        vocab = dataclasses.replace(vocab, base=vocab.base & ~alone)
    ids = [ids_by_name[n] for n in vocab.names]
    started = time.perf_counter()
    out = evaluate_detector(
        det.model, paths["val_images"], paths["val"], vocab.embeddings, ids, base_mask=vocab.base,
        novel_category_ids=novel_ids, method=method, teacher=det.teacher, max_images=args.val_images,
        progress=False)
    segm, box = out["lvis"]["segm"], out["lvis"]["bbox"]
    return {"APr": segm["APr"], "APc": segm["APc"], "APf": segm["APf"], "AP": segm["AP"],
            "box_APr": box["APr"], "box_AP": box["AP"], "method": method or det.method,
            "rows": list(vocab.names), "base": vocab.base.tolist(),
            "seconds": round(time.perf_counter() - started, 1)}


@torch.no_grad()
def teacher_probe(det: Detector, annotations: dict, images_dir: Path, vocabularies: dict, ids_by_name: dict,
                  novel_ids, count: int) -> dict:
    """Top-1 accuracy of the teacher's own crop embeddings of the ground-truth boxes of the
    first `count` val images against each vocabulary's rows (novel and base boxes apart), and
    the mean cosine of novel boxes to their category's row."""
    from vild.data.images import load_image

    images = sorted(annotations["images"], key=lambda im: im["id"])[:count]
    by_image: dict[int, list[dict]] = {}
    for a in annotations["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    crops, truth = [], []
    for im in images:
        anns = by_image.get(im["id"], [])
        if anns:
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                   a["bbox"][1] + a["bbox"][3]] for a in anns])
            crops.append(det.teacher.encode_regions(load_image(images_dir / im["file_name"]), boxes).cpu())
            truth += [a["category_id"] for a in anns]
    crops, truth = torch.cat(crops), torch.tensor(truth)
    novel = torch.tensor([int(t) in set(novel_ids) for t in truth])
    out = {"boxes": int(len(truth)), "novel_boxes": int(novel.sum())}
    for label, vocab in vocabularies.items():
        ids = torch.tensor([ids_by_name[n] for n in vocab.names])
        sims = crops @ vocab.embeddings.cpu().float().T
        right = ids[sims.argmax(1)] == truth
        own = sims[torch.arange(len(truth)), [ids.tolist().index(int(t)) for t in truth]]
        out[label] = {"top1_novel": float(right[novel].float().mean()) * 100,
                      "top1_base": float(right[~novel].float().mean()) * 100,
                      "cosine_novel_to_own_row": float(own[novel].mean())}
    return out


@torch.no_grad()
def self_label(det: Detector, top: int = 6) -> dict:
    """On each bundled example: the `top` objects found by name at 0.3; each one's name
    replaced by an exemplar of its own box ("query"): how often "query" is the best label at
    that box (IoU > 0.7), with exemplar-only rows weighted as base (the library) and as novel."""
    from torchvision.ops import box_iou

    from vild.data.images import load_image

    out = {"base": {"hits": 0, "objects": 0}, "novel": {"hits": 0, "objects": 0}, "images": []}
    for example in det.examples:
        image = load_image(example)
        found = det.detect(image, threshold=0.3)[0]
        row = {"image": Path(example).name}
        for rule in ("base", "novel"):
            hits = 0
            for i in range(min(top, len(found))):
                box, name = found.boxes[i], found.label_names[i]
                vocab = det.encode_vocabulary([n for n in det.default_vocabulary if n != name],
                                              exemplars={"query": (image, box.tolist())})
                if rule == "novel":
                    vocab = dataclasses.replace(vocab, base=vocab.base & torch.tensor([n != "query" for n in vocab.names]))
                d = det.detect(image, vocab, threshold=0.0, max_detections=300)[0]
                at = (box_iou(d.boxes, box[None])[:, 0] > 0.7).nonzero()[:, 0]
                hits += bool(len(at)) and d.label_names[int(at[d.scores[at].argmax()])] == "query"
            row[rule] = f"{hits}/{min(top, len(found))}"
            out[rule]["hits"] += hits
            out[rule]["objects"] += min(top, len(found))
        out["images"].append(row)
    return out


def summary(runs: list[dict]) -> dict:
    out = {}
    for k in METRICS:
        values = [r[k] for r in runs if not math.isnan(r[k])]
        if not values:
            out[k] = {"mean": float("nan"), "std": 0.0, "min": float("nan"), "max": float("nan")}
            continue
        out[k] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
                  "min": min(values), "max": max(values)}
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# Queries by example image on ShapeWorld-OV ({meta['draws']} draws of {meta['shots']} exemplar(s) "
        "per novel category; mean ± std [min, max])",
        "",
        f"Measured {meta['date']} on {meta['machine']}, torch {meta['torch']}; wall time "
        f"{meta['wall_minutes']:.1f} min at {meta['threads']} thread(s), the machine's load average "
        f"{meta['loadavg_start'][0]:.1f} at the start and {meta.get('loadavg_end', [math.nan])[0]:.1f} at the end "
        f"(other jobs shared its cores); command: `{meta['command']}`.",
        "",
        f"Model `{meta['model']}` (method {meta['method']}), teacher `{meta['teacher']}`, world "
        f"`{meta['world']}`; mask AP (LVIS evaluator, novel = rare) and box AP on the first "
        f"{meta['val_images']} val images (by id). Exemplars: ground-truth boxes drawn from the other "
        f"{meta['val_count'] - meta['val_images']} val images, never from an evaluated one.",
        "",
        "| novel categories by | method | APr | APc | APf | AP | box_APr | box_AP |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(s):
        if math.isnan(s["mean"]):
            return "-"
        if s["std"] == 0.0 and s["min"] == s["max"]:
            return f"{s['mean']:.1f}"
        return f"{s['mean']:.1f} ± {s['std']:.1f} [{s['min']:.1f}, {s['max']:.1f}]"

    for row in result["rows"]:
        lines.append(f"| {row['label']} | {row['method']} | " + " | ".join(cell(row["summary"][k]) for k in METRICS) + " |")
    lines += ["", "Exemplar boxes per draw are in the JSON (`draws`)."]
    return "\n".join(lines) + "\n"


def _shown(path) -> str:
    """A path relative to the repository when it is inside it (results name no home folders)."""
    try:
        return Path(os.path.abspath(path)).relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def rewrite_markdown(json_path: Path) -> None:
    """The .md of a results JSON again (after a change to the table's layout; no evaluation)."""
    from vild.io import load_json

    atomic_write_text(json_path.with_suffix(".md"), markdown(load_json(json_path)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", type=Path, default=ROOT / "benchmarks" / "work" / "world")
    p.add_argument("--model", default=None, help="model name or folder (default: the bundled one)")
    p.add_argument("--val-images", type=int, default=250)
    p.add_argument("--draws", type=int, default=3, help="draws of the exemplars (seeds 0..N-1)")
    p.add_argument("--shots", type=int, default=1, help="exemplars per novel category")
    p.add_argument("--methods", default=None, help="comma-separated scoring methods (default: the model's own)")
    p.add_argument("--conditions", default="text,exemplar,both", help="which of text, exemplar, both to run")
    p.add_argument("--exemplar-weighting", choices=("base", "novel"), default="base",
                   help="ViLD-ensemble weighting of rows made of exemplars alone: base (the library's "
                        "rule: lambda on the text head) or novel (the other rule: lambda on the "
                        "distillation head)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "exemplars.json")
    p.add_argument("--markdown-only", action="store_true", help="rewrite --out's .md from its .json and exit")
    p.add_argument("--self-label", action="store_true",
                   help="no evaluation: does an exemplar label its own object in the bundled examples?")
    p.add_argument("--teacher-probe", action="store_true",
                   help="no detector: the teacher names the evaluated ground-truth boxes with each vocabulary")
    args = p.parse_args()
    if args.markdown_only:
        rewrite_markdown(args.out)
        return 0
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    paths = world_paths(args.world)
    annotations = load_annotation_file(paths["val"])
    vocab = dataset_vocabulary(paths["val"])
    entries = vocabulary_entries(vocab)
    det = Detector.from_pretrained(args.model)
    ids_by_name = dict(zip(vocab["names"], vocab["category_ids"]))
    novel = [n for n, b in zip(vocab["names"], vocab["base"]) if not b]
    novel_ids = [ids_by_name[n] for n in novel]
    base_entries = [e for e, b in zip(entries, vocab["base"]) if b]
    text_vocab = det.encode_vocabulary(entries)
    if text_vocab.base.tolist() != list(vocab["base"]):
        raise SystemExit("the model's base categories are not the world's: wrong model for this world?")

    result = {"meta": {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}", "torch": torch.__version__,
        "threads": args.threads, "loadavg_start": os.getloadavg(), "model": det.name, "method": det.method,
        "teacher": _shown(det.teacher_spec), "world": _shown(args.world), "val_images": args.val_images,
        "val_count": len(annotations["images"]), "draws": args.draws, "shots": args.shots, "novel": novel,
        "exemplar_weighting": args.exemplar_weighting,
    }, "draws": [], "runs": [], "rows": []}
    out_md = args.out.with_suffix(".md")
    if args.self_label:
        result["self_label"] = self_label(det)
        print(result["self_label"], flush=True)
        save_json(args.out, result)
        return 0
    if args.teacher_probe:
        for seed in range(args.draws):
            exemplars, record = draw_exemplars(annotations, paths["val_images"], novel_ids, novel,
                                               skip=args.val_images, shots=args.shots, seed=seed)
            vocabularies = {"text": text_vocab, "exemplar": det.encode_vocabulary(base_entries, exemplars=exemplars),
                            "both": det.encode_vocabulary(entries, exemplars=exemplars)}
            probe = teacher_probe(det, annotations, paths["val_images"], vocabularies, ids_by_name, novel_ids,
                                  args.val_images)
            result["draws"].append({"seed": seed, "exemplars": record, "probe": probe})
            print(seed, probe, flush=True)
        result["meta"]["wall_minutes"] = (time.perf_counter() - started) / 60
        save_json(args.out, result)
        return 0

    def run(label, vocabulary, exemplars, draw, method=None):
        entry = {"label": label, "draw": draw,
                 **evaluate(det, vocabulary, exemplars, ids_by_name, novel_ids, paths, args, method)}
        result["runs"].append(entry)
        print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in entry.items() if k not in ("rows", "base")},
              flush=True)
        save_json(args.out, result)

    methods = args.methods.split(",") if args.methods else [det.method]
    conditions = set(args.conditions.split(","))
    if not conditions <= {"text", "exemplar", "both"}:
        raise SystemExit(f"--conditions: choose from text, exemplar, both; got {args.conditions}")
    for method in methods if "text" in conditions else []:
        run("text", entries, None, None, method)
    for seed in range(args.draws):
        exemplars, record = draw_exemplars(annotations, paths["val_images"], novel_ids, novel,
                                           skip=args.val_images, shots=args.shots, seed=seed)
        result["draws"].append({"seed": seed, "exemplars": record})
        for method in methods:
            if "exemplar" in conditions:
                run("exemplar", base_entries, exemplars, seed, method)
            if "both" in conditions:
                run("both", entries, exemplars, seed, method)

    groups: dict[tuple, list[dict]] = {}
    for r in result["runs"]:
        groups.setdefault((r["label"], r["method"]), []).append(r)
    weighting = "" if args.exemplar_weighting == "base" else ", weighted as novel"
    labels = {"text": "name (text)", "exemplar": f"{args.shots} exemplar(s) alone{weighting}",
              "both": f"name + {args.shots} exemplar(s), averaged"}
    result["rows"] = [{"label": labels[label], "method": method, "n": len(runs), "summary": summary(runs)}
                      for (label, method), runs in groups.items()]
    result["meta"]["wall_minutes"] = (time.perf_counter() - started) / 60
    result["meta"]["loadavg_end"] = os.getloadavg()
    save_json(args.out, result)
    atomic_write_text(out_md, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
