"""A corpus of awkward and hostile inputs, generated at test time (no binary files in git).

Each `Case` says what every front must do with it: decode it ("ok") or refuse it with one
line containing `words`. The service decodes fewer formats (no TIFF) and has its own pixel
limit: `served` says whether `vild serve` accepts the file.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tests.data.test_images import huge_png_header


@dataclass(frozen=True)
class Case:
    name: str
    ok: bool               # load_image / Detector / vild detect decode it
    words: str = ""        # in the one error line when not ok
    served: bool | None = None  # vild serve decodes it (None: same as ok)

    @property
    def serve_ok(self) -> bool:
        return self.ok if self.served is None else self.served


def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(80, 150, (h, w, 3)).astype(np.uint8)
    img[h // 8: h // 2, w // 8: w // 2] = (220, 30, 30)
    img[h // 2: h - h // 8, w // 2: w - w // 8] = (30, 60, 220)
    return img


def write_corpus(folder: Path) -> list[Case]:
    """Writes the corpus into `folder` (created) and returns its cases."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = _scene(48, 64)
    cases: list[Case] = []

    def save(name: str, image: Image.Image, ok: bool = True, served: bool | None = None, **kw) -> None:
        image.save(folder / name, **kw)
        cases.append(Case(name, ok, served=served))

    save("rgb.png", Image.fromarray(rgb))
    save("gray.png", Image.fromarray(rgb[..., 0]))
    save("palette.png", Image.fromarray(rgb).convert("P"))
    pal = Image.fromarray(rgb).convert("P")
    save("palette_transparent.png", pal, transparency=0)
    save("la.png", Image.fromarray(np.dstack([rgb[..., 0], np.full(rgb.shape[:2], 100, np.uint8)]), "LA"))
    save("rgba.png", Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 60, np.uint8)]), "RGBA"))
    save("one_bit.png", Image.fromarray(rgb[..., 0] > 120))
    save("sixteen_bit.png", Image.fromarray(rgb[..., 1].astype(np.uint16) * 257))
    save("dark_sixteen_bit.png", Image.fromarray(rgb[..., 1].astype(np.uint16)))
    save("cmyk.jpg", Image.fromarray(rgb).convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif_rotated.jpg", Image.fromarray(rgb), exif=exif)
    frames = [Image.fromarray(_scene(32, 32, s)) for s in range(3)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    cases.append(Case("animated.gif", True))
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:])
    cases.append(Case("animated.webp", True))
    save("one_pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)))
    save("thin.png", Image.fromarray(_scene(2, 300)))
    save("single_page.tif", Image.fromarray(rgb), served=False)
    save("float.tif", Image.fromarray(rgb[..., 0].astype(np.float32) / 255), served=False)
    save("picture.bmp", Image.fromarray(rgb))
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    cases.append(Case("pages.tif", False, "TIFF with 3 pages"))

    buf = io.BytesIO()
    Image.fromarray(_scene(64, 64, 7)).save(buf, "PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    cases.append(Case("truncated.png", False, "truncated"))
    (folder / "fake.png").write_text("this is not an image\n")
    cases.append(Case("fake.png", False, "not an image"))
    (folder / "page.jpg").write_text("<html><body>not a jpeg</body></html>")
    cases.append(Case("page.jpg", False, "not an image"))
    (folder / "drawing.svg.png").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    cases.append(Case("drawing.svg.png", False, "not an image"))
    (folder / "empty.png").write_bytes(b"")
    cases.append(Case("empty.png", False, "empty"))
    huge_png_header(folder / "bomb.png")
    cases.append(Case("bomb.png", False, "pixels"))
    huge_png_header(folder / "wide_bomb.png", width=2**31 - 1, height=1)
    cases.append(Case("wide_bomb.png", False, "pixels"))
    os.symlink(folder / "loop_b.png", folder / "loop_a.png")
    os.symlink(folder / "loop_a.png", folder / "loop_b.png")
    cases.append(Case("loop_a.png", False, "loop of symbolic links"))
    cases.append(Case("loop_b.png", False, "loop of symbolic links"))
    os.symlink(folder / "gone.png", folder / "dangling.png")
    cases.append(Case("dangling.png", False, "broken symbolic link"))
    return cases


def file_cases(cases: list[Case]) -> list[Case]:
    """Cases that are regular files (can be uploaded)."""
    return [c for c in cases if c.name not in ("loop_a.png", "loop_b.png", "dangling.png")]
