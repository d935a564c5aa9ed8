"""`vild embed-regions`: teacher embeddings of a base-trained RPN's proposals, stored once."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "embed-regions",
        help="precompute teacher embeddings of RPN proposals for ViLD-image distillation",
        description="Runs a trained model's RPN over the training images, embeds the 1x and 1.5x "
        "crops of the top proposals with the teacher, and stores them in resumable shards. "
        "Under torchrun (torchrun --nproc_per_node N -m vild embed-regions ...) the shards are "
        "dealt to the processes; the result is the same store.",
    )
    p.add_argument("--model", required=True, help="model folder whose (base-trained) RPN proposes")
    p.add_argument("--teacher", required=True, help="teacher folder, hf-hub:org/repo or ARCH:tag")
    p.add_argument("--world", help="a ShapeWorld-OV world (its train split)")
    p.add_argument("--images", help="images folder (with --annotations)")
    p.add_argument("--annotations", help="LVIS/COCO-format json listing the images")
    p.add_argument("--num-proposals", type=int, default=300, help="proposals kept per image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--threads", type=int)
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (this rank's GPU if any, else CPU)")
    p.add_argument("--workers", type=int,
                   help="loader processes that read the next images while the model runs (default: "
                   "0 on a machine of <= 2 cores, else one per spare core, at most 4 on CPU, 8 on GPU)")
    p.add_argument("--restart", action="store_true", help="discard an existing store instead of resuming")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="store folder")
    p.set_defaults(func=run)


def run(args) -> int:
    from vild.training.distributed import distributed_session, resolve_device

    device = resolve_device(args.device)
    with distributed_session(device) as info:
        return _run(args, device, info)


def _run(args, device, info) -> int:
    import torch

    from vild.data.detection import DetectionDataset
    from vild.data.loading import resolve_workers
    from vild.regions.embed import embed_regions
    from vild.teacher import Teacher
    from vild.training.checkpoint import MODEL_WEIGHTS, load_model
    from vild.training.vocabulary import split_source

    if args.threads:
        torch.set_num_threads(args.threads)
    images, annotations = split_source(args.world, args.images, args.annotations, world_split="train_base")
    model = load_model(args.model, device=str(device))
    teacher = Teacher.load(args.teacher, device=device)
    dataset = DetectionDataset(images, annotations, with_masks=False)
    from vild.regions.store import sha256_file

    store = embed_regions(
        dataset,
        model.propose,
        teacher,
        args.out,
        num_proposals=args.num_proposals,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        resume=not args.restart,
        progress=not args.no_progress,
        metadata={"rpn_model": sha256_file(f"{args.model}/{MODEL_WEIGHTS}")[:16]},
        device=None if device.type == "cpu" else device,
        num_workers=resolve_workers(args.workers, device),
    )
    if info.is_main:
        print(f"{len(store)} images embedded in {args.out}")
    return 0
