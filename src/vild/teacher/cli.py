"""`vild train-teacher WORLD_DIR --out TEACHER_DIR`: train the ShapeWorld-OV CLIP teacher."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from vild.teacher.config import TeacherTrainConfig

    d = TeacherTrainConfig()  # help shows the real defaults
    p = subparsers.add_parser(
        "train-teacher",
        help="train the small CLIP teacher on a ShapeWorld-OV web corpus",
        description=(
            "Train a small CLIP (open_clip config 'vild-shapeworld-clip') contrastively on "
            "WORLD_DIR/web/train.npz + train_captions.json and write it to --out as an open_clip "
            "folder (open_clip_config.json + open_clip_model.safetensors), loadable with "
            "Teacher.load(DIR) or open_clip.create_model_and_transforms('local-dir:DIR'). "
            "The folder appears only once training has finished."
        ),
    )
    p.add_argument("world", metavar="WORLD_DIR", help="a world written by `vild make-world`")
    p.add_argument("--out", required=True, metavar="TEACHER_DIR", help="output teacher folder")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, default=None, help=f"passes over the corpus (default: {d.epochs:g})")
    length.add_argument("--steps", type=int, default=None, help="optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=None, help=f"pairs per step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, default=None, help=f"peak AdamW learning rate (default: {d.lr:g})")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="caption-word pretraining steps of the image tower before contrastive training "
                        f"(see vild.teacher.pretrain; 0 turns it off; default: {d.pretrain_steps})")
    p.add_argument("--word-loss-weight", type=float, default=None,
                   help="weight of the caption-word loss kept on the image tower during contrastive "
                        f"training (0 turns it off; default: {d.word_loss_weight:g})")
    p.add_argument("--lock-image-trunk", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the pretrained image trunk frozen during contrastive training (LiT)")
    p.add_argument("--seed", type=int, default=None, help=f"random seed (default: {d.seed})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own setting)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help=f"autocast precision of the forward pass (default: {d.precision}; bf16 is slower "
                        "for this small CNN on CPU)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--workers", type=int, choices=(0, 1), default=None,
                   help="1: draw the next batches in a worker process while the model runs "
                        "(default: 0 on a machine of <= 2 cores, else 1); the teacher is the same")
    p.add_argument("--overwrite", action="store_true", help="replace an existing teacher folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import os
    import sys
    from pathlib import Path

    if "torch" not in sys.modules:
        # On shared or oversubscribed cores, spin-waiting OpenMP threads make CPU training
        # several times slower; sleeping waits cost little when the cores are free.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from vild.errors import VildError
    from vild.teacher.config import TeacherTrainConfig
    from vild.teacher.train import train_teacher

    out = Path(args.out).expanduser()
    if out.exists() and not args.overwrite:
        raise VildError(f"--out {out} already exists (pass --overwrite to replace it)")
    overrides = {
        "epochs": args.epochs, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "seed": args.seed, "threads": args.threads, "precision": args.precision,
        "pretrain_steps": args.pretrain_steps, "lock_image_trunk": args.lock_image_trunk,
        "word_loss_weight": args.word_loss_weight,
    }
    config = dataclasses.replace(TeacherTrainConfig(), **{k: v for k, v in overrides.items() if v is not None})
    train_teacher(args.world, out, config, device=args.device, progress=not args.quiet,
                  log=None if args.quiet else print, workers=args.workers)
    return 0
