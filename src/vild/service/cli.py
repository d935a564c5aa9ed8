"""`vild serve`: the HTTP API and the page, under uvicorn."""

from __future__ import annotations

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as MALLOC_ARENA_MAX=2 would): with one arena per thread, the
    model, decode and event-loop threads fragment memory and the server's RSS creeps up with
    every request (measured by benchmarks/serve_load.py). No-op off glibc or when the
    environment already sets MALLOC_ARENA_MAX."""
    import ctypes
    import ctypes.util
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_ARENA_MAX = -8
        return bool(libc.mallopt(M_ARENA_MAX, int(arenas)))
    except (OSError, AttributeError):
        return False


def register(subparsers) -> None:
    from vild.service.config import ServiceConfig

    d = ServiceConfig()
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP (JSON API + a page at /)",
        description="Starts the HTTP service: POST /v1/detect, POST /v1/images, "
        "POST /v1/images/{id}/query, GET /v1/models, GET /healthz, the OpenAPI schema at "
        "/openapi.json (docs at /docs) and the page at /. Binds to 127.0.0.1 unless told otherwise.",
    )
    p.add_argument("--model", help="model folder or name (default: the bundled ShapeWorld model)")
    p.add_argument("--method", help="default scoring method (default: the model's own heads)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the model (default: 1)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="bf16: the network under autocast (scores and post-processing in fp32)")
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_bytes / 2**20,
                   help="largest image file accepted (MiB)")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest width x height accepted")
    p.add_argument("--max-vocabulary", type=int, default=d.max_vocabulary, help="most names in one vocabulary")
    p.add_argument("--max-labels", type=int, default=d.max_labels,
                   help="most labels (names x attributes) in one request")
    p.add_argument("--max-name-length", type=int, default=d.max_name_length, help="longest name (characters)")
    p.add_argument("--timeout", type=float, default=d.request_timeout_s, help="request time limit (seconds)")
    p.add_argument("--max-pending", type=int, default=d.max_pending, help="requests waiting for the model before 503")
    p.add_argument("--cache-size", type=int, default=d.cache_size,
                   help="cached image embeddings for /v1/images/{id}/query (LRU)")
    p.add_argument("--cache-mb", type=float, default=d.cache_bytes / 2**20, help="and at most this many MiB of them")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    import torch

    from vild.errors import VildError
    from vild.service.config import ServiceConfig

    try:
        import uvicorn

        from vild.service.app import create_app
    except ImportError as e:
        raise VildError(f"vild serve needs the 'serve' extras ({e.name} is missing): pip install 'vild[serve]'") from None
    from vild.inference import Detector

    if args.threads:
        torch.set_num_threads(args.threads)
    limit_malloc_arenas()
    try:
        config = ServiceConfig(
            max_upload_bytes=int(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
            max_vocabulary=args.max_vocabulary, max_labels=args.max_labels, max_name_length=args.max_name_length,
            request_timeout_s=args.timeout, max_pending=args.max_pending,
            cache_size=args.cache_size, cache_bytes=int(args.cache_mb * 2**20),
        )
    except ValueError as e:
        raise VildError(str(e)) from None
    if args.host not in LOOPBACK:
        print(f"vild serve: warning: binding to {args.host}: other machines can reach this server "
              "(it has no authentication)", file=sys.stderr)
    detector = Detector.from_pretrained(args.model, device="cpu", method=args.method, precision=args.precision)
    app = create_app(detector, config, threads=args.threads)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"vild serve: {detector.info().get('name', 'model')} on http://{shown}:{args.port}/ "
          f"(API docs at /docs)", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                timeout_keep_alive=5, server_header=False)
    return 0
