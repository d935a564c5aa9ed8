"""load_image: every input kind, every awkward file, one clear VildError line for bad ones."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from vild.errors import VildError
from vild.inference import load_image
from vild.data.images import expand_inputs


def _rgb(h=6, w=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3)).astype(np.uint8)


def _one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and text
    return text


def huge_png_header(path, width=100_000, height=100_000):
    """A tiny PNG file whose header claims width x height pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_every_input_kind_gives_the_same_tensor(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    expected = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    for x in (str(tmp_path / "a.png"), tmp_path / "a.png", buf.getvalue(), Image.fromarray(arr), arr,
              torch.from_numpy(arr).permute(2, 0, 1).contiguous(), expected.clone()):
        t = load_image(x)
        assert t.shape == (3, 6, 8) and t.dtype == torch.float32
        assert torch.allclose(t, expected, atol=1e-6), type(x)


def test_grayscale_palette_and_bool(tmp_path):
    gray = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    t = load_image(tmp_path / "g.png")
    assert t.shape == (3, 6, 8) and torch.allclose(t[0], t[2])
    assert torch.allclose(t[0], torch.from_numpy(gray).float() / 255)
    assert load_image(gray).shape == (3, 6, 8)
    assert load_image(gray[..., None]).shape == (3, 6, 8)
    Image.fromarray(_rgb()).convert("P").save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").shape == (3, 6, 8)
    assert load_image(np.ones((4, 5), dtype=bool)).min() == 1.0
    Image.fromarray(gray).convert("1").save(tmp_path / "b.png")
    assert load_image(tmp_path / "b.png").shape == (3, 6, 8)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    for x in (tmp_path / "a.png", rgba, torch.from_numpy(rgba).permute(2, 0, 1)):
        t = load_image(x)
        assert torch.allclose(t[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
        assert torch.allclose(t[:, 3, 0], torch.ones(3))
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").shape == (3, 4, 4)


def test_16_bit_images(tmp_path):
    values = np.array([[0, 1000, 65535], [30000, 40000, 50000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    im = Image.open(tmp_path / "g16.png")
    assert im.mode.startswith("I")  # really a 16-bit file
    t = load_image(tmp_path / "g16.png")
    assert torch.allclose(t[0], torch.from_numpy(values.astype(np.float32) / 65535), atol=1e-6)
    t = load_image(np.stack([values] * 3, axis=2))
    assert torch.allclose(t[1], torch.from_numpy(values.astype(np.float32) / 65535), atol=1e-6)
    t = load_image(torch.from_numpy(values.astype(np.int32)))
    assert float(t.max()) == pytest.approx(1.0)


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (10, 7), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red in CMYK
    t = load_image(tmp_path / "c.jpg")
    assert t.shape == (3, 7, 10)
    assert float(t[0].mean()) > 0.8 and float(t[1].mean()) < 0.2


def test_exif_rotated_image_is_upright(tmp_path):
    arr = np.zeros((4, 10, 3), dtype=np.uint8)  # stored 10 wide, 4 high
    arr[:, :2] = 255  # white band on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif, quality=100)
    t = load_image(tmp_path / "r.jpg")
    assert t.shape == (3, 10, 4)  # displayed upright: 4 wide, 10 high
    assert float(t[:, :2, :].mean()) > 0.8  # the band is now at the top


def test_one_pixel_and_animated(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.png")
    assert load_image(tmp_path / "one.png").shape == (3, 1, 1)
    frames = [Image.new("RGB", (5, 5), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_image(tmp_path / "anim.gif").shape == (3, 5, 5)


def test_pixel_limit_and_decompression_bomb(tmp_path, monkeypatch):
    with pytest.raises(VildError) as e:
        load_image(huge_png_header(tmp_path / "bomb.png"))
    msg = _one_line(e)
    assert "100000x100000" in msg and "limit" in msg
    Image.new("RGB", (50, 40)).save(tmp_path / "ok.png")
    with pytest.raises(VildError, match="2,000 pixels, more than the limit of 1,000"):
        load_image(tmp_path / "ok.png", max_pixels=1000)
    monkeypatch.setenv("VILD_MAX_PIXELS", "100")
    with pytest.raises(VildError, match="limit of 100"):
        load_image(np.zeros((20, 20, 3), np.uint8))
    with pytest.raises(VildError, match="limit"):
        load_image(torch.zeros(3, 20, 20))


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "garbage", "truncated"])
def test_bad_files_are_one_line_errors(tmp_path, kind):
    path = tmp_path / "x.png"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(b"this is not an image at all" * 10)
    elif kind == "truncated":
        buf = io.BytesIO()
        Image.fromarray(_rgb(64, 64)).save(buf, format="PNG")
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(VildError) as e:
        load_image(path)
    msg = _one_line(e)
    assert str(path) in msg
    words = {"missing": "not found", "directory": "directory", "empty": "empty",
             "garbage": "not an image", "truncated": "truncated"}
    assert words[kind] in msg


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(VildError, match="cannot read"):
            load_image(path)
    finally:
        path.chmod(0o644)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((2, 3, 3, 3), np.uint8), "H x W"),
    (np.zeros((4, 4, 2), np.uint8), "H x W"),
    (torch.zeros(2, 4, 4), "C x H x W"),
    (torch.full((3, 4, 4), 2.0), "0..1"),
    (torch.full((3, 4, 4), float("nan")), "NaN"),
    (np.array([["a"]]), "dtype"),
    (12, "unsupported image input"),
    (b"", "empty"),
    (b"garbage bytes", "not an image"),
    (np.zeros((0, 4, 3), np.uint8), "no pixels"),
])
def test_bad_arrays_and_objects(bad, words):
    with pytest.raises(VildError) as e:
        load_image(bad)
    assert words in _one_line(e)


def test_expand_inputs(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.png", "d/a.jpg", "d/sub/c.png", "d/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    items = expand_inputs([tmp_path / "d", tmp_path / "nope.png", tmp_path / "empty"])
    names = [p.relative_to(tmp_path).as_posix() for _, p in items]
    assert names == ["d/a.jpg", "d/b.png", "d/sub/c.png", "nope.png", "empty"]


def test_unreadable_file_any_user(tmp_path, monkeypatch):
    """The same, simulated (root can read a chmod 000 file)."""
    import vild.data.images as images

    path = tmp_path / "secret.png"
    Image.new("RGB", (4, 4)).save(path)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", denied, raising=False)
    with pytest.raises(VildError) as e:
        load_image(path)
    assert "cannot read file (Permission denied)" in _one_line(e)


def _awkward_images(tmp_path):
    """Files on which the three former decoders disagreed: alpha, dark 16-bit, palette alpha."""
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 90
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    dark16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 5)  # max 235: still 16-bit data
    Image.fromarray(dark16).save(tmp_path / "dark16.png")
    pal = Image.new("P", (8, 6), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 1
    pal.save(tmp_path / "pal.png", transparency=1)
    Image.fromarray(rgba[..., [0, 3]], "LA").save(tmp_path / "la.png")
    return ["rgba.png", "dark16.png", "pal.png", "la.png"]


def test_dataset_detect_and_service_decode_the_same_pixels(tmp_path):
    """`vild eval` (DetectionDataset), `vild detect` / `Detector` and `vild serve` see one image
    the same way: there is one decoder."""
    from vild.data.detection import DetectionDataset
    from vild.service.images import decode_image

    names = _awkward_images(tmp_path)
    ann = {"images": [{"id": i + 1, "file_name": n, "height": 6, "width": 8} for i, n in enumerate(names)],
           "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    ds = DetectionDataset(tmp_path, ann)
    for i, name in enumerate(names):
        want = load_image(tmp_path / name)
        assert torch.equal(ds.load_image(i), want), name
        served = decode_image((tmp_path / name).read_bytes(), max_bytes=10**6, max_pixels=10**4)
        assert served.dtype == torch.uint8
        assert float((served.float() / 255 - want).abs().max()) <= 0.5 / 255 + 1e-6, name
    # alpha on white, 16-bit over 65535 whatever the brightest pixel
    rgba = load_image(tmp_path / "rgba.png")
    assert rgba[1, 0, 0] == pytest.approx(1 - 90 / 255, abs=1e-6)  # green: white behind 35% red
    dark = load_image(tmp_path / "dark16.png")
    assert float(dark.max()) == pytest.approx(235 / 65535, rel=1e-6)
    assert torch.equal(load_image(tmp_path / "pal.png")[:, 0, 0], torch.ones(3))  # transparent


def test_uint8_output_matches_float_output(tmp_path):
    names = _awkward_images(tmp_path)
    for name in names:
        f = load_image(tmp_path / name)
        u = load_image(tmp_path / name, dtype=torch.uint8)
        assert u.dtype == torch.uint8 and u.shape == f.shape
        assert torch.equal(u, (f * 255).round().to(torch.uint8)), name


def test_multi_page_tiff_is_refused_animation_gives_first_frame(tmp_path):
    pages = [Image.new("RGB", (5, 4), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    pages[0].save(tmp_path / "book.tif", save_all=True, append_images=pages[1:])
    with pytest.raises(VildError, match="TIFF with 3 pages") as e:
        load_image(tmp_path / "book.tif")
    assert "\n" not in str(e.value)
    pages[0].save(tmp_path / "one.tif")
    assert load_image(tmp_path / "one.tif").shape == (3, 4, 5)
    pages[0].save(tmp_path / "anim.webp", save_all=True, append_images=pages[1:])
    assert torch.allclose(load_image(tmp_path / "anim.webp")[:, 0, 0], torch.tensor([1.0, 0, 0]), atol=0.05)


def test_symlink_loop_and_broken_link_are_named(tmp_path):
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(VildError, match="loop of symbolic links"):
        load_image(tmp_path / "a.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(VildError, match="broken symbolic link"):
        load_image(tmp_path / "dangling.png")
    with pytest.raises(VildError, match="file not found"):
        load_image(tmp_path / "gone.png")


def test_formats_and_limits_are_enforced(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "x.bmp")
    with pytest.raises(VildError, match="accepted formats: PNG"):
        load_image(tmp_path / "x.bmp", formats=("PNG",))
    from vild.data.images import ImageTooLargeError

    with pytest.raises(ImageTooLargeError):
        load_image(tmp_path / "x.bmp", max_pixels=15)
    with pytest.raises(VildError, match="at least 1"):
        load_image(tmp_path / "x.bmp", max_pixels=0)
