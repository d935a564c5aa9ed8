"""`vild export`: a model as one ONNX file whose vocabulary stays an input."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a model as an ONNX graph whose vocabulary stays an input",
        description=(
            "Write a model (registered name, model folder or hf-hub:ORG/REPO) as one ONNX file: "
            "inputs image [3, H, W] (any H, W), text_embeddings [C, D] (any C), base_mask [C] and "
            "score_threshold; the file carries the model's config, default vocabulary and teacher "
            "reference. Run it with `vild detect --onnx FILE`. The export is checked against "
            "PyTorch with onnxruntime on an image and vocabulary size the trace did not see."
        ),
    )
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default onnx)")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help="registered model name, model folder or hf-hub:ORG/REPO (default: the bundled model)")
    p.add_argument("--weights", default=None, metavar="DIR|hf-hub:ORG/REPO",
                   help="weights for a registered model that ships without them")
    p.add_argument("--teacher", default=None, metavar="PATH_OR_NAME",
                   help="teacher to record, overriding the one the model folder names")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--method", default=None, choices=("vild-text", "vild-image", "vild", "vild-ensemble"),
                   help="scoring method in the graph (default: the model's own)")
    p.add_argument("--max-detections", type=int, default=None,
                   help="the most detections per image the graph returns (default: the model config's)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    p.add_argument("--threads", type=int, help="torch CPU threads (use 1 on a shared machine)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from vild.errors import VildError
    from vild.export.onnx import export_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_detections is not None and args.max_detections < 1:
        raise VildError(f"--max-detections must be >= 1, got {args.max_detections}")
    started = time.perf_counter()
    path, exported, compared = export_model(
        args.model, args.out, weights=args.weights, teacher=args.teacher, method=args.method,
        max_detections=args.max_detections, opset=args.opset, check=not args.no_check)
    size = path.stat().st_size / 2**20
    vocab = len(exported.vocabulary["names"]) if exported.vocabulary else 0
    print(f"wrote {path} ({size:.1f} MiB, {time.perf_counter() - started:.0f} s): {exported.name}, method "
          f"{exported.method}, up to {exported.max_detections} detections, default vocabulary {vocab} names")
    if compared is not None:
        print(f"  checked: onnxruntime matches PyTorch on {compared} detections of a test image")
    print(f"  run it: vild detect --onnx {path} IMAGES --vocab 'a,b,c'")
    return 0
