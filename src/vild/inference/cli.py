"""`vild detect`: open-vocabulary detection on image files, folders or the bundled examples."""

from __future__ import annotations

import argparse
import os

DEFAULT_OUT = "detections"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "detect",
        help="detect any vocabulary in images: annotated images + a COCO results json",
        description=(
            "Detect objects of a free vocabulary in images (files or folders; with none, the "
            "bundled model's example images). Writes one annotated PNG per image (masks, boxes, "
            "labels, scores) and results.json (COCO results, one file for the run) plus run.json "
            "(images, categories, model) to --out, and prints a summary. A bad image is reported "
            "on one line and the others are still processed; the exit code is 1 if anything "
            "failed."
        ),
    )
    p.add_argument("images", nargs="*", metavar="IMAGES_OR_DIRS",
                   help="image files and/or folders (searched recursively for images)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="registered model name, model folder or hf-hub:ORG/REPO "
                        "(default: the bundled shapeworld-vild-ensemble; see --list-models)")
    p.add_argument("--onnx", default=None, metavar="FILE",
                   help="run an exported model (`vild export --format onnx`) with onnxruntime instead of "
                        "--model; its vocabulary is still free")
    p.add_argument("--weights", default=None, metavar="DIR|hf-hub:ORG/REPO",
                   help="weights for a registered model that ships without them (vild-r50-vitb32, ...)")
    p.add_argument("--teacher", default=None, metavar="PATH_OR_NAME",
                   help="override the teacher the model folder names (folder, hf-hub:ORG/REPO, ARCH:TAG)")
    vocab = p.add_mutually_exclusive_group()
    vocab.add_argument("--vocab", metavar="NAMES",
                       help="comma-separated names, '|' separates synonyms: 'circle,star|pentagram'")
    vocab.add_argument("--vocab-file", metavar="FILE",
                       help="one category per line, synonyms separated by '|', '#' comments")
    vocab.add_argument("--vocabulary", metavar="NAME",
                       help="a named vocabulary: shapeworld, shapeworld-alt, coco, voc, or "
                            "lvis:FILE / objects365:FILE / coco:FILE / voc:FILE (an annotation json)")
    p.add_argument("--exemplar", action="append", default=[], metavar="NAME=PATH[:x0,y0,x1,y1]",
                   help="find more of this: the object in PATH (the whole image, or the box in pixels) "
                        "is a label NAME beside the text names (--vocab '' for the exemplars alone); "
                        "repeat it: exemplars of one NAME are averaged, and a NAME that is also a text "
                        "name is averaged with it")
    p.add_argument("--attributes", metavar="WORDS",
                   help="comma-separated attributes: every (name, attribute) pair becomes a label "
                        "'attribute name', scored Pr(name|region) x Pr(attribute|region)")
    p.add_argument("--method", default=None,
                   choices=("vild-text", "vild-image", "vild", "vild-ensemble", "clip", "vild-text+clip"),
                   help="scoring method (default: the model's own); clip and vild-text+clip run "
                        "the teacher on crops of every region: slow")
    p.add_argument("--threshold", type=float, default=0.3, help="keep detections scoring above this (0..1)")
    p.add_argument("--max-detections", type=int, default=100, help="per image, after NMS")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder (default: ./{DEFAULT_OUT})")
    p.add_argument("--no-draw", action="store_true", help="write only the json files")
    p.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    p.add_argument("--device", default=None,
                   help="torch device (cpu, cuda, cuda:1, ...; default cpu); with --onnx: cpu, cuda or "
                        "auto (default: CUDA when onnxruntime has it)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: the network under autocast (scores and post-processing in fp32)")
    p.add_argument("--threads", type=int, help="torch CPU threads (use 1 on a shared machine)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="refuse images with more pixels than this (default 64,000,000 or $VILD_MAX_PIXELS)")
    p.add_argument("--max-mask-mb", type=float, default=None,
                   help="masks come at image size: fewer detections are kept on an image whose masks "
                        "would take more than this (MiB; default 512)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--list-models", action="store_true", help="list the registered models and exit")
    p.set_defaults(func=run)


def _list_models() -> int:
    from vild.inference.registry import list_models

    for row in list_models():
        mark = "*" if row["default"] else " "
        state = "available" if row["available"] else "not available"
        print(f"{mark} {row['name']:<26} {state:<14} {row['description']}")
        if not row["available"]:
            print(f"  {'':<26} {'':<14} ({row['how']})")
    return 0


def _read_vocabulary(args):
    """-> (entries or None for the model's default, category ids or None)."""
    from vild.errors import VildError
    from vild.inference.vocabularies import resolve_vocabulary
    from vild.text.vocab import parse_vocab_string, read_vocab_file

    if args.vocab is not None and not args.vocab.strip() and args.exemplar:
        return [], None  # the exemplars alone
    if args.vocab is not None:
        try:
            return parse_vocab_string(args.vocab), None
        except VildError as e:
            raise VildError(f"--vocab: {e}") from None
    if args.vocab_file is not None:
        return read_vocab_file(args.vocab_file), None
    if args.vocabulary is not None:
        named = resolve_vocabulary(args.vocabulary)
        return named.entries, named.category_ids
    return None, None


def _load_onnx(args):
    """`OnnxDetector` for --onnx, after refusing the flags an exported graph cannot honour."""
    from vild.errors import VildError
    from vild.inference.onnx import OnnxDetector

    for flag, given in (("--model", args.model), ("--weights", args.weights),
                        ("--attributes", args.attributes), ("--precision bf16", args.precision != "fp32")):
        if given:
            raise VildError(f"--onnx runs an exported graph: {flag} does not apply to it")
    det = OnnxDetector.load(args.onnx, teacher=args.teacher, device=args.device or "auto", threads=args.threads)
    if args.method not in (None, det.method):
        raise VildError(f"--method {args.method}: {args.onnx} was exported with method {det.method} "
                        "(export again with --method to change it)")
    return det


def _prepare_out(out):
    """The output folder, created now; one clear line when it cannot be."""
    from vild.errors import VildError

    if out.exists() and not out.is_dir():
        raise VildError(f"--out {out}: exists and is not a folder (give a folder for the results)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise VildError(f"--out {out}: cannot create the folder ({e.strerror or e})") from None
    if not os.access(out, os.W_OK):
        raise VildError(f"--out {out}: the folder is not writable")
    return out


def _unique_name(stem: str, used: set[str]) -> str:
    name, k = f"{stem}.png", 2
    while name in used:
        name, k = f"{stem}-{k}.png", k + 1
    used.add(name)
    return name


def run(args: argparse.Namespace) -> int:
    import os
    import sys
    import time
    from collections import Counter
    from pathlib import Path

    if args.list_models:
        return _list_models()

    import torch

    from vild.errors import VildError
    from vild.inference.detector import Detector
    from vild.inference.draw import save_annotated
    from vild.data.images import expand_inputs, load_image
    from vild.model.methods import CROP_METHODS
    from vild.inference.convert import detections_to_coco
    from vild.io import atomic_write_text, save_json
    from vild.text.vocab import parse_vocab_string

    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0.0 <= args.threshold <= 1.0:
        raise VildError(f"--threshold must be in 0..1, got {args.threshold}")
    if args.max_detections < 0:
        raise VildError("--max-detections must be >= 0")
    if args.batch_size < 1:
        raise VildError("--batch-size must be >= 1")
    if args.max_mask_mb is not None and not args.max_mask_mb > 0:
        raise VildError(f"--max-mask-mb must be positive, got {args.max_mask_mb}")
    out = _prepare_out(Path(args.out))  # before the model loads: a bad --out fails in a second
    entries, category_ids = _read_vocabulary(args)
    exemplars, exemplar_record = None, []
    if args.exemplar:  # read and checked before the model loads: a bad one fails in a second
        from vild.inference.exemplars import load_exemplars, parse_exemplar_arg

        parsed = [parse_exemplar_arg(a) for a in args.exemplar]
        exemplars = load_exemplars(parsed, max_pixels=args.max_pixels)
        exemplar_record = [{"name": p.name, "image": str(p.image), "box": list(e.box)}
                           for p, e in zip(parsed, exemplars)]
    attributes = None
    if args.attributes is not None:
        try:
            attributes = parse_vocab_string(args.attributes)
        except VildError as e:
            raise VildError(f"--attributes: {e}") from None

    if args.onnx:
        det = _load_onnx(args)
    else:
        det = Detector.from_pretrained(args.model, device=args.device or "cpu", method=args.method,
                                       teacher=args.teacher, weights=args.weights, precision=args.precision)
    if args.images:
        items = expand_inputs(args.images)
    else:
        if not det.examples:
            raise VildError("no images given (and this model has no bundled examples): "
                            "pass image files or folders")
        items = [(str(p), p) for p in det.examples]
        print(f"no images given: running on the {len(items)} example images of {det.name}", file=sys.stderr)

    vocab = det.encode_vocabulary(entries, exemplars=exemplars)
    if category_ids is None and entries is None:
        category_ids = det.default_category_ids
    if exemplars and category_ids:
        from vild.inference.exemplars import extend_ids

        category_ids = extend_ids(category_ids, len(vocab))
    if attributes is not None:
        det.check_labels(len(vocab.names), len(attributes))
    if args.max_mask_mb is not None:
        det.max_mask_bytes = int(args.max_mask_mb * 2**20)
    attrs = det.encode_vocabulary(attributes, what="attributes") if attributes is not None else None
    if attrs is not None:
        class_names = [f"{a} {v}" for v in vocab.names for a in attrs.names]
        category_ids = list(range(1, len(class_names) + 1))
    else:
        class_names = list(vocab.names)
        category_ids = list(category_ids) if category_ids else list(range(1, len(class_names) + 1))
    method = args.method or det.method
    if method in CROP_METHODS:
        print(f"note: --method {method} runs the teacher on 2 crops of up to {det.num_crop_regions} "
              "regions per image: expect it to be much slower than the ViLD heads", file=sys.stderr)

    debug = bool(os.environ.get("VILD_DEBUG"))
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), unit="img", desc="detect", file=sys.stderr,
               disable=True if args.no_progress or len(items) < 2 else None, dynamic_ncols=True)

    def fail(record: dict, message: str) -> None:
        record["error"] = message
        bar.write(f"vild detect: error: {message}", file=sys.stderr)

    records = [{"id": i + 1, "path": name} for i, (name, _) in enumerate(items)]
    results: list[dict] = []
    counts: Counter = Counter()
    used: set[str] = set()
    started = time.perf_counter()
    pending: list[tuple[int, torch.Tensor, Path]] = []

    def flush() -> None:
        if not pending:
            return
        try:
            dets = det.detect_tensors([t for _, t, _ in pending], vocab, attributes=attrs,
                                      threshold=args.threshold, max_detections=args.max_detections,
                                      method=args.method)
        except Exception as e:  # noqa: BLE001 - one failed batch must not stop the run
            if debug:
                raise
            msg = str(e) if isinstance(e, VildError) else f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
            for index, _, _ in pending:
                fail(records[index], f"{records[index]['path']}: detection failed ({msg})")
            bar.update(len(pending))
            pending.clear()
            return
        for (index, tensor, path), d in zip(pending, dets):
            rec = records[index]
            rec["height"], rec["width"] = d.image_size
            rec["detections"] = len(d)
            results.extend(detections_to_coco(d, rec["id"], category_ids, with_names=True))
            counts.update(d.label_names or [])
            if not args.no_draw:
                try:
                    name = _unique_name(Path(rec["path"]).stem or f"image-{rec['id']}", used)
                    save_annotated(out / name, tensor, d)
                    rec["file_name"] = name
                except Exception as e:  # noqa: BLE001 - a drawing failure is this image's failure
                    if debug:
                        raise
                    fail(rec, f"{rec['path']}: could not write the annotated image ({e})")
        bar.update(len(pending))
        pending.clear()

    for index, (name, path) in enumerate(items):
        try:
            if path.is_dir():
                raise VildError(f"{name}: no image files in this folder")
            tensor = load_image(path, max_pixels=args.max_pixels)
        except VildError as e:
            fail(records[index], str(e))
            bar.update(1)
            continue
        pending.append((index, tensor, path))
        if len(pending) >= args.batch_size:
            flush()
    flush()
    bar.close()
    elapsed = time.perf_counter() - started

    save_json(out / "run.json", {
        "model": det.info(),
        "method": method,
        "threshold": args.threshold,
        "max_detections": args.max_detections,
        "categories": [{"id": int(c), "name": n} for c, n in zip(category_ids, class_names)],
        **({"exemplars": exemplar_record} if exemplar_record else {}),
        "images": records,
    })
    import json

    atomic_write_text(out / "results.json", json.dumps(results, separators=(",", ":")) + "\n")

    failed = [r for r in records if "error" in r]
    ok = len(records) - len(failed)
    top = ", ".join(f"{n} {c}" for n, c in counts.most_common(8))
    more = f", ... ({len(counts) - 8} more labels)" if len(counts) > 8 else ""
    per_image = f", {1000 * elapsed / ok:.0f} ms/image" if ok else ""
    print(f"{len(records)} image{'s' if len(records) != 1 else ''}: {ok} ok, {len(failed)} failed; "
          f"{len(results)} detections above {args.threshold:g} ({method}{per_image})")
    if top:
        print(f"  {top}{more}")
    drawn = "" if args.no_draw else f"{sum('file_name' in r for r in records)} annotated images, "
    print(f"  wrote {out}/: {drawn}results.json (COCO results), run.json")
    return 1 if failed else 0
