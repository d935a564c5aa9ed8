"""The ShapeWorld table's summary over seeds (mean and spread), its markdown rendering and its
results files."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from vild.data.loading import available_cores
from vild.io import config_to_dict, save_json
from vild.training.presets import preset

#: (label in the table, row key), in the paper's order
ROWS = [
    ("CLIP on cropped regions", "clip"),
    ("ViLD-text", "text"),
    ("ViLD-image", "image"),
    ("ViLD", "vild"),  # its distill_weight follows its temperature (`at_teacher_scale`)
    ("ViLD-ensemble (w=0.5)", "ensemble"),
    ("ViLD-text + CLIP", "text+clip"),
    ("Supervised-RFS (base+novel)", "supervised"),
    # the distillation head on the teacher's own tower (`vild distill-tower` on the ViLD-text
    # row; docs/distillation.md section 18): ViLD-image and ViLD-ensemble with that head
    ("ViLD-image, tower head", "tower-image"),
    ("ViLD, tower head", "tower-vild"),
    ("ViLD-ensemble, tower head", "tower-ensemble"),
]
TOWER_ROWS = ("tower-image", "tower-vild", "tower-ensemble")

#: issue 14's targets as (what, row, against, metric, mean at least, every seed above)
TARGETS = [
    ("ViLD APr / ViLD-text APr", "ViLD", "ViLD-text", "APr", 1.5, 1.2),
    ("ViLD-ensemble APr / ViLD-text APr", "ViLD-ensemble (w=0.5)", "ViLD-text", "APr", 1.5, 1.2),
    ("ViLD-ensemble AP / ViLD-text AP", "ViLD-ensemble (w=0.5)", "ViLD-text", "AP", 1.0, None),
    ("ViLD-image APr / CLIP on crops APr", "ViLD-image", "CLIP on cropped regions", "APr", 0.75, None),
    ("ViLD, tower head APr / ViLD-text APr", "ViLD, tower head", "ViLD-text", "APr", 1.5, 1.2),
    ("ViLD-ensemble, tower head APr / ViLD-text APr", "ViLD-ensemble, tower head", "ViLD-text", "APr", 1.5, 1.2),
    ("ViLD-ensemble, tower head AP / ViLD-text AP", "ViLD-ensemble, tower head", "ViLD-text", "AP", 1.0, None),
    ("ViLD-image, tower head APr / CLIP on crops APr", "ViLD-image, tower head", "CLIP on cropped regions",
     "APr", 0.75, None),
]


def row_metrics(result: dict) -> dict:
    """One row's entry in the table, from `evaluate_detector`'s result."""
    segm, bbox = result["lvis"]["segm"], result["lvis"]["bbox"]
    coco = result["coco"]["segm"]
    return {
        "APr": segm["APr"], "APc": segm["APc"], "APf": segm["APf"], "AP": segm["AP"],
        "box_APr": bbox["APr"], "box_AP": bbox["AP"],
        "AP50_novel": coco["AP50_novel"], "AP50_base": coco["AP50_base"],
        "ms_per_image": result["timing"]["ms_per_image"],
    }


def targets(per_seed: list[dict]) -> list[dict]:
    """Each target whose two rows were run: the ratio of the seeds' means, every seed's ratio,
    and whether it is met (the mean ratio at least the bound, and each seed above its floor)."""
    out = []
    for what, row, against, metric, bound, floor in TARGETS:
        if not all(row in s["rows"] and against in s["rows"] for s in per_seed):
            continue
        pairs = [(s["rows"][row][metric], s["rows"][against][metric]) for s in per_seed]
        seeds = [a / b if b > 0 else float("nan") for a, b in pairs]
        mean_b = statistics.fmean(b for _, b in pairs)
        ratio = statistics.fmean(a for a, _ in pairs) / mean_b if mean_b > 0 else float("nan")
        met = ratio >= bound and (floor is None or all(r > floor for r in seeds))
        out.append({"target": what, "bound": bound, "seed_floor": floor, "ratio_of_means": ratio,
                    "per_seed": seeds, "met": bool(met)})
    return out


def aggregate(per_seed: list[dict]) -> dict:
    def stats(values):
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return {"mean": float("nan"), "std": float("nan")}
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}

    rows = {}
    for label, _ in ROWS:
        if label not in per_seed[0]["rows"]:
            continue
        keys = per_seed[0]["rows"][label].keys()
        rows[label] = {k: stats([s["rows"][label][k] for s in per_seed]) for k in keys}
    recall = {
        sup: {k: stats([s["rpn_recall_novel"][sup][k] for s in per_seed])
              for k in per_seed[0]["rpn_recall_novel"][sup]}
        for sup in per_seed[0]["rpn_recall_novel"]
    }
    return {"rows": rows, "rpn_recall_novel": recall, "targets": targets(per_seed)}


def markdown(summary: dict, meta: dict) -> str:
    def cell(s):
        return "-" if math.isnan(s["mean"]) else f"{s['mean']:.1f} ± {s['std']:.1f}"

    cols = ["APr", "APc", "APf", "AP", "box_APr", "box_AP", "ms_per_image"]
    lines = [
        f"# ShapeWorld-OV: the ViLD table ({meta['seeds']} seed(s), mean ± std)",
        "",
        f"Measured {meta['date']} on {meta['machine']}; wall time {meta['wall_minutes']:.1f} min; "
        f"command: `{meta['command']}`.",
        "",
        "Mask AP (LVIS evaluator, novel = rare) and box AP; inference ms per image on this machine.",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for label, row in summary["rows"].items():
        lines.append(f"| {label} | " + " | ".join(cell(row[c]) for c in cols) + " |")
    if summary.get("targets"):
        lines += ["", "Issue 14's targets (ratio of the seeds' mean values; each seed's ratio):", "",
                  "| target | at least | ratio | per seed | met |", "|---|---|---|---|---|"]
        for t in summary["targets"]:
            bound = f"{t['bound']:g}x" + (f", every seed > {t['seed_floor']:g}x" if t["seed_floor"] else "")
            seeds = " / ".join(f"{r:.2f}x" for r in t["per_seed"])
            lines.append(f"| {t['target']} | {bound} | {t['ratio_of_means']:.2f}x | {seeds} | "
                         f"{'yes' if t['met'] else '**no**'} |")
    lines += ["", "RPN average recall on novel categories:", "",
              "| RPN trained on | AR_r@100 | AR_r@300 | AR_r@1000 |", "|---|---|---|---|"]
    for sup, rec in summary["rpn_recall_novel"].items():
        lines.append(f"| {sup} | " + " | ".join(cell(rec[k]) for k in ("AR@100", "AR@300", "AR@1000")) + " |")
    return "\n".join(lines) + "\n"


def write_results(folder: Path, stem: str, per_seed: list[dict], meta: dict, log) -> None:
    """FOLDER/STEM.json (meta, summary over the seeds, every seed's rows) and STEM.md (the table)."""
    summary = aggregate(per_seed)
    folder.mkdir(parents=True, exist_ok=True)
    save_json(folder / f"{stem}.json", {"meta": meta, "summary": summary, "per_seed": per_seed})
    (folder / f"{stem}.md").write_text(markdown(summary, meta))
    log(f"wrote {folder / stem}.{{json,md}} ({len(per_seed)} seed(s), {meta['wall_minutes']:.1f} min)")


def run_meta(args, stages: dict, started: float, shared_timings: dict) -> dict:
    model_cfg, train_cfg = preset("shapeworld-quick" if args.quick else "shapeworld", model=args.model_overrides)
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "threads": args.threads,
        "device": (f"{args.device}: {torch.cuda.get_device_name(args.device)}" if args.device.type == "cuda"
                   else f"cpu: {platform.processor() or platform.machine()}, {available_cores()} cores"),
        "eval_device": str(args.device),
        "jobs": args.jobs,
        "workers": args.workers,
        "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "seeds": args.seeds,
        "quick": args.quick,
        "command": "python benchmarks/shapeworld.py " + " ".join(sys.argv[1:]),
        "wall_minutes": (time.perf_counter() - started) / 60,
        "load_average": os.getloadavg(),
        "model_config": config_to_dict(model_cfg),
        "train_config": config_to_dict(train_cfg),
        "num_proposals_distilled": args.num_proposals,
        "val_images": args.val_images,
        "crop_regions": args.crop_regions or model_cfg.rpn_post_nms_top_n_test,
        "protocol": args.protocol,
        "freeze": args.freeze if args.protocol == "trunk" else [],
        "init_modules": (args.init_modules or "all matching") if args.protocol == "trunk" else [],
        "trunk_steps": args.trunk_steps,
        "row_steps": args.row_steps,
        "distill_rarity": {"vild": args.rarity, "ensemble": args.rarity, "image": args.image_rarity},
        "rfs_threshold": args.rfs_threshold,
        "row_set": args.row_set,
        "model_set": args.model_set,
        "shared_timings_s": shared_timings,
        "world": json.loads((args.world / "world.json").read_text())["sizes"],
    }
