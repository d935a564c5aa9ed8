"""`vild train`."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a ViLD detector (ViLD-text, ViLD-image, ViLD, ViLD-ensemble, supervised)",
        description="Train a detector on base categories; the classifier is the teacher's text "
        "embeddings. Give --world for a ShapeWorld-OV world, or --images/--annotations. "
        "Data parallel under torchrun (torchrun --nproc_per_node N -m vild train ...): NCCL on "
        "GPUs, gloo on CPU; rank 0 writes the model, checkpoints and logs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("data")
    src.add_argument("--world", help="a ShapeWorld-OV world directory (vild make-world)")
    src.add_argument("--images", help="training images folder")
    src.add_argument("--annotations", help="LVIS/COCO-format training annotations")
    src.add_argument(
        "--categories",
        help="trained categories: base (not novel/rare), all, labelled (every category with an "
        "annotation in the file) or comma-separated category ids (default: base; labelled with --init)",
    )
    src.add_argument("--supervised", action="store_true",
                     help="the supervised baseline: every category labelled, Repeat Factor Sampling")
    src.add_argument("--region-store", help="teacher embeddings of proposals (vild embed-regions); "
                     "with --init and a distilling mode, built in OUT/regions when not given")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune: continue from a trained model folder or registered name (e.g. "
                   "shapeworld-vild-ensemble); its architecture and mode (unless --mode) are kept, "
                   "every weight that fits is loaded, the --preset gives only the schedule")
    p.add_argument("--num-proposals", type=int, default=300,
                   help="with --init and no --region-store: proposals per image whose teacher "
                   "embeddings are distilled")
    p.add_argument("--teacher", help="teacher folder, hf-hub:org/repo or ARCH:tag (required; with "
                   "--init, default: the teacher the init model names)")
    p.add_argument("--preset", default="shapeworld", help="named recipe (see vild.training.presets)")
    p.add_argument("--mode", choices=["text", "image", "vild", "ensemble"], help="ViLD variant")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any model or training setting, e.g. --set temperature=50")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (this rank's GPU if any, else CPU)")
    p.add_argument("--workers", type=int,
                   help="loader processes that decode and augment the next batches while the model "
                   "runs (default: 0 on a machine of <= 2 cores, else one per spare core, at most 4 "
                   "on CPU, 8 on GPU); the weights do not depend on it")
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="fp32 (default) or bf16 autocast of the forward pass")
    p.add_argument("--micro-batch-size", type=int,
                   help="images per forward pass and process; the global batch (preset batch_size) "
                   "is reached by data parallelism x gradient accumulation")
    p.add_argument("--sync-bn", action="store_true", help="BatchNorm statistics over every process's images")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--resume", action="store_true", help="continue from the folder's last checkpoint")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from vild.training.distributed import distributed_session, resolve_device

    device = resolve_device(args.device)
    with distributed_session(device) as info:
        return _run(args, device, info)


def _init_folder(spec: str):
    """--init: a registered name (or hf-hub:) -> its folder via the model registry; else a path."""
    from pathlib import Path

    # the registry is the one map from names to folders (it imports nothing heavy)
    from vild.inference.registry import REGISTRY, resolve

    if spec in REGISTRY or spec.startswith("hf-hub:"):
        return resolve(spec).folder
    return Path(spec)


def _init_teacher(folder) -> str:
    """The teacher an init model folder names (detector.json, else vocabulary.json)."""
    from vild.errors import VildError
    from vild.inference.registry import resolve

    spec = resolve(str(folder)).teacher
    if not spec:
        raise VildError(f"--init model {folder} does not say which teacher it was trained with: give --teacher")
    return spec


def _run(args, device, info) -> int:
    from pathlib import Path

    import torch

    from vild.errors import VildError
    from vild.training.checkpoint import MODEL_WEIGHTS
    from vild.training.distributed import barrier
    from vild.teacher import Teacher
    from vild.training import finetune
    from vild.training.loop import TrainData, train_detector
    from vild.training.presets import parse_overrides, preset, row_recipe
    from vild.training.vocabulary import (
        dataset_vocabulary, labelled_category_ids, split_source, subset, text_embeddings_for,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    images, annotations = split_source(
        args.world, args.images, args.annotations,
        world_split="train_all" if args.supervised else "train_base",
    )
    init = finetune.check_init_folder(_init_folder(args.init), args.init) if args.init else None
    if not args.teacher:
        if init is None:
            raise VildError("give --teacher (folder, hf-hub:org/repo or ARCH:tag)")
        args.teacher = _init_teacher(init)
    finished = (Path(args.out) / MODEL_WEIGHTS).exists()
    if finished and not args.resume:  # said before minutes of embedding regions
        raise VildError(f"{args.out} already holds a trained model; use --resume or another --out")
    model_over, train_over = parse_overrides(args.set)
    if args.mode:
        model_over["mode"] = args.mode
    if args.steps:
        train_over["steps"] = args.steps
    if args.seed is not None:
        train_over["seed"] = args.seed
    if args.micro_batch_size:
        train_over["micro_batch_size"] = args.micro_batch_size
    if args.sync_bn:
        train_over["sync_bn"] = True
    if args.precision:
        train_over["precision"] = args.precision
    if args.supervised:
        model_over.setdefault("mode", "text")
        train_over.setdefault("repeat_factor_threshold", 0.001)

    vocabulary = dataset_vocabulary(annotations)
    teacher = Teacher.load(args.teacher)
    if init is not None:
        # the init model's architecture (its weights must fit), mode and temperatures; the
        # preset gives the schedule only
        model_config = finetune.init_model_config(init, model_over, teacher_dim=teacher.embed_dim)
        _, train_config = preset(args.preset, train=dict(train_over, init_from=str(init)))
        trained_with = finetune.init_teacher_identity(init)
        if trained_with and trained_with != teacher.identity and info.is_main:
            print(f"note: --init was trained with teacher {trained_with}, --teacher is {teacher.identity}; "
                  "text embeddings and distillation targets come from --teacher", flush=True)
    vocabulary["teacher"] = {"name": args.teacher, "identity": teacher.identity}
    categories = "all" if args.supervised else args.categories or ("labelled" if init is not None else "base")
    if categories == "all":
        ids = vocabulary["category_ids"]
    elif categories == "labelled":
        ids = labelled_category_ids(annotations, vocabulary)
    elif categories == "base":
        ids = [c for c, b in zip(vocabulary["category_ids"], vocabulary["base"]) if b]
    else:
        try:
            ids = [int(x) for x in categories.split(",") if x.strip()]
        except ValueError:
            raise VildError(f"--categories: expected base, all, labelled or ids, got {categories!r}") from None
    # "base" in a saved vocabulary = labelled in this model's training (ensemble weighting)
    trained = set(ids)
    vocabulary["novel"] = [not b for b in vocabulary["base"]]
    vocabulary["base"] = [c in trained for c in vocabulary["category_ids"]]
    # rank 0 fills the text-embedding cache first; the others then read it
    if not info.is_main:
        barrier()
    all_embeddings = text_embeddings_for(teacher, vocabulary, progress=not args.no_progress and info.is_main)
    if info.is_main:
        barrier()
    if init is None:
        model_over["embed_dim"] = int(all_embeddings.shape[1])
        mode = model_over.get("mode") or preset(args.preset)[0].mode
        model_over = row_recipe(model_over, teacher.logit_scale, model_over["embed_dim"], mode, args.preset)
        model_config, train_config = preset(args.preset, model=model_over, train=train_over)
    store = args.region_store
    if model_config.uses_distillation:
        if store:
            finetune.check_region_store(store, teacher, model_config.embed_dim)
        elif init is not None and not finished:  # (a finished folder is returned untouched)
            store_teacher = teacher if device.type == "cpu" else Teacher.load(args.teacher, device=device)
            store = finetune.build_region_store(
                init, images, annotations, store_teacher, Path(args.out), num_proposals=args.num_proposals,
                device=device, workers=args.workers, progress=not args.no_progress and info.is_main,
                log=print if info.is_main else (lambda _: None),
            )
    data = TrainData(str(images), str(annotations), tuple(ids), str(store) if store else None)
    out = train_detector(
        model_config, train_config, data, all_embeddings[subset(vocabulary, ids)], args.out,
        vocabulary=vocabulary, all_text_embeddings=all_embeddings, resume=args.resume,
        progress=not args.no_progress, device=device, workers=args.workers,
    )
    if info.is_main:
        print(f"model written to {out}")
    return 0
