"""The paper's main table on ShapeWorld-OV, end to end, on this machine.

    .venv/bin/python benchmarks/shapeworld.py --threads 2  # default: world, teacher, 3 seeds
    .venv/bin/python benchmarks/shapeworld.py --quick      # plumbing only, minutes
    .venv/bin/python benchmarks/shapeworld.py --seeds 1
    .venv/bin/python benchmarks/shapeworld.py --device cuda   # teacher, trunks, store, rows on the GPU

On 2 quiet CPU cores the defaults take about 20 min for each of the two trunks (4000 steps),
6 min for the region store, then per seed five rows of 4000 steps (10-15 min each on one core)
and seven evaluations (about 8 min, most of it the two CLIP rows).

Regenerates the world and trains the teacher if missing. Default protocol "trunk": one
detector trunk is trained once on base categories (backbone, RPN, box and mask heads, with
fixed random class prototypes: no teacher, no novel label), like a pretrained detector shared
by every row; the teacher embeds its RPN's proposals once (the region store). Then per seed
every row starts from the trunk's matching weights (backbone and RPN frozen) and trains its
region-embedding heads: ViLD-text, ViLD-image, ViLD, ViLD-ensemble (4000 steps; the distilling
rows weight each proposal's L1 term by the rarity of its teacher embedding, `--rarity` and
`--image-rarity`, chosen on world s7: docs/distillation.md section 8). The supervised
base+novel baseline (RFS) starts instead from a twin trunk trained on base+novel labels, whose
RPN is the "base+novel" row of the proposal-recall table. Every row is evaluated, plus CLIP on
cropped regions and ViLD-text + CLIP on the ViLD-text model's proposals. The two tower rows
put the teacher's own image tower into each seed's ViLD-text model and train a distillation
head on it from the same store (`vild distill-tower`, `vild.training.tower_head`: the tower's
features of the stored proposals read once per run, about 7.5 min on 1 thread, then 2000
steps per seed, 5-10 min), scored alone (ViLD-image, tower head) and ensembled with the text
head (ViLD-ensemble, tower head); docs/distillation.md section 18. The third (ViLD, tower
head) trains ViLD's one head on the tower, with the text loss as well (section 19). Protocol
"scratch" trains every row from scratch instead. Writes benchmarks/results/shapeworld{,_quick}.{json,md}, with the device and
the wall time of every stage (`meta.stage_seconds`). --device: teacher, trunks, region store,
rows and evaluations (the RPN recall table stays on the CPU). --jobs J trains up to J rows at
once, each in its own process; on an H200 15 jobs together were barely faster than one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from vild.data.loading import resolve_workers  # noqa: E402
from vild.evaluation.run import evaluate_detector, evaluate_rpn_recall  # noqa: E402
from shapeworld_report import ROWS, TOWER_ROWS, row_metrics, run_meta, write_results  # noqa: E402
from shapeworld_rows import (  # noqa: E402
    check_same_schedule, ensure_teacher, ensure_tower, ensure_world, row_overrides, train_rows_in_parallel)
from vild.training.checkpoint import load_model  # noqa: E402
from vild.training.distributed import resolve_device  # noqa: E402
from vild.training.loop import TrainData, train_detector  # noqa: E402
from vild.training.presets import parse_overrides, preset, row_recipe  # noqa: E402
from vild.training.vocabulary import (  # noqa: E402
    dataset_vocabulary,
    subset,
    text_embeddings_for,
    world_paths,
)

TRUNK_DIM = 64  # width of the trunk's random class prototypes (its heads are not reused)


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def row_preset(args) -> str:
    """The preset every row and trunk trains from."""
    return "shapeworld-quick" if args.quick else "shapeworld"


def train_row(out: Path, mode: str, *, seed: int, args, world: Path, vocab: dict, text: torch.Tensor,
              supervised: bool = False, store: Path | None = None, steps: int | None = None,
              init_from: Path | None = None, timings: dict | None = None,
              overrides: tuple[dict, dict] = ({}, {})) -> Path:
    """Train one row (or the trunk) unless its model already exists; returns its folder.

    overrides: (model, train) settings applied on top of the preset (`--row-set`)."""
    paths = world_paths(world)
    base_ids = [c for c, b in zip(vocab["category_ids"], vocab["base"]) if b]
    ids = vocab["category_ids"] if supervised else base_ids
    train_over = dict(seed=seed, repeat_factor_threshold=args.rfs_threshold if supervised else None)
    if steps:
        train_over["steps"] = steps
    if init_from is not None:
        train_over.update(init_from=str(init_from), init_modules=tuple(args.init_modules),
                          freeze=tuple(args.freeze))
    model_over, extra_train = overrides
    model_cfg, train_cfg = preset(
        row_preset(args), model=dict(model_over, mode=mode, embed_dim=text.shape[1]),
        train={**extra_train, **train_over},
    )
    if (out / "model.safetensors").is_file():
        check_same_schedule(out, train_cfg, model_cfg)
        return out
    annotations = paths["train_all"] if supervised else paths["train_base"]
    data = TrainData(str(paths["train_images"]), str(annotations), tuple(ids),
                     str(store) if store else None)
    saved_vocab = dict(vocab, base=[c in set(ids) for c in vocab["category_ids"]])
    log(f"training {out} ({train_cfg.steps} steps)")
    started = time.perf_counter()
    train_detector(model_cfg, train_cfg, data, text[subset(vocab, ids)], out,
                   vocabulary=saved_vocab, all_text_embeddings=text, resume=True,
                   progress=args.progress, device=args.device, workers=args.workers)
    if timings is not None:
        timings[f"train_{out.name}_s"] = time.perf_counter() - started
    return out


def ensure_store(store: Path, rpn_dir: Path, world: Path, teacher, args, timings: dict) -> Path:
    manifest = store / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("complete"):
        return store
    from vild.data.detection import DetectionDataset
    from vild.regions.embed import embed_regions

    paths = world_paths(world)
    log(f"embedding regions of {rpn_dir.name}'s base-trained RPN proposals into {store}")
    started = time.perf_counter()
    embed_regions(
        DetectionDataset(paths["train_images"], paths["train_base"], with_masks=False),
        load_model(rpn_dir, device=str(args.device)).propose, teacher, store,
        num_proposals=args.num_proposals, progress=args.progress, num_workers=resolve_workers(None, args.device),
        device=None if args.device.type == "cpu" else args.device,
    )
    timings["embed_regions_s"] = time.perf_counter() - started
    return store


def train_seed_rows(seed: int, args, world: Path, teacher, vocab: dict, text: torch.Tensor, work: Path,
                    shared: dict, timings: dict, only: str | None = None) -> dict[str, Path]:
    """Train the seed's rows that are not trained yet (only `only`, if given) -> their folders."""
    seed_dir = work / f"seed{seed}"
    common = dict(seed=seed, args=args, world=world, vocab=vocab, text=text, timings=timings,
                  overrides=row_overrides(args))

    def row(mode: str, **kwargs) -> Path:
        if only is not None and mode != only:
            return seed_dir / mode
        # --row-set distill_rarity=P, temperature=T or image_temperature=T still wins
        model_over, train_over = kwargs["overrides"]
        if mode in ("image", "vild", "ensemble"):
            rarity = args.image_rarity if mode == "image" else args.rarity
            train_over = {"distill_rarity": rarity, **train_over}
        model_over = row_recipe(model_over, teacher.logit_scale, text.shape[1], mode, row_preset(args))
        kwargs = dict(kwargs, overrides=(model_over, train_over))
        return train_row(seed_dir / mode, "text" if mode == "supervised" else mode, **kwargs)

    if args.protocol == "trunk":
        rows_from = dict(init_from=shared["trunk"], steps=args.row_steps)
        store = shared["store"]
    else:
        rows_from, store = dict(steps=args.row_steps), None
    model_dirs = {"text": row("text", **common, **rows_from)}
    if args.protocol != "trunk" and only in (None, "image", "vild", "ensemble", "tower"):
        store = ensure_store(seed_dir / "regions", model_dirs["text"], world, teacher, args, timings)
    for mode in ("image", "vild", "ensemble"):
        if mode in args.rows:
            model_dirs[mode] = row(mode, store=store, **common, **rows_from)
    if "supervised" in args.rows:
        if args.protocol == "trunk":  # the supervised baseline never shares the base-only trunk
            rows_from = dict(rows_from, init_from=shared["trunk_all"])
        model_dirs["supervised"] = row("supervised", supervised=True, **common, **rows_from)
    # the tower rows: one model (mode ensemble) scores ViLD-image and the ensemble, one (mode
    # vild) is ViLD's one head; every seed's heads read the same store through the same tower,
    # so its features are read once
    wanted = {"tower": bool({"tower-image", "tower-ensemble"} & set(args.rows)), "tower-vild": "tower-vild" in args.rows}
    for key, mode in (("tower", "ensemble"), ("tower-vild", "vild")):
        if not wanted[key]:
            continue
        model_dirs[key] = seed_dir / key
        if only in (None, "tower"):
            ensure_tower(model_dirs[key], model_dirs["text"], world, teacher, store, seed, args, timings,
                         shared.setdefault("tower_features", {}), log, mode=mode)
    return model_dirs


