"""`vild distill-tower`: a distillation head on the teacher's own image tower."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "distill-tower",
        help="add a distillation head that reads the teacher's own image tower to a trained detector",
        description="Put a frozen copy of the teacher's image tower into a trained detector and "
        "train a distillation head on it, towards the region store's teacher embeddings (no "
        "labels). Mode ensemble keeps the detector's text head and ensembles it with the tower "
        "head (ViLD-ensemble); mode image scores with the tower head alone (ViLD-image); mode "
        "vild makes it ViLD's one head, which also takes the text loss on the base categories "
        "the annotations label (each stored proposal labelled by the box it overlaps). Boxes "
        "and masks stay the detector's. See docs/distillation.md sections 18-19.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, help="a trained model folder or registered name (e.g. a ViLD-text model)")
    p.add_argument("--teacher", help="the teacher (default: the one the model names); its image "
                   "tower must give a feature map: a timm CNN, a CLIP ResNet or a ViT")
    p.add_argument("--world", help="a ShapeWorld-OV world directory (its training images)")
    p.add_argument("--images", help="training images folder")
    p.add_argument("--annotations", help="annotation file listing the training images (labels are used "
                   "by mode vild alone)")
    p.add_argument("--region-store", required=True, help="teacher embeddings of the images' proposals (vild embed-regions)")
    p.add_argument("--mode", choices=["ensemble", "image", "vild"], default="ensemble")
    p.add_argument("--factors", type=float, nargs="+", help="image upsampling factors the tower reads "
                   "(default 1 1.5 2 3 4 6)")
    p.add_argument("--grid", type=int, help="each box's tower map is averaged to GRID x GRID per box scale "
                   "(default 4: the whole 4x4 map of the ShapeWorld tower; docs/distillation.md section 20)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--rarity", type=float, default=0.0, help="power of the label-free rarity weights of the "
                   "distillation loss (vild.regions.rarity; 0: uniform)")
    p.add_argument("--relational", type=float, default=0.0, help="weight of the relational distillation term "
                   "beside the L1 loss (vild.model.losses.relational_distillation_loss; 0: none)")
    p.add_argument("--output", choices=["unit", "mean"], default="unit", help="the head's embedding: unit "
                   "(L2-normalised, the paper's) or mean (unnormalised, trained with --loss l2: shorter where "
                   "the tower's features leave the teacher's embedding uncertain; modes image and ensemble)")
    p.add_argument("--loss", choices=["l1", "l2"], default="l1", help="the distillation loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, help="read at most this many training images")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from vild.errors import VildError
    from vild.teacher import Teacher
    from vild.training.cli import _init_folder, _init_teacher
    from vild.training.distributed import resolve_device
    from vild.training.tower_head import TowerHeadConfig, distill_tower
    from vild.training.vocabulary import split_source

    if args.threads:
        torch.set_num_threads(args.threads)
    images, annotations = split_source(args.world, args.images, args.annotations, world_split="train_base")
    folder = _init_folder(args.model)
    teacher = Teacher.load(args.teacher or _init_teacher(folder))
    extra = {"factors": tuple(args.factors)} if args.factors else {}
    if args.grid is not None:
        extra["grid"] = args.grid
    try:
        config = TowerHeadConfig(mode=args.mode, steps=args.steps, seed=args.seed, rarity=args.rarity,
                                 relational=args.relational, output=args.output, loss=args.loss, **extra)
    except ValueError as e:
        raise VildError(str(e)) from None
    device = resolve_device(args.device)
    out = distill_tower(folder, teacher, images, annotations, args.region_store, args.out, config,
                        max_images=args.max_images, device=device, progress=not args.no_progress)
    print(f"model written to {out}")
    return 0
