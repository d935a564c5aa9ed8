"""Fine-tuning on your own data without losing the open vocabulary (`vild train --init`), on
ShapeWorld-OV.

    .venv/bin/python benchmarks/finetune.py --threads 1 --train-images 1000   # the measured run
    .venv/bin/python benchmarks/finetune.py --quick      # plumbing only: a few steps and images
    .venv/bin/python benchmarks/finetune.py --threads 1 --train-images 1000 --set freeze= \
        --work benchmarks/work/finetune-unfrozen --name finetune_unfrozen   # nothing frozen

The start is the bundled ViLD-ensemble (`src/vild/assets/models/shapeworld-vild-ensemble`,
trained on the default world's base categories). The "user's own data" is the train split of
the alt world (`make_world(categories="alt")`: 16 other categories, other names; generated as
benchmarks/transfer.py does when missing), every alt category labelled
(`train/annotations_all.json`; --train-images N keeps the first N images: 1000 in the measured
run, which bounds the region store's cost). Two fine-tunes with the same schedule (--preset,
default shapeworld-finetune: backbone and RPN frozen), learning rate and seed,
both run through the CLI (`vild.cli.main`, the exact argv is recorded):

  with distillation      the init model's own mode (ViLD-ensemble); no --region-store, so the
                         init model's RPN proposes and the teacher embeds the regions (OUT/regions)
  without distillation   the same command plus --mode text (the distillation head is dropped)

Every model is evaluated with `vild.evaluation.run.evaluate_detector` (the prediction path of
`vild detect`) on the first --val-images val images of both worlds:
  default world: its 24 categories with the init model's saved text embeddings; ViLD-ensemble
      weights the categories the init model was trained on as base, before and after (the
      fine-tune did not unlearn that it saw them; only the weights differ between the rows).
  alt world: the `vild eval` vocabulary (`split_vocabulary`): before, the teacher's embeddings
      of the alt names (zero-shot transfer, every category novel); after, the fine-tuned
      model's saved vocabulary (the same embeddings, every category trained).
The init model is also scored with its text head alone (method vild-text): the part of the
no-distillation row's loss that comes from dropping the distillation head rather than from
the new training.

Writes benchmarks/results/NAME{,_quick}.{json,md} (--name, default finetune); also the
head-by-head novel APr of the init and distilled models (methods vild-text, vild-image).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from transfer import ensure_alt_world  # noqa: E402
from vild.evaluation.cli import split_vocabulary  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import load_json, save_json  # noqa: E402
from vild.training.checkpoint import load_model, load_vocabulary  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, world_paths  # noqa: E402

BUNDLED = ROOT / "src/vild/assets/models/shapeworld-vild-ensemble"
TEACHER = ROOT / "src/vild/assets/teachers/shapeworld-clip"
ROWS = {
    "before": "init model (bundled ViLD-ensemble), before fine-tuning",
    "before_text": "init model, text head alone (vild-text), before",
    "distill": "fine-tuned WITH distillation (ViLD-ensemble)",
    "text": "fine-tuned WITHOUT distillation (--mode text)",
}


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(mark: tuple[float, float]) -> dict:
    return {"wall_s": round(time.perf_counter() - mark[0], 1), "cpu_s": round(time.process_time() - mark[1], 1)}


def _rel(path: Path) -> str:
    """A path as typed from the working directory when it lies below it (shorter commands)."""
    path = Path(os.path.abspath(path))  # keeps symlinks as typed
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def first_images(annotations: Path, n: int | None, out: Path) -> Path:
    """The annotation file cut to its first n images (all of it when n is None)."""
    if not n:
        return annotations
    data = load_json(annotations)
    images = data["images"][:n]
    keep = {im["id"] for im in images}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_json(out, dict(data, images=images, annotations=[a for a in data["annotations"] if a["image_id"] in keep]))
    return out


def metrics(result: dict) -> dict:
    segm, bbox = result["lvis"]["segm"], result["lvis"]["bbox"]
    return {"AP": segm["AP"], "APr": segm["APr"], "APc": segm["APc"], "APf": segm["APf"],
            "box_AP": bbox["AP"], "box_APr": bbox["APr"], "ms_per_image": result["timing"]["ms_per_image"]}


def evaluate(model_dir: Path, world: Path, teacher, args, *, text=None, base_mask=None, method=None) -> dict:
    """One model on one world's val split (see the module docstring for the vocabulary)."""
    paths = world_paths(world)
    vocab, swapped, swapped_mask, novel_ids = split_vocabulary(model_dir, paths["val"], teacher)
    result = evaluate_detector(
        load_model(model_dir), paths["val_images"], paths["val"],
        swapped if text is None else text, vocab["category_ids"],
        base_mask=swapped_mask if base_mask is None else base_mask, novel_category_ids=novel_ids,
        method=method, max_images=args.val_images, progress=args.progress,
    )
    return metrics(result)


