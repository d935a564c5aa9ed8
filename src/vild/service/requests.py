"""Reading a request: a JSON body (base64 image) or a multipart form (file upload) -> the
pydantic model and the decoded image; validation errors as one line."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import torch
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vild.service.config import ServiceConfig
from vild.service.errors import ServiceError
from vild.service.exemplars import form_exemplars
from vild.service.guard import BodyTooLarge
from vild.service.images import decode_base64, decode_image
from vild.service.limits import parse_json


async def read_request(request: Request, model: type, *, config: ServiceConfig,
                       decode_pool) -> tuple[Any, torch.Tensor]:
    """Parse JSON (base64 image) or multipart (file upload) into `model` and the image (decoded
    in `decode_pool`, off the event loop)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=1, max_fields=16)
        except StarletteHTTPException as e:
            raise ServiceError(e.status_code if e.status_code < 500 else 400, "bad_form", str(e.detail)) from None
        except BodyTooLarge:
            raise
        except Exception:
            raise ServiceError(400, "bad_form", "could not parse the multipart form") from None
        try:
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ServiceError(422, "bad_image", "the form needs a file field named 'image'")
            data = await upload.read(config.max_upload_bytes + 1)
            fields = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        finally:
            await form.close()
        fields["image"] = "-"
        try:
            body = model.model_validate(_form_values(fields))
        except ValidationError as e:
            raise ServiceError(422, "invalid_request", validation_message(e)) from None
    elif ctype == "application/json":
        payload = parse_json(await request.body())
        if not isinstance(payload, dict):
            raise ServiceError(422, "invalid_request", "the JSON body must be an object")
        try:
            body = model.model_validate(payload)
        except ValidationError as e:
            raise ServiceError(422, "invalid_request", validation_message(e)) from None
        data = decode_base64(body.image, config.max_upload_bytes)
    else:
        raise ServiceError(
            415, "unsupported_media_type",
            "send multipart/form-data with a file field 'image', or application/json with a base64 'image'",
        )
    return body, await decode_upload(data, config=config, decode_pool=decode_pool)


async def decode_upload(data: bytes, *, config: ServiceConfig, decode_pool) -> torch.Tensor:
    """Image bytes -> uint8 [3, H, W] by the one decoder, within the limits, in `decode_pool`."""
    return await asyncio.get_running_loop().run_in_executor(
        decode_pool, functools.partial(
            decode_image, data, max_bytes=config.max_upload_bytes, max_pixels=config.max_pixels))


def validation_message(err: ValidationError | RequestValidationError) -> str:
    """pydantic's errors (the first five) as one line: "field: message; ..."."""
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "request"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def _form_values(fields: dict[str, str]) -> dict[str, Any]:
    """Form strings -> values for the pydantic model (pydantic parses numbers and booleans)."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if k in ("vocabulary", "attributes", "method", "exemplars") and not v.strip():
            continue  # an empty form field means "not given"
        out[k] = form_exemplars(v) if k == "exemplars" else v
    return out
