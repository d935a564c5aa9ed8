"""Transfer without fine-tuning (the paper's PASCAL VOC / COCO / Objects365 table) on ShapeWorld-OV.

    .venv/bin/python benchmarks/transfer.py --threads 1     # the trained ensemble model
    .venv/bin/python benchmarks/transfer.py --quick         # plumbing only, tiny everything

A ViLD model trained on the default ShapeWorld-OV world is evaluated on a second world with
another category set, other names and other synonyms (`make_world(categories="alt")`), on
that world's val split:

  (a) "ViLD transfer (text embeddings swapped)": no training at all; the classifier is the
      teacher's text embeddings of the alt categories (names + synonyms, ViLD prompts). This
      is exactly what `vild eval --model M --dataset ALT/val/annotations.json --images
      ALT/val/images --teacher T` does (same function, `split_vocabulary`).
  (b) "Finetuning (linear classifier only)": every weight of the model frozen (backbone, RPN,
      heads, box regressor, mask head, learned background, BatchNorm statistics); the
      classifier is replaced by a trainable [C_alt, D] matrix initialised from the alt text
      embeddings and trained alone, on the alt world's TRAIN split with every alt category
      labelled, through the model's own loss path (`ViLDDetector.forward` with targets; only
      `loss_classifier` depends on the matrix). The result is saved as a model folder
      (`--work`/finetuned-linear) whose vocabulary is the alt one, so `vild eval` reproduces it.
  (c) "Source domain (reference)": the same model on its own world's val split.

Writes benchmarks/results/transfer{,_quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vild.errors import VildError  # noqa: E402
from vild.evaluation.cli import split_vocabulary  # noqa: E402
from vild.evaluation.run import evaluate_detector  # noqa: E402
from vild.io import load_json, save_json  # noqa: E402
from vild.training.checkpoint import MODEL_WEIGHTS, load_model  # noqa: E402
from vild.training.vocabulary import dataset_vocabulary, world_paths  # noqa: E402

from transfer_finetune import finetune_classifier, write_finetuned_model  # noqa: E402

ROW_TRANSFER = "ViLD transfer (text embeddings swapped)"
ROW_FINETUNE = "Finetuning (linear classifier only)"
ROW_SOURCE = "Source domain (reference)"
QUICK_WORLD = dict(num_train=16, num_val=8, num_web=20, num_web_val=2)  # source world, --quick
QUICK_ALT_WORLD = dict(num_train=16, num_val=8, num_web=1, num_web_val=1)
FINETUNE_STEPS = 1000
QUICK_FINETUNE_STEPS = 4


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


# ------------------------------------------------------------------------------ worlds, models
def ensure_alt_world(path: Path, source_world: Path, quick: bool, progress: bool, workers: int = 1) -> dict:
    """The alt-category world; generated (same detection sizes as the source world, or the
    default world's when that is absent) if missing. Its web corpus is not used (the teacher is
    the source world's), so it is generated at the minimum size, 1 image per category."""
    if not (path / "world.json").is_file():
        from vild.data.world import make_world

        if quick:
            sizes = dict(QUICK_ALT_WORLD)
        else:
            sizes = dict(num_web=1, num_web_val=1)
            if (source_world / "world.json").is_file():
                src = load_json(source_world / "world.json")["sizes"]
                sizes.update(num_train=src["num_train"], num_val=src["num_val"],
                             image_size=tuple(src["image_size"]))
        log(f"generating the alt-category world in {path} ({sizes})")
        make_world(path, categories="alt", progress=progress, workers=workers, **sizes)
    return load_json(path / "world.json")["sizes"]


def ensure_quick_source(args) -> None:
    """--quick only: a tiny source world, teacher and ViLD-ensemble model wherever they are
    missing (ViLD-text 12 steps -> teacher embeddings of its proposals -> ensemble 12 steps)."""
    from vild.data.world import make_world

    if not (args.source_world / "world.json").is_file():
        log(f"generating the quick source world in {args.source_world}")
        make_world(args.source_world, progress=args.progress, workers=args.threads, **QUICK_WORLD)
    if not (args.teacher / "open_clip_config.json").is_file():
        from vild.teacher import TeacherTrainConfig, train_teacher

        log(f"training a quick teacher into {args.teacher}")
        train_teacher(args.source_world, args.teacher,
                      TeacherTrainConfig(steps=4, batch_size=32, warmup_steps=1, pretrain_steps=2,
                                         eval_every=0),
                      progress=args.progress, log=None)
    if (args.model / MODEL_WEIGHTS).is_file():
        return
    from vild.data.detection import DetectionDataset
    from vild.regions.embed import embed_regions
    from vild.teacher import Teacher
    from vild.training.loop import TrainData, train_detector
    from vild.training.presets import preset
    from vild.training.vocabulary import subset, text_embeddings_for

    teacher = Teacher.load(str(args.teacher))
    paths = world_paths(args.source_world)
    vocab = dataset_vocabulary(paths["val"])
    vocab["teacher"] = {"name": str(args.teacher), "identity": teacher.identity}
    text = text_embeddings_for(teacher, vocab)
    base_ids = [c for c, b in zip(vocab["category_ids"], vocab["base"]) if b]
    text_dir, store = args.model.parent / "quick-text", args.model.parent / "quick-regions"

    def train(mode: str, out: Path, region_store: Path | None) -> None:
        model_cfg, train_cfg = preset("shapeworld-quick", model=dict(mode=mode, embed_dim=text.shape[1]),
                                      train=dict(seed=args.seed))
        data = TrainData(str(paths["train_images"]), str(paths["train_base"]), tuple(base_ids),
                         str(region_store) if region_store else None)
        log(f"training a quick ViLD-{mode} model into {out} ({train_cfg.steps} steps)")
        train_detector(model_cfg, train_cfg, data, text[subset(vocab, base_ids)], out,
                       vocabulary=vocab, all_text_embeddings=text, resume=True, progress=args.progress)

    train("text", text_dir, None)
    log(f"embedding the quick model's proposals into {store}")
    embed_regions(DetectionDataset(paths["train_images"], paths["train_base"], with_masks=False),
                  load_model(text_dir).propose, teacher, store, num_proposals=20,
                  progress=args.progress)
    train("ensemble", args.model, store)


# ----------------------------------------------------------------------------------- metrics
def row_metrics(result: dict) -> dict:
    segm, bbox = result["lvis"]["segm"], result["lvis"]["bbox"]
    coco_box, coco_mask = result["coco"]["bbox"], result["coco"]["segm"]
    return {
        "AP": segm["AP"], "APr": segm["APr"], "APc": segm["APc"], "APf": segm["APf"],
        "box_AP": bbox["AP"], "box_APr": bbox["APr"],
        "coco_box_AP": coco_box["AP"], "coco_box_AP50": coco_box["AP50"], "coco_box_AP75": coco_box["AP75"],
        "coco_mask_AP50": coco_mask["AP50"],
        "ms_per_image": result["timing"]["ms_per_image"],
    }


def evaluate_with_saved_or_swapped(model_dir: Path, model, paths: dict, teacher, args) -> tuple[dict, dict, torch.Tensor]:
    """The `vild eval` path: the split's vocabulary, the saved text embeddings when the model's
    vocabulary is the split's, else the teacher's embeddings of the split's categories."""
    vocab, text, base_mask, novel_ids = split_vocabulary(model_dir, paths["val"], teacher)
    result = evaluate_detector(
        model, paths["val_images"], paths["val"], text, vocab["category_ids"], base_mask=base_mask,
        novel_category_ids=novel_ids, batch_size=args.eval_batch_size, max_images=args.val_images,
        progress=args.progress,
    )
    info = {"categories": len(vocab["names"]), "base_mask_true": int(base_mask.sum()),
            "novel_category_ids": novel_ids}
    return row_metrics(result), info, text


# ---------------------------------------------------------------------------------- reports
COLUMNS = [("AP", "mask AP"), ("APr", "APr"), ("APc", "APc"), ("APf", "APf"), ("box_AP", "box AP"),
           ("coco_box_AP50", "COCO box AP50"), ("coco_mask_AP50", "COCO mask AP50"),
           ("ms_per_image", "ms/img")]


def markdown(rows: dict, meta: dict) -> str:
    def cell(v):
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"

    ft = meta["finetune"]
    lines = [
        "# Transfer to another vocabulary: ShapeWorld-OV -> ShapeWorld-OV alt",
        "",
        f"Measured {meta['date']} on {meta['machine']}, {meta['threads']} thread(s); wall time "
        f"{meta['wall_minutes']:.1f} min; load average {meta['load_average_start'][0]:.1f} at the start, "
        f"{meta['load_average_end'][0]:.1f} at the end; command: `{meta['command']}`."
        + (" **--quick: plumbing only, the numbers mean nothing.**" if meta["quick"] else ""),
        "",
        f"Model `{meta['model']}` (mode {meta['model_mode']}), teacher `{meta['teacher']}`. Target: "
        f"`{meta['alt_world']}` ({meta['alt_categories']} categories; category names shared with the "
        f"source vocabulary: {', '.join(meta['name_overlap_with_source']) or 'none'}; names or synonyms "
        f"shared: {', '.join(meta['term_overlap_with_source']) or 'none'}; train "
        f"{meta['alt_sizes']['num_train']}, val {meta['alt_sizes']['num_val']} images), "
        f"evaluated on {meta['val_images'] or 'all'} val images. LVIS evaluator for mask AP "
        "(APr/APc/APf: the target's own frequency groups) and box AP; pycocotools for AP50.",
        "",
        "| row | evaluated on | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['dataset']} | "
                     + " | ".join(cell(row['metrics'].get(k)) for k, _ in COLUMNS) + " |")
    lines += [
        "",
        f"- **{ROW_TRANSFER}**: no training; the alt categories' text embeddings (names + "
        "synonyms, ViLD prompt ensemble) replace the classifier. No alt category was seen in "
        "training, so for ViLD-ensemble every category is weighted as novel (as `vild eval` does).",
        f"- **{ROW_FINETUNE}**: only a [C_alt, D] classifier (init: those text embeddings, "
        f"{'rows L2-normalised in the forward pass' if ft['classifier_norm'] == 'l2' else 'unconstrained rows'}) "
        f"is trained: {ft['steps']} SGD steps of {ft['batch_size']} alt train images, lr "
        f"{ft['lr']} (x0.1 at 80%), momentum 0.9, clip 1.0, every alt category labelled; "
        f"loss_classifier {ft['loss_first']:.3f} (first 10% mean) -> {ft['loss_last']:.3f} (last 10%), "
        f"{ft['seconds']:.0f} s. Everything else is frozen, the learned background included; "
        "the alt categories are then weighted as trained (base) by ViLD-ensemble.",
    ]
    if ROW_SOURCE in rows:
        lines.append(f"- **{ROW_SOURCE}**: the same model on its own world's val split with its saved "
                     "vocabulary.")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------- main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path,
                        help="a trained ViLD model folder (default: benchmarks/work/shapeworld[-quick]/seed0/ensemble)")
    parser.add_argument("--teacher", type=Path, help="default: benchmarks/work/teacher[-quick]")
    parser.add_argument("--source-world", type=Path,
                        help="the model's world, for the reference row (default: benchmarks/work/world[-quick])")
    parser.add_argument("--alt-world", type=Path, help="default: benchmarks/work/world-alt[-quick]; generated if missing")
    parser.add_argument("--work", type=Path, help="finetuned model goes here (default: benchmarks/work/transfer[-quick])")
    parser.add_argument("--val-images", type=int, help="evaluate on the first N val images (default: all)")
    parser.add_argument("--finetune-steps", type=int,
                        help=f"classifier finetuning steps (default {FINETUNE_STEPS}; --quick: {QUICK_FINETUNE_STEPS})")
    parser.add_argument("--finetune-batch-size", type=int, default=8)
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--classifier-norm", choices=["l2", "none"], default="l2",
                        help="l2: the finetuned rows are L2-normalised in the forward pass (a cosine "
                        "classifier like the text embeddings it starts from); none: a free linear map")
    parser.add_argument("--eval-batch-size", type=int, default=4)
    parser.add_argument("--no-source", action="store_true", help="skip the source-domain reference row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="tiny worlds, a tiny model and teacher built where missing, few steps (plumbing only)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (and world-generation processes); 1 on a shared machine")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, load_start = time.perf_counter(), os.getloadavg()
    suffix = "-quick" if args.quick else ""
    args.model = args.model or ROOT / f"benchmarks/work/shapeworld{suffix}/seed0/ensemble"
    args.teacher = args.teacher or ROOT / f"benchmarks/work/teacher{suffix}"
    args.source_world = args.source_world or ROOT / f"benchmarks/work/world{suffix}"
    args.alt_world = args.alt_world or ROOT / f"benchmarks/work/world-alt{suffix}"
    args.work = args.work or ROOT / f"benchmarks/work/transfer{suffix}"
    if args.finetune_steps is None:
        args.finetune_steps = QUICK_FINETUNE_STEPS if args.quick else FINETUNE_STEPS
    if args.finetune_steps < 1:
        raise SystemExit("--finetune-steps must be >= 1")
    if args.quick:
        ensure_quick_source(args)
    for path, what, name in ((args.model / MODEL_WEIGHTS, "--model", "a trained model"),
                             (args.teacher / "open_clip_config.json", "--teacher", "a teacher")):
        if not path.is_file():
            raise SystemExit(f"{what}: {path.parent} is not {name}; run benchmarks/shapeworld.py first")
    alt_sizes = ensure_alt_world(args.alt_world, args.source_world, args.quick, args.progress,
                                 workers=args.threads)

    from vild.teacher import Teacher

    teacher = Teacher.load(str(args.teacher))
    model_dir = args.model
    model = load_model(model_dir)
    alt = world_paths(args.alt_world)
    alt_vocab = dataset_vocabulary(alt["val"])
    source_vocab = load_json(model_dir / "vocabulary.json")
    source_names = set(source_vocab["names"])
    source_terms = source_names | {s_ for syn in source_vocab.get("synonyms", []) for s_ in syn}
    alt_terms = set(alt_vocab["names"]) | {s_ for syn in alt_vocab["synonyms"] for s_ in syn}
    overlap = sorted(source_names & set(alt_vocab["names"]))
    term_overlap = sorted(source_terms & alt_terms)
    rows: dict[str, dict] = {}
    timings: dict[str, float] = {}

    # (a) transfer: swap in the alt text embeddings, no training
    log(f"{ROW_TRANSFER}: evaluating {model_dir} on {args.alt_world}/val")
    t0 = time.perf_counter()
    metrics, info, alt_text = evaluate_with_saved_or_swapped(model_dir, model, alt, teacher, args)
    timings["eval_transfer_s"] = time.perf_counter() - t0
    rows[ROW_TRANSFER] = {"dataset": "alt val", "metrics": metrics, **info}

    # (b) finetune the linear classifier alone on the alt train split
    log(f"{ROW_FINETUNE}: {args.finetune_steps} steps on {args.alt_world}/train")
    train_cfg = load_json(model_dir / "train_config.json") if (model_dir / "train_config.json").is_file() else {}
    augmentation = {k: (tuple(train_cfg[k]) if isinstance(train_cfg.get(k), list) else train_cfg[k])
                    for k in ("output_size", "scale_range", "hflip_prob") if k in train_cfg}
    before = {k_: v.detach().clone() for k_, v in model.state_dict().items()}
    t0 = time.perf_counter()
    weight, history = finetune_classifier(model, alt, alt_text, alt_vocab["category_ids"], args, augmentation)
    finetune_s = time.perf_counter() - t0
    timings["finetune_s"] = finetune_s
    after = model.state_dict()
    changed = [k_ for k_, v in before.items() if not torch.equal(v, after[k_])]
    if changed:
        raise VildError(f"finetuning changed frozen model state: {changed[:5]}")
    del before, after
    k = max(1, len(history) // 10)
    ft_meta = {
        "steps": args.finetune_steps, "batch_size": args.finetune_batch_size, "lr": args.finetune_lr,
        "classifier_norm": args.classifier_norm, "seed": args.seed, "augmentation": augmentation,
        "trainable_parameters": int(weight.numel()),
        "model_state_unchanged": True,  # checked: every weight and BatchNorm buffer
        "loss_first": sum(h["loss_classifier"] for h in history[:k]) / k,
        "loss_last": sum(h["loss_classifier"] for h in history[-k:]) / k,
        "seconds": finetune_s,
        "cosine_to_init_mean": float((torch.nn.functional.normalize(weight, dim=-1)
                                      * torch.nn.functional.normalize(alt_text, dim=-1)).sum(-1).mean()),
    }
    finetuned_dir = args.work / "finetuned-linear"
    alt_vocab_saved = dict(alt_vocab, teacher={"name": str(args.teacher), "identity": teacher.identity})
    write_finetuned_model(finetuned_dir, model_dir, alt_vocab_saved,
                          weight, {k_: v for k_, v in ft_meta.items() if k_ != "seconds"} | {"from": str(model_dir)})
    save_json(finetuned_dir / "finetune_log.json", history)
    t0 = time.perf_counter()
    metrics, info, _ = evaluate_with_saved_or_swapped(finetuned_dir, load_model(finetuned_dir), alt, teacher, args)
    timings["eval_finetune_s"] = time.perf_counter() - t0
    rows[ROW_FINETUNE] = {"dataset": "alt val", "metrics": metrics, **info}

    # (c) the source domain, for reference
    if not args.no_source:
        if (args.source_world / "world.json").is_file():
            log(f"{ROW_SOURCE}: evaluating {model_dir} on {args.source_world}/val")
            t0 = time.perf_counter()
            metrics, info, _ = evaluate_with_saved_or_swapped(
                model_dir, model, world_paths(args.source_world), teacher, args)
            timings["eval_source_s"] = time.perf_counter() - t0
            rows[ROW_SOURCE] = {"dataset": "source val", "metrics": metrics, **info}
        else:
            log(f"no source world at {args.source_world}: skipping {ROW_SOURCE}")

    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "threads": args.threads,
        "quick": args.quick,
        "command": "python benchmarks/transfer.py " + " ".join(sys.argv[1:]),
        "wall_minutes": (time.perf_counter() - started) / 60,
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "model": str(model_dir),
        "model_mode": model.config.mode,
        "teacher": str(args.teacher),
        "teacher_identity": teacher.identity,
        "source_world": str(args.source_world),
        "alt_world": str(args.alt_world),
        "alt_sizes": alt_sizes,
        "alt_categories": len(alt_vocab["names"]),
        "name_overlap_with_source": overlap,
        "term_overlap_with_source": term_overlap,  # names or synonyms found on both sides
        "val_images": args.val_images,
        "finetune": ft_meta,
        "finetuned_model": str(finetuned_dir),
        "timings_s": timings,
    }
    stem = "transfer_quick" if args.quick else "transfer"
    args.results.mkdir(parents=True, exist_ok=True)
    save_json(args.results / f"{stem}.json", {"meta": meta, "rows": rows})
    (args.results / f"{stem}.md").write_text(markdown(rows, meta))
    log(f"wrote {args.results / stem}.{{json,md}} in {meta['wall_minutes']:.1f} min")
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