def finetune(out: Path, args, annotations: Path, extra: list[str]) -> tuple[list[str], dict]:
    """`vild train --init` in this process -> (argv, wall/cpu seconds)."""
    from vild.cli import main

    argv = ["train", "--images", _rel(world_paths(args.alt_world)["train_images"]),
            "--annotations", _rel(annotations), "--teacher", _rel(args.teacher), "--init", _rel(args.model),
            "--out", _rel(out), "--preset", args.preset, "--seed", str(args.seed),
            "--threads", str(args.threads), "--num-proposals", str(args.num_proposals), *extra]
    if args.steps:
        argv += ["--steps", str(args.steps)]
    if args.lr:
        argv += ["--set", f"lr={args.lr}"]
    for pair in args.set:
        argv += ["--set", pair]
    if not args.progress:
        argv.append("--no-progress")
    if (out / "model.safetensors").is_file():
        log(f"reusing {out} (delete it, or --fresh, to retrain)")
        return argv, {}
    log("vild " + " ".join(argv))
    mark = _clock()
    if main(argv + ["--resume"]) != 0:
        raise SystemExit(f"vild train failed for {out}")
    return argv, _since(mark)


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["rows"]

    def cell(v):
        return "-" if v is None or v != v else f"{v:.1f}"

    before = rows["before"]["default"]["APr"]
    lines = [
        "# Fine-tuning on new data without losing the open vocabulary (ShapeWorld-OV)",
        "",
        f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} thread(s); wall time "
        f"{meta['wall_minutes']:.1f} min (CPU {meta['cpu_minutes']:.1f} min; load average "
        f"{meta['load_average_start'][0]:.1f} at the start, {meta['load_average_end'][0]:.1f} at the end)."
        + (" **--quick: plumbing only, the numbers mean nothing.**" if meta["quick"] else ""),
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Init model `{meta['model']}`, teacher `{meta['teacher']}`. Fine-tuned on the first "
        f"{meta['train_images']} images of `{meta['alt_world']}/train` ({meta['alt_categories']} alt "
        f"categories, every one labelled), {meta['schedule']}. Evaluated on the first "
        f"{meta['val_images']} val images of each world (mask AP, LVIS evaluator; default-world "
        "APr = its novel categories, alt APr = the alt world's rare ones).",
        "",
        "| row | default APr | default AP | novel APr kept | alt AP | alt APr | alt box AP |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in ROWS.items():
        if key not in rows:
            continue
        d, a = rows[key]["default"], rows[key]["alt"]
        kept = f"{100 * d['APr'] / before:.0f}%" if before else "-"
        lines.append(f"| {label} | {cell(d['APr'])} | {cell(d['AP'])} | {kept} | {cell(a['AP'])} | "
                     f"{cell(a['APr'])} | {cell(a['box_AP'])} |")
    lines += ["", "Fine-tune commands (run in-process through `vild.cli.main`):", ""]
    for key in ("distill", "text"):
        if key in result["commands"]:
            lines.append(f"- {ROWS[key]}: `vild {' '.join(result['commands'][key])}`")
    lines += ["", "Seconds (wall / CPU of this process): " + ", ".join(
        f"{k} {v['wall_s']:.0f}/{v['cpu_s']:.0f}" for k, v in meta["stage_seconds"].items() if v)]
    lines += ["", *notes(rows)]
    heads = result.get("heads_default_APr")
    if heads:
        lines += ["", "Default-world novel APr of each ViLD-ensemble head alone (methods vild-text / "
                  "vild-image, same inputs): " + "; ".join(
                      f"{ROWS[k].split(' (')[0]}: text {v['vild-text']:.1f}, image {v['vild-image']:.1f}"
                      for k, v in heads.items()) + "."]
    return "\n".join(lines) + "\n"


