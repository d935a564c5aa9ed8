"""Exemplars in requests: `{"name", "image_id" | "image", "box"}` -> `vild.inference.Exemplar`s
with decoded pixels, so that "find more of this" works across images: draw a box on one cached
image, then query others with it.

The cache keeps each image's decoded pixels beside its regions (`CachedImage`): an exemplar
names a cached image by id and the box is cut from exactly the pixels the detector saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import torch

from vild.errors import shorten
from vild.inference.exemplars import Exemplar, ExemplarError, check_box
from vild.service.config import ServiceConfig
from vild.service.errors import ServiceError
from vild.service.images import decode_base64


@dataclass
class CachedImage:
    """What the cache keeps per image id: the regions (`Detector.embed`) and the uint8 pixels
    (counted in the cache's bytes like the regions)."""

    regions: Any
    image: torch.Tensor


def form_exemplars(text: str) -> Any:
    """The multipart form's `exemplars` field: a JSON list (as in a JSON body)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        raise ServiceError(422, "bad_exemplar", "the form field exemplars must be a JSON list") from None


def _name(raw: str, config: ServiceConfig) -> str:
    name = " ".join(raw.split())
    if not name:
        raise ServiceError(422, "bad_exemplar", "an exemplar has an empty name")
    if len(name) > config.max_name_length:
        raise ServiceError(422, "name_too_long",
                           f"an exemplar name has {len(name)} characters; the limit is {config.max_name_length}")
    return name


async def resolve_exemplars(specs, *, cache, config: ServiceConfig,
                            decode: Callable[[bytes], Any]) -> list[Exemplar] | None:
    """Request exemplars -> `Exemplar`s with uint8 pixels and checked boxes, or None when the
    request has none. `decode` turns image bytes into a [3, H, W] tensor (off the event loop).
    Refusals: 422 `bad_exemplar` / `too_many_exemplars` / `name_too_long`, 404
    `unknown_exemplar_image` (an id that left the cache: send the image again)."""
    if not specs:
        return None
    if len(specs) > config.max_exemplars:
        raise ServiceError(422, "too_many_exemplars",
                           f"{len(specs)} exemplars; the limit is {config.max_exemplars}")
    out = []
    for spec in specs:
        name = _name(spec.name, config)
        what = f"exemplar {shorten(name)}"
        if (spec.image_id is None) == (spec.image is None):
            raise ServiceError(422, "bad_exemplar",
                               f"{what}: give image_id (a cached image) or image (base64), exactly one")
        if spec.image_id is not None:
            hit = cache.get(spec.image_id)
            if hit is None or not isinstance(hit[0], CachedImage):
                raise ServiceError(
                    404, "unknown_exemplar_image",
                    f"{what}: no cached image has this id (it may have left the cache); send the image itself")
            image = hit[0].image
        else:
            image = await decode(decode_base64(spec.image, config.max_upload_bytes))
        h, w = int(image.shape[1]), int(image.shape[2])
        try:
            box = None if spec.box is None else check_box(spec.box, h, w, what=what)
        except ExemplarError as e:
            raise ServiceError(422, "bad_exemplar", str(e)) from None
        out.append(Exemplar(name, image, box))
    return out


def exemplar_kwargs(exemplars: list[Exemplar] | None) -> dict:
    """Keyword arguments for `detect` / `query`: none without exemplars, so a detector that
    takes none still serves every other request."""
    return {"exemplars": exemplars} if exemplars else {}

