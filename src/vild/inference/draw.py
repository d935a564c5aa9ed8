"""Drawing detections with Pillow: masks, boxes, labels and scores, legible on any background.

Every mark has a dark edge: boxes are a coloured line over a black one, mask fills are
translucent with a solid outline, labels are text on a filled tag with a black border and a
text colour chosen for contrast. Small images are enlarged first (`min_side`), so that labels
on a 128-pixel ShapeWorld image stay readable. Colours follow the label name (stable across
images and vocabularies).
"""

from __future__ import annotations

import zlib

import numpy as np

PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)


def color_for(name: str) -> tuple[int, int, int]:
    return PALETTE[zlib.crc32(name.encode("utf-8")) % len(PALETTE)]


def _luma(rgb) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


# GNU Unifont (Debian's `fonts-unifont`, which `make test` installs): a glyph for every
# character of Unicode's basic plane (Cyrillic, CJK, ...) and, in its "upper" file, the
# emoji and other astral characters. Pillow's own font has Latin only: other scripts came
# out as empty boxes. $VILD_FONT names another font file to use instead.
UNICODE_FONTS = ("/usr/share/fonts/opentype/unifont/unifont.otf",
                 "/usr/share/fonts/truetype/unifont/unifont.ttf")
UPPER_FONTS = ("/usr/share/fonts/opentype/unifont/unifont_upper.otf",
               "/usr/share/fonts/truetype/unifont/unifont_upper.ttf")
_warned_no_font = False


def _default_font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _first_font(paths, size: int):
    import os

    from PIL import ImageFont

    for path in paths:
        if path and os.path.isfile(path):
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    return None


def _fonts_for(text: str, size: int):
    """-> (font for the basic plane, font for astral characters): Pillow's default for Latin
    text; a Unicode font for anything else, else Pillow's default (a warning, once)."""
    import os

    global _warned_no_font
    if all(ord(c) < 0x250 for c in text):  # Latin: Pillow's own font covers it
        font = _default_font(size)
        return font, font
    own = os.environ.get("VILD_FONT")
    base = _first_font((own, *UNICODE_FONTS), size)
    if base is None:
        if not _warned_no_font:
            import logging

            logging.getLogger("vild.inference").warning(
                "labels in non-Latin scripts are drawn with Pillow's font, which lacks their "
                "glyphs: install a Unicode font (apt-get install fonts-unifont) or set VILD_FONT")
            _warned_no_font = True
        font = _default_font(size)
        return font, font
    upper = _first_font((own, *UPPER_FONTS), size) or base
    return base, upper


def _runs(text: str):
    """Text -> [(run, astral)] of consecutive characters inside / beyond the basic plane."""
    runs: list[tuple[str, bool]] = []
    for c in text:
        astral = ord(c) > 0xFFFF
        if runs and runs[-1][1] == astral:
            runs[-1] = (runs[-1][0] + c, astral)
        else:
            runs.append((c, astral))
    return runs


def _text_box(draw, text: str, size: int):
    """(left, top, width, height) of `text` drawn by `_draw_text`."""
    base, upper = _fonts_for(text, size)
    left = top = None
    width, bottom = 0, 0
    for run, astral in _runs(text):
        l, t, r, b = draw.textbbox((width, 0), run, font=upper if astral else base)
        left = l if left is None else min(left, l)
        top = t if top is None else min(top, t)
        width, bottom = r, max(bottom, b)
    left, top = left or 0, top or 0
    return left, top, width - left, bottom - top


def _draw_text(draw, xy, text: str, size: int, fill) -> None:
    base, upper = _fonts_for(text, size)
    x, y = xy
    for run, astral in _runs(text):
        font = upper if astral else base
        draw.text((x, y), run, font=font, fill=fill)
        x = draw.textbbox((x, y), run, font=font)[2]


def _to_uint8(image) -> np.ndarray:
    from vild.data.images import load_image

    t = load_image(image)
    return (t.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()).copy()


