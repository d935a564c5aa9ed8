"""`vild make-world`: generate the ShapeWorld-OV dataset (see docs/shapeworld.md)."""

from __future__ import annotations

import argparse
import re

from vild.errors import VildError

_DEFAULTS = {  # mirrors vild.data.world.WorldConfig (kept here so --help imports nothing heavy)
    "seed": 0, "num_train": 2000, "num_val": 500, "num_web": 1000, "num_web_val": 100,
    "image_size": "128", "web_size": 64, "min_objects": 1, "max_objects": 8, "min_object_size": 10.0,
    "categories": "default",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "make-world",
        help="generate ShapeWorld-OV, a synthetic open-vocabulary detection dataset + web corpus",
        description=(
            "Generate ShapeWorld-OV into OUT: train/ (LVIS v1 json, base-only and all labels), val/ "
            "(every category annotated), web/ (image-caption corpus for the CLIP teacher) and world.json. "
            "Deterministic: the same options give byte-identical files."
        ),
    )
    d = _DEFAULTS
    p.add_argument("out", metavar="OUT", help="output folder (must be empty or absent unless --overwrite)")
    p.add_argument("--seed", type=int, default=d["seed"], help="random seed (default: %(default)s)")
    p.add_argument("--num-train", type=int, default=d["num_train"], help="detection training images (default: %(default)s)")
    p.add_argument("--num-val", type=int, default=d["num_val"], help="detection validation images (default: %(default)s)")
    p.add_argument("--num-web", type=int, default=d["num_web"], help="web training images PER CATEGORY (default: %(default)s)")
    p.add_argument("--num-web-val", type=int, default=d["num_web_val"], help="held-out web images PER CATEGORY (default: %(default)s)")
    p.add_argument("--image-size", default=d["image_size"], metavar="S|MIN:MAX",
                   help="detection image side in px (64..512); MIN:MAX draws each image's height and width in range (default: %(default)s)")
    p.add_argument("--web-size", type=int, default=d["web_size"], help="side of the square web images in px (default: %(default)s)")
    p.add_argument("--min-objects", type=int, default=d["min_objects"], help="fewest objects per image (default: %(default)s)")
    p.add_argument("--max-objects", type=int, default=d["max_objects"], help="most objects per image (default: %(default)s)")
    p.add_argument("--min-object-size", type=float, default=d["min_object_size"], help="smallest object size in px (default: %(default)s)")
    p.add_argument("--categories", default=d["categories"], metavar="VARIANT|JSON",
                   help="category set: a built-in variant (default, alt) or a JSON file (see docs/shapeworld.md; default: %(default)s)")
    p.add_argument("--novel", default=None, metavar="NAMES|K",
                   help="novel (rare) categories: comma-separated names, or a count K drawn from --seed "
                        "(default: the variant's designed rare categories)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: CPU count, at most 8)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing world in OUT")
    p.add_argument("--quiet", action="store_true", help="no progress bars or summary")
    p.set_defaults(func=run)


def parse_image_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:[:x\-,]\s*(\d+)\s*)?", str(text))
    if not m:
        raise VildError(f"--image-size must be S or MIN:MAX in px, got {text!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    return lo, hi


def run(args: argparse.Namespace) -> int:
    import time

    from vild.data.world import WorldConfig, make_world

    config = WorldConfig(
        seed=args.seed, num_train=args.num_train, num_val=args.num_val, num_web=args.num_web,
        num_web_val=args.num_web_val, image_size=parse_image_size(args.image_size), web_size=args.web_size,
        min_objects=args.min_objects, max_objects=args.max_objects, min_object_size=args.min_object_size,
        categories=args.categories, novel=args.novel,
    )
    start = time.perf_counter()
    world = make_world(args.out, config, overwrite=args.overwrite, workers=args.workers, progress=not args.quiet)
    if not args.quiet:
        splits = world.info["splits"]
        cats = world.categories
        groups = {g: [c["name"] for c in cats if c["frequency"] == g] for g in "fcr"}
        print(f"wrote ShapeWorld-OV ({world.info['variant']}, seed {config.seed}) to {world.root} "
              f"in {time.perf_counter() - start:.1f} s")
        print(f"  categories: {len(cats)} (frequent {len(groups['f'])}, common {len(groups['c'])}, "
              f"rare/novel {len(groups['r'])}: {', '.join(groups['r'])})")
        for split in ("train", "val"):
            s = splits[split]
            per = ", ".join(f"{g} {n}" for g, n in s["instances_per_group"].items())
            print(f"  {split}: {s['num_images']} images, {s['num_instances']} instances ({per})")
        print(f"  web: {splits['web']['num_train']} train / {splits['web']['num_val']} val images")
    return 0
