"""`vild eval`: LVIS / COCO evaluation of a trained model on any annotated split."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a model (LVIS APr/APc/APf, COCO AP, novel/base AP50, RPN recall)",
        description="Evaluates on the split's own vocabulary. A dataset whose categories differ "
        "from the model's is evaluated by swapping in its text embeddings (transfer, no "
        "fine-tuning); that needs --teacher.",
    )
    p.add_argument("--model", required=True, help="model folder (vild train)")
    p.add_argument("--world", help="a ShapeWorld-OV world (its val split)")
    p.add_argument("--images", help="images folder (with --dataset)")
    p.add_argument("--dataset", "--annotations", dest="annotations",
                   help="any LVIS/COCO-format json to evaluate on")
    p.add_argument("--method", default=None,
                   choices=("vild-text", "vild-image", "vild", "vild-ensemble", "clip", "vild-text+clip"),
                   help="scoring method (default: the model's own); clip and vild-text+clip run the "
                        "teacher on crops of every region (slow, need --teacher)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: the network under autocast (scores and post-processing in fp32)")
    p.add_argument("--teacher", help="teacher (needed for clip methods and new vocabularies)")
    p.add_argument("--max-images", type=int, help="evaluate the first N images only")
    p.add_argument("--rpn-recall", action="store_true", help="also RPN AR@100/300/1000 on novel categories")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps: where the model and "
                   "teacher run (the RPN recall stays on the CPU)")
    p.add_argument("--threads", type=int)
    p.add_argument("--results", help="write detections here (COCO results json)")
    p.add_argument("--out", help="write metrics here (json)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import torch

    from vild.device import check_device
    from vild.errors import VildError
    from vild.evaluation.run import evaluate_detector, evaluate_rpn_recall
    from vild.evaluation.summary import format_table
    from vild.io import save_json
    from vild.training.checkpoint import load_model
    from vild.training.vocabulary import split_source

    if args.threads:
        torch.set_num_threads(args.threads)
    device = check_device(args.device)
    images, annotations = split_source(
        args.world, args.images, args.annotations, world_split="val", flag="--dataset"
    )
    model = load_model(args.model)
    teacher = None
    if args.teacher:
        from vild.teacher import Teacher

        teacher = Teacher.load(args.teacher, device=device)
    from vild.model.methods import CROP_METHODS, resolve_method

    if args.method in CROP_METHODS and teacher is None:
        raise VildError(f"--method {args.method} classifies crops with the teacher: give --teacher")
    try:
        method = resolve_method(args.method, model.config.mode, with_teacher=teacher is not None)
    except ValueError as e:
        raise VildError(f"--method: {e}") from None
    vocab, text, base_mask, novel_ids = split_vocabulary(args.model, annotations, teacher)
    metrics = evaluate_detector(
        model.to(device), images, annotations, text, vocab["category_ids"], base_mask=base_mask,
        novel_category_ids=novel_ids, method=method, teacher=teacher, precision=args.precision,
        batch_size=args.batch_size, max_images=args.max_images, results_path=args.results,
        progress=not args.no_progress,
    )
    if args.rpn_recall:
        metrics["rpn_recall_novel"] = evaluate_rpn_recall(
            model.cpu(), images, annotations, category_ids=novel_ids, max_images=args.max_images,
            progress=not args.no_progress,
        )
    if args.out:
        save_json(args.out, metrics)
    print(format_table({"mask (LVIS)": metrics["lvis"]["segm"], "box (LVIS)": metrics["lvis"]["bbox"]},
                       ("APr", "APc", "APf", "AP")))
    coco = metrics["coco"]["segm"]
    print(f"COCO mask AP {coco['AP']:.1f}  AP50 novel {coco['AP50_novel']:.1f}  base {coco['AP50_base']:.1f}"
          f"  ({metrics['timing']['ms_per_image']:.0f} ms/image)")
    if "rpn_recall_novel" in metrics:
        print("RPN recall (novel):", json.dumps(metrics["rpn_recall_novel"]))
    return 0


def split_vocabulary(model_dir, annotations, teacher):
    """The split's categories with text embeddings: the model's saved ones when they match,
    else encoded by the teacher (transfer to another vocabulary)."""
    import torch

    from vild.errors import VildError
    from vild.training.checkpoint import load_vocabulary
    from vild.training.vocabulary import dataset_vocabulary, text_embeddings_for

    vocab = dataset_vocabulary(annotations)
    saved, saved_text = load_vocabulary(model_dir)
    if saved["names"] == vocab["names"] and saved["category_ids"] == vocab["category_ids"]:
        text = saved_text
    elif teacher is None:
        raise VildError(
            "this dataset's vocabulary differs from the model's: give --teacher to encode it"
        )
    else:
        if teacher.identity != saved.get("teacher", {}).get("identity", teacher.identity):
            raise VildError("--teacher is not the teacher this model was trained with")
        text = text_embeddings_for(teacher, vocab)
    trained = {n for n, b in zip(saved["names"], saved["base"]) if b}
    base_mask = torch.tensor([n in trained for n in vocab["names"]], dtype=torch.bool)
    novel_ids = [c for c, b in zip(vocab["category_ids"], vocab["base"]) if not b]
    return vocab, text, base_mask, novel_ids
