"""Decoding uploaded images safely: size and pixel limits checked before pixels are decoded."""

from __future__ import annotations

import base64
import binascii
import io
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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
    """Encoded image bytes -> uint8 tensor [3, H, W] (RGB, EXIF orientation applied; a
    quarter of the memory of floats: the detector converts it when its turn comes).

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
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = image.size
            if w * h > max_pixels:
                raise ServiceError(
                    413, "too_many_pixels",
                    f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}",
                )
            if w < 1 or h < 1:
                raise ServiceError(422, "bad_image", "the image has no pixels")
            image.seek(0)  # first frame of an animation
            image.load()
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ServiceError(413, "too_many_pixels", f"image has too many pixels; the limit is {max_pixels}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ServiceError(
            422, "bad_image", f"could not decode the image (accepted formats: {', '.join(FORMATS)})"
        ) from None
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