def draw_detections(
    image,
    detections,
    *,
    class_names=None,
    min_side: int = 512,
    max_scale: int = 8,
    mask_alpha: float = 0.45,
    mask_threshold: float = 0.5,
    show_scores: bool = True,
):
    """image (anything `load_image` takes) + `Detections` -> an annotated `PIL.Image` (RGB).

    class_names: label index -> name (default: the detections' own `class_names`, else the
    label number). The canvas is enlarged by an integer factor (at most `max_scale`) until its
    longer side is at least `min_side` pixels.
    """
    from PIL import Image, ImageDraw

    rgb = _to_uint8(image)
    h, w = rgb.shape[:2]
    if tuple(detections.image_size) != (h, w):
        raise ValueError(f"detections are for a {detections.image_size} image, the image is {(h, w)}")
    names = class_names if class_names is not None else detections.class_names
    labels = detections.labels.tolist()
    scores = detections.scores.tolist()
    label_text = [str(names[i]) if names is not None else str(i) for i in labels]
    order = sorted(range(len(labels)), key=lambda k: scores[k])  # best drawn last, on top

    # masks: translucent fill + solid outline, at image resolution
    if detections.masks is not None and len(labels):
        canvas = rgb.astype(np.float32)
        binary = (detections.masks.detach().cpu() > mask_threshold).numpy()
        for k in order:
            m = binary[k]
            if not m.any():
                continue
            colour = np.array(color_for(label_text[k]), dtype=np.float32)
            canvas[m] = canvas[m] * (1 - mask_alpha) + colour * mask_alpha
            inner = m.copy()
            inner[1:, :] &= m[:-1, :]
            inner[:-1, :] &= m[1:, :]
            inner[:, 1:] &= m[:, :-1]
            inner[:, :-1] &= m[:, 1:]
            canvas[m & ~inner] = colour
        rgb = canvas.clip(0, 255).astype(np.uint8)

    scale = max(1, min(max_scale, -(-min_side // max(h, w))))
    out = Image.fromarray(rgb, "RGB")
    if scale > 1:
        out = out.resize((w * scale, h * scale), Image.NEAREST)
    draw = ImageDraw.Draw(out)
    cw, ch = out.size
    line = max(2, round(min(cw, ch) / 256))
    font_size = max(11, round(max(cw, ch) / 40))
    boxes = (detections.boxes.detach().cpu().float() * scale).tolist()
    for k in order:  # boxes first, then every label above every box
        x0, y0, x1, y1 = boxes[k]
        colour = color_for(label_text[k])
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0), width=line + 2)
        draw.rectangle([x0 + 1, y0 + 1, x1 - 1, y1 - 1] if x1 - x0 > 2 and y1 - y0 > 2 else [x0, y0, x1, y1],
                       outline=colour, width=line)
    for k in order:
        x0, y0, x1, y1 = boxes[k]
        colour = color_for(label_text[k])
        text = f"{label_text[k]} {scores[k]:.2f}" if show_scores else label_text[k]
        left, top, tw, th = _text_box(draw, text, font_size)
        pad = max(2, font_size // 6)
        bw, bh = tw + 2 * pad, th + 2 * pad
        tx = min(max(0.0, x0), max(0.0, cw - bw))
        ty = y0 - bh if y0 - bh >= 0 else min(y0, ch - bh)
        ty = max(0.0, ty)
        draw.rectangle([tx, ty, tx + bw, ty + bh], fill=colour, outline=(0, 0, 0), width=1)
        ink = (0, 0, 0) if _luma(colour) > 140 else (255, 255, 255)
        _draw_text(draw, (tx + pad - left, ty + pad - top), text, font_size, fill=ink)
    return out


def save_annotated(path, image, detections, **kwargs) -> None:
    """`draw_detections` written to `path` (format from the suffix, PNG recommended)."""
    from pathlib import Path

    img = draw_detections(image, detections, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    img.save(tmp)
    tmp.replace(path)
