"""The HTTP service: `create_app(detector, config)` -> a FastAPI app.

Model calls run one at a time on a single worker thread (`ModelRunner`), never on the event
loop; every request has a deadline; every refusal is a 4xx/5xx with `{"error", "detail"}` and
never a stack trace.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from vild.errors import VildError
from vild.service import requests, schemas
from vild.service.cache import RegionCache
from vild.service.config import ServiceConfig
from vild.service.errors import ServiceError
from vild.service.exemplars import CachedImage, exemplar_kwargs, resolve_exemplars
from vild.service.guard import GuardMiddleware
from vild.service.limits import check_labels, clean_names, vild_error_answer
from vild.service.runner import FAST, ModelRunner
from vild.service.serialize import detections_json

log = logging.getLogger("vild.service")

STATIC_DIR = Path(__file__).parent / "static"
EXAMPLES_DIR = Path(__file__).parent.parent / "assets" / "examples"
EXAMPLE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
IMAGE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def bundled_examples(folder: Path = EXAMPLES_DIR) -> dict[str, Path]:
    """Example images shipped in the package: file name -> path (clients only ever send a
    name from this listing, never a path)."""
    if not folder.is_dir():
        return {}
    return {
        p.name: p for p in sorted(folder.iterdir())
        if p.is_file() and p.suffix.lower() in EXAMPLE_SUFFIXES
    }


def create_app(
    detector, config: ServiceConfig | None = None, *, threads: int | None = None,
    examples_dir: Path | None = None,
) -> FastAPI:
    """A FastAPI app serving `detector` (a `vild.inference.Detector`, or anything with the same
    `detect`/`embed`/`query`/`info`/`methods`/`default_vocabulary`)."""
    config = config or ServiceConfig()
    runner = ModelRunner(config.max_pending, threads=threads)
    cache = RegionCache(config.cache_size, config.cache_bytes)
    decode_pool = concurrent.futures.ThreadPoolExecutor(config.decode_workers, thread_name_prefix="vild-decode")
    info = dict(detector.info())
    model_name = str(info.get("name", "vild"))
    methods = tuple(detector.methods)
    default_method = info.get("method") or (methods[0] if methods else None)

    @asynccontextmanager
    async def lifespan(app):
        yield
        runner.shutdown()
        decode_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="vild",
        description="Open-vocabulary detection (ViLD). Upload an image, name what to find.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.runner = runner
    app.state.cache = cache
    app.state.config = config
    app.state.detector = detector

    # ---- errors: one JSON shape, never a traceback ----
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)

    @app.exception_handler(VildError)
    async def _vild_error(request: Request, exc: VildError):
        status, code, line = vild_error_answer(exc)
        return JSONResponse({"error": code, "detail": line}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": "invalid_request", "detail": requests.validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):  # FastAPI's own body parsing
            code, exc = "bad_json", StarletteHTTPException(400, "the body is not valid JSON (or is nested too deeply)")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "detail": "internal server error"}, status_code=500)

    # ---- helpers ----
    async def within_deadline(coro):
        try:
            return await asyncio.wait_for(coro, timeout=config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ServiceError(
                408, "timeout", f"the request took longer than the limit of {config.request_timeout_s:g} s"
            ) from None

    async def read_request(request: Request, model: type) -> tuple[Any, torch.Tensor]:
        return await requests.read_request(request, model, config=config, decode_pool=decode_pool)

    def check_query(body: schemas.QueryRequest) -> tuple[list[str] | None, list[str] | None, int]:
        """(vocabulary, attributes, max_detections) of a request, within the limits."""
        limit = body.max_detections
        if "max_detections" not in body.model_fields_set:
            limit = min(limit, config.max_detections)  # the default never exceeds the limit
        elif limit > config.max_detections:
            raise ServiceError(
                422, "too_many_detections",
                f"max_detections is {limit}; the limit is {config.max_detections}",
            )
        given = body.vocabulary if isinstance(body.vocabulary, list) else [body.vocabulary or ""]
        if body.exemplars and body.vocabulary is not None and not "".join(given).strip(" ,"):
            vocabulary = []  # an empty vocabulary beside exemplars: the exemplars alone
        else:
            vocabulary = clean_names(body.vocabulary, "vocabulary", config)
        attributes = clean_names(body.attributes, "attributes", config)
        names = vocabulary if vocabulary is not None else list(detector.default_vocabulary)
        check_labels(names + [e.name for e in body.exemplars or []], attributes, 0, config)
        return vocabulary, attributes, limit

    async def exemplars_of(body: schemas.QueryRequest):
        async def decode(data: bytes):
            return await requests.decode_upload(data, config=config, decode_pool=decode_pool)

        return await resolve_exemplars(body.exemplars, cache=cache, config=config, decode=decode)

    def check_method(method: str | None) -> None:
        if method is not None and method not in methods:
            raise ServiceError(422, "bad_method", f"method must be one of {list(methods)}")

    def mask_cap(max_dets: int, h: int, w: int, notes: list[str]) -> int:
        """Masks come back at image size: lower max_detections to fit max_mask_bytes."""
        fit = max(1, config.max_mask_bytes // max(1, h * w * 4))
        if max_dets > fit:
            notes.append(f"max_detections lowered from {max_dets} to {fit}: masks of a {w}x{h} image "
                         f"take {h * w * 4 / 2**20:.1f} MiB each")
            return fit
        return max_dets

    def model_call(fn, args, kwargs, *, masks: bool, vocabulary, attributes, method, notes):
        """On the model thread: the call, then the JSON body (RLE encoding is CPU work that
        belongs off the event loop too)."""
        t0 = time.perf_counter()
        with torch.no_grad():
            dets = fn(*args, **kwargs)
        if isinstance(dets, list):
            dets = dets[0]
        t1 = time.perf_counter()
        vocab = list(getattr(dets, "class_names", None) or vocabulary or detector.default_vocabulary)
        out = detections_json(dets, vocab, with_masks=masks)
        t2 = time.perf_counter()
        body = {"model": model_name, "method": method, "vocabulary": vocab, "attributes": attributes, **out}
        if notes:
            body["notes"] = notes
        return body, {"model": (t1 - t0) * 1000, "serialize": (t2 - t1) * 1000}

    def respond(body: dict, timing: dict) -> JSONResponse:
        body["timing_ms"] = {k: round(v, 2) for k, v in timing.items()}
        return JSONResponse(body)

    def _timed(fn, *args, **kwargs):
        t = time.perf_counter()
        with torch.no_grad():
            out = fn(*args, **kwargs)
        return out, (time.perf_counter() - t) * 1000

    err = {"model": schemas.ErrorResponse}
    common_errors = {400: err, 408: err, 413: err, 415: err, 422: err, 503: err}

    # ---- endpoints ----
    @app.post(
        "/v1/detect", response_model=schemas.DetectResponse, responses=common_errors,
        summary="Detect a vocabulary in one image",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": schemas.DetectRequest.model_json_schema()},
            "multipart/form-data": {"schema": schemas.form_schema(True, True)},
        }}},
    )
    async def detect(request: Request):
        async def work():
            t0 = time.perf_counter()
            body, image = await read_request(request, schemas.DetectRequest)
            vocabulary, attributes, max_dets = check_query(body)
            check_method(body.method)
            exemplars = await exemplars_of(body)
            notes: list[str] = []
            max_dets = mask_cap(max_dets, int(image.shape[1]), int(image.shape[2]), notes)
            t1 = time.perf_counter()
            out, timing = await runner.run(
                model_call, detector.detect, ([image], vocabulary),
                dict(attributes=attributes, threshold=body.threshold, max_detections=max_dets,
                     method=body.method, **exemplar_kwargs(exemplars)),
                masks=body.masks, vocabulary=vocabulary, attributes=attributes,
                method=body.method or default_method, notes=notes,
            )
            timing = {"decode": (t1 - t0) * 1000, **timing, "total": (time.perf_counter() - t0) * 1000}
            return respond(out, timing)

        return await within_deadline(work())

    @app.post(
        "/v1/images", response_model=schemas.ImageResponse, responses=common_errors, status_code=201,
        summary="Run the detector once and cache the image's region embeddings",
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": schemas.ImageRequest.model_json_schema()},
            "multipart/form-data": {"schema": schemas.form_schema(True, False)},
        }}},
    )
    async def add_image(request: Request):
        async def work():
            t0 = time.perf_counter()
            body, image = await read_request(request, schemas.ImageRequest)
            check_method(body.method)
            t1 = time.perf_counter()
            kwargs = {"method": body.method} if body.method is not None else {}
            regions, model_ms = await runner.run(_timed, detector.embed, image, **kwargs)
            h, w = int(image.shape[1]), int(image.shape[2])
            # the pixels stay beside the regions: exemplars are cut from them (by image id)
            key = cache.put(CachedImage(regions, image), {"image_size": [h, w], "method": body.method or default_method})
            timing = {"decode": (t1 - t0) * 1000, "model": model_ms, "total": (time.perf_counter() - t0) * 1000}
            return JSONResponse(
                {"id": key, "image_size": [h, w], "timing_ms": {k: round(v, 2) for k, v in timing.items()}},
                status_code=201,
            )

        return await within_deadline(work())

    @app.post(
        "/v1/images/{image_id}/query", response_model=schemas.DetectResponse,
        responses={**common_errors, 404: err},
        summary="Score a (new) vocabulary against a cached image, without re-running the detector",
    )
    async def query_image(image_id: str, body: schemas.QueryRequest):
        async def work():
            t0 = time.perf_counter()
            cached, meta = _cached(image_id)
            regions = cached.regions
            vocabulary, attributes, max_dets = check_query(body)
            exemplars = await exemplars_of(body)
            notes: list[str] = []
            if body.masks:
                h, w = meta["image_size"]
                max_dets = mask_cap(max_dets, h, w, notes)
            else:
                regions = _without_region_masks(regions)  # nothing pasted at image size
            out, timing = await runner.run(
                model_call, detector.query, (regions, vocabulary),
                dict(attributes=attributes, threshold=body.threshold, max_detections=max_dets,
                     **exemplar_kwargs(exemplars)),
                masks=body.masks, vocabulary=vocabulary, attributes=attributes,
                method=meta.get("method"), notes=notes, _priority=FAST,
            )
            return respond(out, {**timing, "total": (time.perf_counter() - t0) * 1000})

        return await within_deadline(work())

    @app.delete("/v1/images/{image_id}", status_code=204, responses={404: err}, summary="Forget a cached image")
    async def delete_image(image_id: str):
        if not IMAGE_ID.match(image_id) or not cache.delete(image_id):
            raise ServiceError(404, "unknown_image", "no cached image has this id")
        return Response(status_code=204)

    def _cached(image_id: str):
        hit = cache.get(image_id) if IMAGE_ID.match(image_id) else None
        if hit is None:
            raise ServiceError(
                404, "unknown_image",
                "no cached image has this id (it may have left the cache); upload it again with POST /v1/images",
            )
        return hit

    @app.get("/v1/models", response_model=schemas.ModelsResponse, summary="The served model and the limits")
    async def models():
        entry = {**_jsonable(info), "methods": list(methods),
                 "default_vocabulary": list(detector.default_vocabulary)}
        limits = {**asdict(config), "max_body_bytes": config.max_body_bytes}
        return {"models": [entry], "limits": limits}

    @app.get("/healthz", summary="Liveness")
    async def healthz():
        return {"status": "ok", "pending": runner.pending, "cache": cache.stats()}

    if examples_dir is not None:
        examples = bundled_examples(examples_dir)
    elif getattr(detector, "examples", None):  # the registry's example images of this model
        examples = {Path(p).name: Path(p) for p in detector.examples
                    if Path(p).suffix.lower() in EXAMPLE_SUFFIXES and Path(p).is_file()}
    else:
        examples = bundled_examples(EXAMPLES_DIR)

    @app.get("/v1/examples", summary="Names of the bundled example images")
    async def list_examples():
        return {"examples": list(examples)}

    @app.get("/examples/{name}", include_in_schema=False)
    async def example(name: str):
        path = examples.get(name)
        if path is None:
            raise ServiceError(404, "not_found", "no example has this name")
        return FileResponse(path, media_type=EXAMPLE_SUFFIXES[path.suffix.lower()])

    # ---- the page ----
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"content-security-policy": PAGE_CSP,
                                                                 "cache-control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    return _wrap(app, config)


def _wrap(app: FastAPI, config: ServiceConfig) -> FastAPI:
    app.add_middleware(GuardMiddleware, max_body_bytes=config.max_body_bytes)
    return app


def _without_region_masks(regions):
    """Cached regions without their masks, so that a query asked without masks pastes none."""
    from dataclasses import fields, is_dataclass, replace

    if is_dataclass(regions) and any(f.name == "masks" for f in fields(regions)) and regions.masks is not None:
        return replace(regions, masks=None)
    return regions


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        if isinstance(value, dict):
            return {str(k): _jsonable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [_jsonable(v) for v in value]
        return str(value)


def _version() -> str:
    try:
        from vild import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "0"
