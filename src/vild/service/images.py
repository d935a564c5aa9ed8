"""Uploaded images: transport (base64, byte limits) here, decoding by the one decoder."""

from __future__ import annotations

import base64
import binascii

import torch

from vild.data.images import ImageTooLargeError, load_image
from vild.errors import VildError
from vild.service.errors import ServiceError

# Formats the service decodes; everything else is refused before decoding.
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


def decode_base64(text: str, max_bytes: int) -> bytes:
    """A base64 string (optionally a `data:image/...;base64,` URL) -> bytes, size-checked."""
    if not isinstance(text, str) or not text:
        raise ServiceError(422, "bad_image", "image must be a non-empty base64 string")
    if text.startswith("data:"):
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise ServiceError(422, "bad_image", "a data URL image must be base64-encoded")
    elif "://" in text[:16]:
        raise ServiceError(422, "bad_image", "image must be base64 data; URLs are not fetched")
    # Refuse early from the encoded length: 4 characters carry 3 bytes.
    if (len(text) * 3) // 4 > max_bytes + 3:
        raise ServiceError(413, "upload_too_large", f"image is larger than the limit of {max_bytes} bytes")
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError):
        raise ServiceError(422, "bad_image", "image is not valid base64") from None
    return data


def decode_image(data: bytes, *, max_bytes: int, max_pixels: int) -> torch.Tensor:
    """Encoded image bytes -> uint8 tensor [3, H, W] through the one decoder,
    `vild.data.images.load_image` (alpha on white, 16-bit / 65535, EXIF orientation, first
    frame of an animation): the pixels `vild detect` and `vild eval` see. uint8 is a quarter
    of the memory of floats; the detector converts it when its turn comes.

    The size of the bytes and the pixel count (read from the header) are checked before the
    pixels are decoded; only the formats in FORMATS are opened.
    """
    if len(data) == 0:
        raise ServiceError(422, "bad_image", "the image is empty")
    if len(data) > max_bytes:
        raise ServiceError(
            413, "upload_too_large", f"image has {len(data)} bytes; the limit is {max_bytes}"
        )
    try:
        return load_image(data, max_pixels=max_pixels, dtype=torch.uint8, formats=FORMATS)
    except ImageTooLargeError as e:
        raise ServiceError(413, "too_many_pixels", _without_input_name(e)) from None
    except VildError as e:
        raise ServiceError(422, "bad_image", _without_input_name(e)) from None


def _without_input_name(e: VildError) -> str:
    """The decoder's line starts with its name for the input ("<1234 bytes>: "): an upload's
    client knows what it sent."""
    text = str(e)
    return text.split(": ", 1)[1] if text.startswith("<") and ": " in text else text