def notes(rows: dict) -> list[str]:
    """The target, and where the no-distillation row's loss comes from, in words."""
    if not all(k in rows for k in ROWS):
        return []
    b, t, d, n = (rows[k] for k in ("before", "before_text", "distill", "text"))
    kept = d["default"]["APr"] / b["default"]["APr"] if b["default"]["APr"] else float("nan")
    met = kept >= 0.8 and d["alt"]["AP"] > b["alt"]["AP"]
    return [
        f"Target (with distillation: >= 80% of the init model's default-world novel APr kept while "
        f"the alt AP rises): {'met' if met else 'MISSED'}: {100 * kept:.0f}% kept "
        f"({b['default']['APr']:.1f} -> {d['default']['APr']:.1f}), alt AP {b['alt']['AP']:.1f} -> "
        f"{d['alt']['AP']:.1f}.",
        "",
        f"Without distillation the default-world novel APr goes {b['default']['APr']:.1f} -> "
        f"{n['default']['APr']:.1f}. The init model's text head alone scored {t['default']['APr']:.1f} "
        f"before: {b['default']['APr'] - t['default']['APr']:.1f} points are the distillation head left "
        f"out (ViLD-text has none); the fine-tune itself took the text head from "
        f"{t['default']['APr']:.2f} to {n['default']['APr']:.2f}.",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=BUNDLED, help="init model folder")
    parser.add_argument("--teacher", type=Path, default=TEACHER)
    parser.add_argument("--world", type=Path, help="the init model's world (default: benchmarks/work/world)")
    parser.add_argument("--alt-world", type=Path, help="default: benchmarks/work/world-alt[-quick]; generated if missing")
    parser.add_argument("--work", type=Path, help="fine-tuned models (default: benchmarks/work/finetune[-quick])")
    parser.add_argument("--preset", default="shapeworld-finetune", help="the schedule (vild train --preset)")
    parser.add_argument("--steps", type=int, help="default: the preset's (--quick: 4)")
    parser.add_argument("--lr", type=float, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to both fine-tunes (vild train --set), e.g. freeze= to train everything")
    parser.add_argument("--name", default="finetune", help="results file stem (benchmarks/results/NAME.{json,md})")
    parser.add_argument("--train-images", type=int, help="fine-tune on the first N alt train images (default: all)")
    parser.add_argument("--num-proposals", type=int, default=100,
                        help="proposals per image distilled (the bundled model was trained with 100)")
    parser.add_argument("--val-images", type=int, default=250, help="evaluate on the first N val images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny alt world, 4 steps, 8 val images")
    parser.add_argument("--fresh", action="store_true", help="retrain the fine-tuned models")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--report-only", action="store_true", help="rewrite NAME.md from NAME.json")
    args = parser.parse_args()
    if args.report_only:
        stem = args.results / (f"{args.name}_quick" if args.quick else args.name)
        (stem.with_suffix(".md")).write_text(markdown(load_json(stem.with_suffix(".json"))))
        return 0
    torch.set_num_threads(args.threads)
    started, load_start = _clock(), os.getloadavg()
    suffix = "-quick" if args.quick else ""
    args.world = args.world or ROOT / "benchmarks/work/world"
    args.alt_world = args.alt_world or ROOT / f"benchmarks/work/world-alt{suffix}"
    args.work = args.work or ROOT / f"benchmarks/work/finetune{suffix}"
    if args.quick:
        args.steps, args.val_images = args.steps or 4, min(args.val_images, 8)
        args.train_images, args.num_proposals = args.train_images or 16, min(args.num_proposals, 20)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    if not (args.world / "world.json").is_file():
        raise SystemExit(f"--world {args.world} is not a ShapeWorld-OV world (vild make-world)")
    stages: dict[str, dict] = {}
    mark = _clock()
    ensure_alt_world(args.alt_world, args.world, args.quick, args.progress, workers=args.threads)
    stages["alt_world"] = _since(mark)

    from vild.teacher import Teacher

    teacher = Teacher.load(str(args.teacher))
    alt = world_paths(args.alt_world)
    annotations = first_images(alt["train_all"], args.train_images,
                               args.work / f"alt_train_first{args.train_images}.json")
    train_count = len(load_json(annotations)["images"])
    # the default world, scored the same way before and after: the init model's saved text
    # embeddings and its trained (base) categories
    default_vocab = dataset_vocabulary(world_paths(args.world)["val"])
    saved, saved_text = load_vocabulary(args.model)
    if saved["names"] != default_vocab["names"]:
        raise SystemExit(f"{args.model}'s vocabulary is not {args.world}'s")
    default_inputs = dict(text=saved_text, base_mask=torch.tensor(saved["base"], dtype=torch.bool))

    rows: dict[str, dict] = {}
    for key, method in (("before", None), ("before_text", "vild-text")):
        log(f"evaluating: {ROWS[key]}")
        mark = _clock()
        rows[key] = {"default": evaluate(args.model, args.world, teacher, args, method=method, **default_inputs),
                     "alt": evaluate(args.model, args.alt_world, teacher, args, method=method)}
        stages[f"eval_{key}"] = _since(mark)

    commands = {}
    for key, extra in (("distill", []), ("text", ["--mode", "text"])):
        out = args.work / key
        commands[key], stages[f"finetune_{key}"] = finetune(out, args, annotations, extra)
        log(f"evaluating: {ROWS[key]}")
        mark = _clock()
        rows[key] = {"default": evaluate(out, args.world, teacher, args, **default_inputs),
                     "alt": evaluate(out, args.alt_world, teacher, args),
                     "train_config": load_json(out / "train_config.json"),
                     "mode": load_model(out).config.mode}
        stages[f"eval_{key}"] = _since(mark)
    # where the ensemble's novel APr lives: each head alone, before and after (default world)
    mark, heads = _clock(), {}
    for key, model_dir in (("before", args.model), ("distill", args.work / "distill")):
        heads[key] = {m: rows["before_text"]["default"]["APr"] if (key, m) == ("before", "vild-text")
                      else evaluate(model_dir, args.world, teacher, args, method=m, **default_inputs)["APr"]
                      for m in ("vild-text", "vild-image")}
    stages["eval_heads"] = _since(mark)
    train_cfg = rows["distill"]["train_config"]
    store = args.work / "distill" / "regions" / "manifest.json"
    kept = {k: rows[k]["default"]["APr"] / rows["before"]["default"]["APr"]
            for k in ("distill", "text") if rows["before"]["default"]["APr"]}
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "threads": args.threads,
        "quick": args.quick,
        "command": "python benchmarks/finetune.py " + " ".join(sys.argv[1:]),
        "wall_minutes": (time.perf_counter() - started[0]) / 60,
        "cpu_minutes": (time.process_time() - started[1]) / 60,
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "stage_seconds": stages,
        "model": _rel(args.model), "teacher": _rel(args.teacher), "teacher_identity": teacher.identity,
        "world": _rel(args.world), "alt_world": _rel(args.alt_world),
        "alt_categories": len(dataset_vocabulary(alt["val"])["names"]),
        "train_images": train_count,
        "num_proposals": args.num_proposals,
        "region_store_images": load_json(store)["num_images"] if store.is_file() else None,
        "val_images": args.val_images,
        "schedule": (f"{train_cfg['steps']} steps of {train_cfg['batch_size']} images, lr {train_cfg['lr']} "
                     f"(warm-up {train_cfg['warmup_steps']} steps, x{train_cfg['gamma']} at "
                     f"{', '.join(str(f) for f in train_cfg['decay_at'])} of the run), seed {train_cfg['seed']}, "
                     + ("frozen: " + ", ".join(train_cfg["freeze"]) if train_cfg["freeze"] else "nothing frozen")),
        "novel_APr_kept": kept,
    }
    result = {"meta": meta, "rows": rows, "commands": commands, "heads_default_APr": heads}
    stem = f"{args.name}_quick" if args.quick else args.name
    args.results.mkdir(parents=True, exist_ok=True)
    save_json(args.results / f"{stem}.json", result)
    (args.results / f"{stem}.md").write_text(markdown(result))
    log(f"wrote {args.results / stem}.{{json,md}} in {meta['wall_minutes']:.1f} min")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
