"""`vild build-classifier`: text embeddings of a vocabulary, saved as safetensors."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "build-classifier",
        help="encode a vocabulary into a frozen text classifier (.safetensors)",
        description=(
            "Encode every category name with ViLD's prompt templates through the teacher's "
            "text tower (prompt embeddings L2-normalised, averaged, normalised; synonyms "
            "averaged the same way) and save the [C, D] matrix with the names. Embeddings are "
            "cached per name, so a vocabulary that shares names with an earlier one only "
            "encodes the new names."
        ),
    )
    p.add_argument("--teacher", required=True, metavar="PATH_OR_NAME",
                   help="teacher folder, 'hf-hub:org/repo' or an open_clip 'ARCH:PRETRAINED' name")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vocab", metavar="NAMES",
                     help="comma-separated names; '|' separates synonyms: 'circle,star|pentagram'")
    src.add_argument("--vocab-file", metavar="FILE",
                     help="one category per line, synonyms separated by '|', '#' comments")
    src.add_argument("--world", metavar="DIR",
                     help="a ShapeWorld-OV world (reads categories and synonyms of DIR/world.json)")
    src.add_argument("--lvis", metavar="JSON",
                     help="an LVIS/COCO-format annotation file (categories and synonyms)")
    p.add_argument("--templates", choices=("vild", "single"), default="vild",
                   help="ViLD's 63 templates (default) or the single 'This is a photo of {article} {}.'")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="embedding cache (default $VILD_CACHE_DIR/text or ~/.cache/vild/text)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--batch-size", type=int, default=1024, help="prompts per forward pass")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32 is exact (default); bf16 is faster on bf16 hardware, not exact")
    p.add_argument("--device", default=None, help="torch device for the teacher (default: as loaded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="output file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    from vild.errors import VildError
    from vild.text.classifier import build_text_classifier
    from vild.text.vocab import (
        parse_vocab_string,
        read_vocab_file,
        vocabulary_from_lvis,
        vocabulary_from_world,
    )

    if args.batch_size < 1:
        raise VildError("--batch-size must be >= 1")
    if args.vocab is not None:
        vocabulary = parse_vocab_string(args.vocab)
    elif args.vocab_file is not None:
        vocabulary = read_vocab_file(args.vocab_file)
    elif args.world is not None:
        vocabulary = vocabulary_from_world(args.world)
    else:
        vocabulary = vocabulary_from_lvis(args.lvis)

    try:
        from vild.teacher import Teacher
    except ImportError:
        from vild.teacher.teacher import Teacher

    load = getattr(Teacher, "load", None)
    if load is None:
        raise VildError("this build of vild cannot load teachers yet (vild.teacher.Teacher.load is missing)")
    teacher = load(args.teacher, device=args.device) if args.device else load(args.teacher)

    start = time.perf_counter()
    clf = build_text_classifier(
        teacher, vocabulary, templates=args.templates, use_cache=not args.no_cache,
        cache_dir=args.cache_dir, batch_size=args.batch_size,
        progress=False if args.no_progress else None, precision=args.precision,
    )
    clf.save(args.out)
    print(
        f"wrote {args.out}: {len(clf)} categories x {clf.dim} dims "
        f"({args.templates} templates, {time.perf_counter() - start:.1f} s)"
    )
    return 0