def run_seed(seed: int, args, world: Path, teacher, vocab: dict, text: torch.Tensor, work: Path,
             shared: dict) -> dict:
    paths = world_paths(world)
    novel_ids = [c for c, b in zip(vocab["category_ids"], vocab["base"]) if not b]
    base_mask = torch.tensor(vocab["base"])
    timings: dict[str, float] = {}
    model_dirs = train_seed_rows(seed, args, world, teacher, vocab, text, work, shared, timings)

    def evaluate(model_dir: Path, method: str = "native", mask=base_mask) -> dict:
        model = load_model(model_dir).to(args.device)
        result = evaluate_detector(
            model, paths["val_images"], paths["val"], text, vocab["category_ids"],
            base_mask=mask, novel_category_ids=novel_ids, method=method, teacher=teacher,
            progress=args.progress, max_images=args.val_images,
            num_crop_regions=args.crop_regions or model.config.rpn_post_nms_top_n_test,
        )
        return row_metrics(result)

    rows = {}
    for label, key in ROWS:
        if key not in args.rows:
            continue
        log(f"seed {seed}: evaluating {label}")
        started = time.perf_counter()
        if key in ("clip", "text+clip"):
            rows[label] = evaluate(model_dirs["text"], method=key)
        elif key == "supervised":
            rows[label] = evaluate(model_dirs["supervised"], mask=torch.ones_like(base_mask))
        elif key == "tower-vild":
            rows[label] = evaluate(model_dirs["tower-vild"])
        elif key in TOWER_ROWS:
            rows[label] = evaluate(model_dirs["tower"], method="vild-image" if key == "tower-image" else "native")
        else:
            rows[label] = evaluate(model_dirs[key])
        timings[f"eval_{key}_s"] = time.perf_counter() - started
    recall = {}
    for label, key in (("base", "text"), ("base+novel", "supervised")):
        if key not in model_dirs:
            continue
        recall[label] = evaluate_rpn_recall(
            load_model(model_dirs[key]), paths["val_images"], paths["val"], category_ids=novel_ids,
            progress=args.progress, max_images=args.val_images,
        )
    return {"rows": rows, "rpn_recall_novel": recall, "timings_s": timings}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, help="default: benchmarks/work/world[-quick]")
    parser.add_argument("--teacher", type=Path, help="default: benchmarks/work/teacher[-quick]")
    parser.add_argument("--work", type=Path, help="default: benchmarks/work/shapeworld[-quick]")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--protocol", choices=["trunk", "scratch"], default="trunk",
                        help="trunk: rows start from one shared base-trained backbone+RPN; "
                        "scratch: every row trains from random init (the paper's protocol, slower)")
    parser.add_argument("--trunk-steps", type=int, default=4000,
                        help="steps of the shared trunks (0: the preset's). On the base names "
                        "600 steps gave box APc 1.7, 4000 (16 epochs) 48.1 "
                        "(benchmarks/results/shapeworld_diagnostics{_600steps,}.json)")
    parser.add_argument("--row-steps", type=int, default=4000,
                        help="steps of each row (0: the preset's). 4000 with rarity weighting was "
                        "chosen on world s7 over 1000 uniform (docs/distillation.md section 8)")
    parser.add_argument("--rarity", type=float, default=0.5,
                        help="rarity weighting P of the ViLD and ViLD-ensemble rows' distillation loss "
                        "(`distill_rarity`; 0: the paper's uniform L1)")
    parser.add_argument("--image-rarity", type=float, default=1.0,
                        help="rarity weighting P of the ViLD-image row (chosen apart on world s7: "
                        "its loss is all distillation)")
    parser.add_argument("--init-modules", nargs="*", default=[],
                        help="trunk protocol: which trunk weights initialise every row (module name "
                             "prefixes; default: every weight whose name and shape match: backbone, "
                             "RPN, box head body, box regressor, mask head. The region-embedding "
                             "projections, background and ViLD-ensemble's distillation head start fresh)")
    parser.add_argument("--freeze", nargs="*", default=["backbone", "rpn"],
                        help="trunk parts kept fixed while rows train (trunk protocol)")
    parser.add_argument("--rfs-threshold", type=float, default=0.1,
                        help="Repeat Factor Sampling threshold of the supervised row (LVIS: 0.001; "
                        "ShapeWorld's rare categories are too frequent for that to repeat anything)")
    parser.add_argument("--num-proposals", type=int, default=100,
                        help="proposals per training image whose teacher embeddings are distilled")
    parser.add_argument("--val-images", type=int, default=250,
                        help="evaluate on the first N val images (0: all)")
    parser.add_argument("--crop-regions", type=int, default=None,
                        help="proposals classified by the teacher in the CLIP rows (default: every test "
                        "proposal of the RPN, as the other rows score; the tables before 2026-11-28 used 100)")
    parser.add_argument("--row-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model or training settings of every row (not the trunks), as "
                        "`vild train --set`: e.g. distill_weight=1 clip_grad_norm=none")
    parser.add_argument("--model-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="model settings of the trunks and every row, e.g. a wider trunk: "
                        "tiny_widths=64,128,192,256 fpn_channels=128")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trunk protocol: train up to J rows at once, each in its own process "
                        "(--threads is shared among them). On an H200, 15 jobs ran at 1.3 steps/s "
                        "each, 19 together, against 12-15 for one process: not a speed-up there")
    parser.add_argument("--workers", type=int, help="loader processes of each training (default: "
                        "vild's for the device; with --jobs, the spare cores shared among the jobs)")
    parser.add_argument("--train-only", metavar="SEED:MODE", help=argparse.SUPPRESS)
    parser.add_argument("--rows", nargs="*", default=[key for _, key in ROWS], choices=[key for _, key in ROWS],
                        help="rows to train and evaluate (default: all; without 'supervised' the "
                        "base+novel trunk is not trained). 'text' is always trained: the CLIP rows use it")
    parser.add_argument("--quick", action="store_true", help="tiny world and schedules (plumbing only)")
    parser.add_argument("--fresh", action="store_true", help="retrain rows even if their models exist")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (the GPU if any): "
                        "where the teacher, trunks, region store and rows train")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks/results")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.row_overrides = parse_overrides(args.row_set)
    args.model_overrides, train_keys = parse_overrides(args.model_set)
    if train_keys:
        parser.error(f"--model-set takes model settings only; {sorted(train_keys)} are training settings (--row-set)")
    if (args.jobs > 1 or args.train_only) and args.protocol != "trunk":
        parser.error("--jobs needs --protocol trunk (from scratch, a row's store comes from its own ViLD-text)")
    args.device = resolve_device(args.device)
    if args.quick:  # plumbing only: the preset's few steps, a few val images
        args.trunk_steps = args.row_steps = 0
    args.trunk_steps = args.trunk_steps or None
    args.row_steps = args.row_steps or None
    args.val_images = args.val_images or None
    started = time.perf_counter()
    suffix = "-quick" if args.quick else ""
    args.world = args.world or ROOT / f"benchmarks/work/world{suffix}"
    args.teacher = args.teacher or ROOT / f"benchmarks/work/teacher{suffix}"
    args.work = args.work or ROOT / f"benchmarks/work/shapeworld{suffix}"
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    stages: dict[str, float] = {}  # wall seconds of each stage (near 0: reused from disk)
    mark = time.perf_counter()
    ensure_world(args.world, args.quick, args.progress, log)
    stages["world"], mark = time.perf_counter() - mark, time.perf_counter()
    vocab = dataset_vocabulary(world_paths(args.world)["val"])
    shared, shared_timings = {}, {}
    if args.protocol == "trunk":
        # One base-trained trunk (backbone + RPN, from scratch), shared by every seed like a
        # pretrained backbone. It is a closed-vocabulary detector over the base categories with
        # fixed random class prototypes, so it needs no teacher and sees no novel label. Its RPN
        # is the base-trained RPN whose proposals are distilled.
        prototypes = torch.nn.functional.normalize(
            torch.randn(len(vocab["names"]), TRUNK_DIM, generator=torch.Generator().manual_seed(1000)), dim=-1
        )
        shared["trunk"] = train_row(args.work / "trunk", "text", seed=1000, args=args, world=args.world,
                                    vocab=vocab, text=prototypes, steps=args.trunk_steps,
                                    timings=shared_timings, overrides=(args.model_overrides, {}))
        # Its twin trained on base+novel labels (RFS) starts the supervised baseline and gives
        # the base+novel RPN of the proposal-recall table.
        if "supervised" in args.rows:
            shared["trunk_all"] = train_row(args.work / "trunk-all", "text", seed=1000, args=args,
                                            world=args.world, vocab=vocab, text=prototypes,
                                            supervised=True, steps=args.trunk_steps, timings=shared_timings,
                                            overrides=(args.model_overrides, {}))
        stages["trunks"], mark = time.perf_counter() - mark, time.perf_counter()
    ensure_teacher(args.teacher, args.world, args.quick, args.progress, log, device=str(args.device))
    stages["teacher"], mark = time.perf_counter() - mark, time.perf_counter()

    from vild.teacher import Teacher

    teacher = Teacher.load(str(args.teacher), device=args.device)
    text = text_embeddings_for(teacher, vocab)
    stages["text_embeddings"], mark = time.perf_counter() - mark, time.perf_counter()
    if args.protocol == "trunk":
        shared["store"] = ensure_store(args.work / "regions", shared["trunk"], args.world, teacher,
                                       args, shared_timings)
        stages["region_store"], mark = time.perf_counter() - mark, time.perf_counter()
    if args.train_only:
        seed, mode = args.train_only.split(":")
        train_seed_rows(int(seed), args, args.world, teacher, vocab, text, args.work, shared, {}, only=mode)
        return 0
    if args.jobs > 1:
        train_rows_in_parallel(args, Path(__file__).resolve(), log)
        stages["rows_in_parallel"], mark = time.perf_counter() - mark, time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        per_seed.append(run_seed(seed, args, args.world, teacher, vocab, text, args.work, shared))
        stages[f"seed{seed}"], mark = time.perf_counter() - mark, time.perf_counter()
        if seed + 1 < args.seeds:  # what is done survives a run stopped part-way
            write_results(args.results, "shapeworld_partial", per_seed,
                          run_meta(args, stages, started, shared_timings), log)
    stages["total"] = time.perf_counter() - started
    meta = run_meta(args, stages, started, shared_timings)
    stem = "shapeworld_quick" if args.quick else "shapeworld"
    write_results(args.results, stem, per_seed, meta, log)
    for suffix in (".json", ".md"):  # the full table supersedes what a stopped run would have kept
        (args.results / f"shapeworld_partial{suffix}").unlink(missing_ok=True)
    print((args.results / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
