"""Labels in any script: drawn with real glyphs when a Unicode font is installed, and still
drawn (Pillow's font, one warning) when none is."""

from __future__ import annotations

import logging
import os

import pytest
import torch
from PIL import ImageDraw

import vild.inference.draw as draw
from vild.model.outputs import Detections

HAVE_UNIFONT = any(os.path.isfile(p) for p in draw.UNICODE_FONTS)


def _glyph(text: str, size: int = 24) -> bytes:
    base, upper = draw._fonts_for(text, size)
    font = upper if ord(text[0]) > 0xFFFF else base
    return bytes(font.getmask(text))


def _dets(names):
    n = len(names)
    return Detections(boxes=torch.tensor([[4.0, 30, 60, 60]] * n), scores=torch.full((n,), 0.9),
                      labels=torch.arange(n), image_size=(64, 64), class_names=tuple(names))


@pytest.mark.skipif(not HAVE_UNIFONT, reason="fonts-unifont is not installed (make test installs it)")
@pytest.mark.parametrize("a, b", [("ж", "ф"), ("星", "心"), ("😀", "🐱"), ("ά", "ω")])
def test_other_scripts_get_real_glyphs(a, b):
    # with a font that lacks them, both come out as the same empty box
    ga, gb = _glyph(a), _glyph(b)
    assert ga != gb and any(ga) and any(gb)


def test_latin_keeps_pillows_font():
    base, upper = draw._fonts_for("red star 0.93", 14)
    assert base is upper
    assert base.getname() == draw._default_font(14).getname()


def test_no_unicode_font_falls_back_cleanly(monkeypatch, caplog):
    monkeypatch.setattr(draw, "UNICODE_FONTS", ("/no/such/font.otf",))
    monkeypatch.setattr(draw, "UPPER_FONTS", ("/no/such/font.otf",))
    monkeypatch.setattr(draw, "_warned_no_font", False)
    monkeypatch.delenv("VILD_FONT", raising=False)
    with caplog.at_level(logging.WARNING, logger="vild.inference"):
        out = draw.draw_detections(torch.full((3, 64, 64), 0.5), _dets(["звезда", "星", "star 😀"]))
        draw.draw_detections(torch.full((3, 64, 64), 0.5), _dets(["круг"]))
    assert out.size[0] >= 64
    assert caplog.text.count("fonts-unifont") == 1  # warned once, not per label


@pytest.mark.skipif(not HAVE_UNIFONT, reason="fonts-unifont is not installed (make test installs it)")
def test_mixed_labels_draw_every_run():
    img = torch.full((3, 64, 64), 0.5)
    plain = draw.draw_detections(img, _dets(["star"]), show_scores=False)
    mixed = draw.draw_detections(img, _dets(["star 😀星"]), show_scores=False)
    assert mixed.tobytes() != plain.tobytes()
    canvas = ImageDraw.Draw(plain)
    _, _, w1, _ = draw._text_box(canvas, "star", 20)
    _, _, w2, _ = draw._text_box(canvas, "star 😀星", 20)
    assert w2 > w1 + 20  # the emoji and the CJK glyph take room
