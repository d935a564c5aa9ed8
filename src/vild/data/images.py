"""The one image decoder: images in, `[3, H, W]` tensors out, whatever the user hands over.

`vild eval` (datasets), `vild detect`, `Detector` and `vild serve` all decode through
`load_image`, so an image means the same pixels everywhere. It accepts a path, encoded bytes,
a PIL image, a numpy array (H x W, H x W x 1/3/4) or a torch tensor (H x W, 1/3/4 x H x W).

The contract, for every input kind:
- grayscale, palette, CMYK and EXIF-rotated images come out as upright RGB;
- alpha (RGBA, LA, PA, palette transparency) is composited on white;
- 16-bit images (PIL modes I;16*, and mode I, which is how Pillow opens 16- and 32-bit
  integer greys) are divided by 65535; 32-bit float images (mode F) in 0..1 are kept, in
  0..255 divided by 255;
- an animation (GIF, WebP, APNG) gives its first frame; a multi-page TIFF is refused (its
  pages are separate images: save the one you mean);
- `dtype=torch.uint8` gives 0..255 bytes (a quarter of the memory; the service keeps uploads
  this way), `torch.float32` (the default) 0..1 floats.
Anything it cannot turn into an image raises `VildError` with one line that names the input;
too many pixels raise its subclass `ImageTooLargeError`.

A pixel limit guards against decompression bombs: the header's size is checked before any
pixel is decoded. Default `MAX_PIXELS` (64 megapixels), overridable per call or with the
environment variable ``VILD_MAX_PIXELS``.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vild.errors import VildError


class ImageTooLargeError(VildError):
    """An image with more pixels than the limit in force (a decompression bomb, or just big)."""

MAX_PIXELS = 64_000_000
INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_PIL_GUARD = threading.Lock()
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def pixel_limit(limit: int | None = None) -> int:
    """The pixel limit in force: `limit`, else ``$VILD_MAX_PIXELS``, else `MAX_PIXELS`."""
    if limit is not None:
        return int(limit)
    raw = os.environ.get("VILD_MAX_PIXELS")
    if raw:
        try:
            return int(float(raw))
        except ValueError:
            raise VildError(f"VILD_MAX_PIXELS must be a number of pixels, got {raw!r}") from None
    return MAX_PIXELS


def describe(x: Any) -> str:
    """A short name of an image input for error messages."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return f"<{len(x)} bytes>"
    shape = getattr(x, "shape", None)
    if shape is not None:
        return f"<{type(x).__name__} {tuple(shape)}>"
    size = getattr(x, "size", None)
    if isinstance(size, tuple):
        return f"<{type(x).__name__} {size[0]}x{size[1]} {getattr(x, 'mode', '')}>"
    return f"<{type(x).__name__}>"


def load_image(x: Any, *, max_pixels: int | None = None, dtype=None, formats: tuple[str, ...] | None = None):
    """Any supported image input -> torch tensor [3, H, W] on the CPU: float32 in 0..1, or
    uint8 in 0..255 with ``dtype=torch.uint8``.

    formats: Pillow format names an encoded input may have (e.g. ``("PNG", "JPEG")``); others
    are refused before decoding. Raises `VildError` (one line) for a missing, unreadable,
    corrupt or unsupported input, `ImageTooLargeError` for one over the pixel limit (see
    `pixel_limit`).
    """
    import torch

    dtype = torch.float32 if dtype is None else dtype
    if dtype not in (torch.float32, torch.uint8):
        raise VildError(f"load_image gives float32 or uint8 tensors, not {dtype}")
    limit = pixel_limit(max_pixels)
    if limit < 1:
        raise VildError(f"the pixel limit must be at least 1, got {limit}")
    if isinstance(x, (str, os.PathLike)):
        return _from_pil(_open_path(Path(x), limit, formats), os.fspath(x), limit, dtype)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return _from_pil(_open_bytes(bytes(x), limit, formats), describe(x), limit, dtype)
    if isinstance(x, torch.Tensor):
        return _to_dtype(_from_tensor(x, limit), dtype)
    if isinstance(x, np.ndarray):
        return _to_dtype(_from_tensor(_numpy_to_chw(x), limit, what=describe(x)), dtype)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(x, Image.Image):
        _check_size(x.size, describe(x), limit)
        return _from_pil(x, describe(x), limit, dtype)
    raise VildError(
        f"unsupported image input {describe(x)}: give a file path, bytes, a PIL image, "
        "a numpy array (H x W x 3) or a tensor (3 x H x W)"
    )


def _to_dtype(t, dtype):
    import torch

    if dtype == torch.uint8 and t.dtype != torch.uint8:
        return (t * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return t if t.dtype == dtype else t.float() / 255.0


# ---------------------------------------------------------------------------- decoding
def _check_size(size: tuple[int, int], what: str, limit: int) -> None:
    w, h = int(size[0]), int(size[1])
    if w < 1 or h < 1:
        raise VildError(f"{what}: image has no pixels ({w}x{h})")
    if w * h > limit:
        raise ImageTooLargeError(
            f"{what}: image is {w}x{h} = {w * h:,} pixels, more than the limit of {limit:,} "
            "(resize it, or raise the limit with VILD_MAX_PIXELS)"
        )


def _open(fp, what: str, limit: int, formats: tuple[str, ...] | None = None):
    """Parse the header with Pillow's own bomb guard lifted (our limit replaces it: the size is
    checked before any pixel is decoded), then decode."""
    from PIL import Image, UnidentifiedImageError

    try:
        with _PIL_GUARD:
            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
            try:
                im = Image.open(fp, formats=formats)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except UnidentifiedImageError:
        accepted = f" (accepted formats: {', '.join(formats)})" if formats else ""
        raise VildError(f"{what}: not an image file, or an image format Pillow cannot read{accepted}") from None
    except Image.DecompressionBombError:  # pragma: no cover - the guard is lifted above
        raise ImageTooLargeError(f"{what}: image is too large; the limit is {limit:,} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise VildError(f"{what}: cannot read image ({_short(e)})") from None
    _check_size(im.size, what, limit)
    pages = getattr(im, "n_frames", 1) if im.format == "TIFF" else 1
    if pages > 1:
        raise VildError(f"{what}: a TIFF with {pages} pages; vild reads one image per file "
                        "(save the page you mean as its own file)")
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        raise VildError(f"{what}: corrupt or truncated image ({_short(e)})") from None
    return im


def _open_path(path: Path, limit: int, formats: tuple[str, ...] | None = None):
    what = str(path)
    try:
        path.stat()
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VildError(f"{what}: a loop of symbolic links") from None
        if e.errno == errno.ENOENT and path.is_symlink():
            raise VildError(f"{what}: broken symbolic link (to {os.readlink(path)})") from None
        if e.errno == errno.ENOENT:
            raise VildError(f"{what}: file not found") from None
        raise VildError(f"{what}: cannot read file ({e.strerror or _short(e)})") from None
    if path.is_dir():
        raise VildError(f"{what}: is a directory, not an image file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise VildError(f"{what}: cannot read file ({e.strerror or _short(e)})") from None
    if not data:
        raise VildError(f"{what}: empty file")
    return _open(io.BytesIO(data), what, limit, formats)


def _open_bytes(data: bytes, limit: int, formats: tuple[str, ...] | None = None):
    what = describe(data)
    if not data:
        raise VildError("empty image data (0 bytes)")
    return _open(io.BytesIO(data), what, limit, formats)


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _from_pil(im, what: str, limit: int, dtype):
    """A decoded PIL image (any mode) -> [3, H, W] float 0..1 or uint8, upright (EXIF)."""
    import torch
    from PIL import Image, ImageOps

    try:
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # animated images: the first frame
        im = ImageOps.exif_transpose(im)
    except VildError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken EXIF block must not kill the image
        try:
            im.load()
        except Exception:  # noqa: BLE001
            raise VildError(f"{what}: corrupt image ({_short(e)})") from None
    _check_size(im.size, what, limit)
    mode = im.mode
    try:
        if mode in INTEGER_MODES:
            arr = np.asarray(im).astype(np.float32)
            rgb = np.repeat(np.clip(arr / 65535.0, 0.0, 1.0)[..., None], 3, axis=2)
        elif mode == "F":
            arr = np.asarray(im).astype(np.float32)
            if not np.isfinite(arr).all():
                raise VildError(f"{what}: float image contains NaN or infinity")
            hi = 255.0 if arr.max(initial=0) > 1.0 else 1.0
            rgb = np.repeat(np.clip(arr / hi, 0.0, 1.0)[..., None], 3, axis=2)
        else:
            if mode in ALPHA_MODES or (mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(white, rgba)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)  # 8-bit: no float copy for uint8 callers
    except VildError:
        raise
    except (OSError, ValueError) as e:
        raise VildError(f"{what}: cannot convert image mode {mode!r} to RGB ({_short(e)})") from None
    t = torch.from_numpy(np.array(rgb.transpose(2, 0, 1), order="C"))  # a writable copy
    return _to_dtype(t, dtype)


def _numpy_to_chw(a: np.ndarray):
    """numpy H x W, H x W x C -> torch C x H x W (dtype kept)."""
    import torch

    what = describe(a)
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise VildError(f"{what}: unsupported array dtype {a.dtype}")
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4):
        raise VildError(f"{what}: a numpy image must be H x W or H x W x 1/3/4 (channels last)")
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    if a.dtype.kind == "u" and a.dtype.itemsize > 2:
        a = a.astype(np.float64) / np.iinfo(a.dtype).max
    elif a.dtype.kind == "i":
        if a.min(initial=0) < 0:
            raise VildError(f"{what}: integer image has negative values")
        a = a.astype(np.float64) / (65535.0 if a.max(initial=0) > 255 else 255.0)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def _from_tensor(t, limit: int, *, what: str | None = None):
    """torch H x W or C x H x W (C = 1, 3, 4), uint8 / uint16 / bool / float 0..1 -> [3, H, W]."""
    import torch

    what = what or describe(t)
    t = t.detach().to("cpu")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise VildError(f"{what}: a tensor image must be H x W or C x H x W with C = 1, 3 or 4 (channels first)")
    h, w = int(t.shape[1]), int(t.shape[2])
    _check_size((w, h), what, limit)
    if t.dtype == torch.bool:
        t = t.float()
    elif t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype == torch.uint16:
        t = t.float() / 65535.0
    elif not t.is_floating_point():
        if t.numel() and int(t.min()) < 0:
            raise VildError(f"{what}: integer image has negative values")
        hi = 65535.0 if t.numel() and int(t.max()) > 255 else 255.0
        t = t.float() / hi
    else:
        t = t.float()
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise VildError(f"{what}: image contains NaN or infinity")
        lo, hi = (float(t.min()), float(t.max())) if t.numel() else (0.0, 0.0)
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise VildError(
                f"{what}: float image values must lie in 0..1, got {lo:.3g}..{hi:.3g} "
                "(divide 0..255 images by 255)"
            )
        t = t.clamp(0.0, 1.0)
    if t.shape[0] == 4:  # RGBA: composite on white
        alpha = t[3:4]
        t = t[:3] * alpha + (1.0 - alpha)
    elif t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    return t.contiguous()


# ---------------------------------------------------------------------------- listing
def expand_inputs(items) -> list[tuple[str, Path]]:
    """Command-line IMAGES_OR_DIRS -> [(display name, path)], folders expanded to the image
    files inside them (recursively, sorted). A folder with no images, or a path that does not
    exist, is kept as an item of its own, so that it is reported as a failure."""
    out: list[tuple[str, Path]] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if (p.is_file() or p.is_symlink()) and not p.is_dir()  # broken links: reported, not skipped
                and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                out.append((str(path), path))
            out.extend((str(p), p) for p in found)
        else:
            out.append((str(path), path))
    return out
