"""Queries by example image: an exemplar (a crop, or an image and a box) becomes one row of the
vocabulary's [C, D] classifier, beside the text names.

    det.detect(img, ["circle", "star"], exemplars=[Exemplar("logo", "ref.png", (10, 12, 60, 58))])
    det.detect(img, [], exemplars={"logo": ["a.png", ("b.png", (0, 0, 40, 40))]})  # exemplars alone

ViLD distils its region embeddings into the teacher's image-embedding space, so an example is
embedded exactly like a distillation target: the teacher's image tower on the box's 1x and
1.5x crops, summed and L2-normalised (`Teacher.encode_regions`). Several exemplars of one name
are averaged and re-normalised; an exemplar named like a text name (after name normalisation)
is averaged with that name's text embedding (equal halves: the text row and the exemplars'
mean), so one name is one row and one label.

Exemplar rows then go through the one scoring path unchanged. ViLD-ensemble's weighting of a
row follows its base flag: a row with a text name keeps that name's flag; a row made of
exemplars alone is flagged base, so lambda = 2/3 goes on the text head (its background column
and its box-level training) and 1/3 on the distillation head (which shares the exemplar's
image space). The other rule, novel weighting (2/3 on the distillation head), scored APr 3.0
against 4.9 on ShapeWorld-OV, lower in each of 3 draws: docs/inference.md ("Queries by example
image") and benchmarks/results/exemplars*.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import torch

from vild.errors import VildError, VocabularyError, shorten


class ExemplarError(VildError, ValueError):
    """An exemplar that cannot be used: a bad box, a missing or unreadable image, a bad name."""


@dataclass(frozen=True)
class Exemplar:
    """An example of what to find, labelled `name`: `image` is a path, encoded bytes, a PIL
    image, a numpy array or a tensor (anything `vild.data.images.load_image` takes); `box` is
    (x0, y0, x1, y1) in pixels of that image, or None when the whole image is the object."""

    name: str
    image: Any
    box: tuple[float, float, float, float] | None = None


_BOX_TAIL = re.compile(r"^(?P<path>.*):(?P<box>\s*[-+0-9.eE]+\s*(?:,\s*[-+0-9.eE]+\s*){3})$")


def parse_box(value, *, what: str = "box") -> tuple[float, float, float, float]:
    """4 numbers (a sequence, an array, a tensor or ``"x0,y0,x1,y1"``) -> a tuple of floats.
    Raises `ExemplarError` for anything else, and for NaN or infinite coordinates."""
    raw = value
    if isinstance(value, str):
        value = value.split(",")
    elif isinstance(value, torch.Tensor):
        value = value.detach().flatten().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, (list, tuple)):
        value = value.tolist()
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ExemplarError(f"{what} must be 4 numbers x0,y0,x1,y1, got {shorten(raw)}") from None
    if len(numbers) != 4:
        raise ExemplarError(f"{what} must be 4 numbers x0,y0,x1,y1, got {len(numbers)}: {shorten(raw)}")
    if not all(math.isfinite(v) for v in numbers):
        raise ExemplarError(f"{what} has a NaN or infinite coordinate: {shorten(raw)}")
    return numbers  # type: ignore[return-value]


def parse_exemplar_arg(text: str) -> Exemplar:
    """The CLI's ``NAME=PATH[:x0,y0,x1,y1]`` -> `Exemplar` (the image is not read here). A path
    may itself contain ':'; only a trailing ':' + 4 numbers is a box."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or not rest:
        raise ExemplarError(f"--exemplar must be NAME=PATH or NAME=PATH:x0,y0,x1,y1, got {shorten(text)}")
    match = _BOX_TAIL.match(rest)
    path, box = (match["path"], parse_box(match["box"], what=f"--exemplar {name.strip()}: box")) if match else (rest, None)
    if not path:
        raise ExemplarError(f"--exemplar {shorten(text)}: no image path before the box")
    return Exemplar(name.strip(), path, box)


def _is_box(x) -> bool:
    """4 numbers (an (image, box) pair's second half), as opposed to a second image."""
    if isinstance(x, str):
        return bool(re.fullmatch(r"\s*[-+0-9.eE]+\s*(,\s*[-+0-9.eE]+\s*){3}", x))
    if isinstance(x, bytes):
        return False
    try:
        return len(x) == 4 and len([float(v) for v in x]) == 4
    except (TypeError, ValueError):
        return False


def as_exemplars(exemplars) -> list[Exemplar]:
    """What `Detector.detect(exemplars=...)` takes -> a list of `Exemplar`: one `Exemplar`, a
    list of them, or a dict {name: item or [items]} where an item is an image or an
    (image, box) pair."""
    if exemplars is None:
        return []
    if isinstance(exemplars, Exemplar):
        return [exemplars]
    if isinstance(exemplars, dict):
        out = []
        for name, items in exemplars.items():
            if isinstance(items, tuple) and len(items) == 2 and _is_box(items[1]):
                items = [items]  # one (image, box) pair, not two images
            elif not isinstance(items, (list, tuple)):
                items = [items]
            if not items:
                raise ExemplarError(f"exemplar {shorten(name)}: no images given")
            for item in items:
                if isinstance(item, tuple) and len(item) == 2 and _is_box(item[1]):
                    out.append(Exemplar(name, item[0], parse_box(item[1])))
                else:
                    out.append(Exemplar(name, item))
        return out
    if isinstance(exemplars, (list, tuple)):
        bad = [e for e in exemplars if not isinstance(e, Exemplar)]
        if bad:
            raise ExemplarError(
                f"exemplars must be Exemplar(name, image, box) objects or a dict {{name: images}}, "
                f"got a {type(bad[0]).__name__} in the list")
        return list(exemplars)
    raise ExemplarError(
        f"exemplars must be an Exemplar, a list of them or a dict {{name: images}}, got {type(exemplars).__name__}")


def check_box(box, height: int, width: int, *, what: str) -> tuple[float, float, float, float]:
    """A box inside a `height` x `width` image, with positive width and height; else a one-line
    `ExemplarError` naming the box and the image size."""
    x0, y0, x1, y1 = parse_box(box, what=f"{what}: box")
    shown = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    if x1 <= x0 or y1 <= y0:
        raise ExemplarError(f"{what}: box {shown} is empty (need x0 < x1 and y0 < y1, in pixels)")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ExemplarError(
            f"{what}: box {shown} is outside the {width}x{height} image (x in 0..{width}, y in 0..{height})")
    return x0, y0, x1, y1


def load_exemplars(exemplars, *, max_pixels: int | None = None) -> list[Exemplar]:
    """`as_exemplars`, then every image decoded by `load_image` ([3, H, W] float tensors) and
    every box checked against its image (None becomes the whole image). Errors name the
    exemplar. Cheap enough to run before a model loads, so that a bad one fails at once."""
    from vild.data.images import load_image
    from vild.text.prompts import normalize_name

    out = []
    for ex in as_exemplars(exemplars):
        try:
            normalize_name(ex.name)
        except VocabularyError as e:
            raise ExemplarError(f"exemplar name: {e}") from None
        what = f"exemplar {shorten(ex.name)}"
        try:
            image = load_image(ex.image, max_pixels=max_pixels)
        except VildError as e:
            raise ExemplarError(f"{what}: {e}") from None
        h, w = int(image.shape[1]), int(image.shape[2])
        box = (0.0, 0.0, float(w), float(h)) if ex.box is None else check_box(ex.box, h, w, what=what)
        out.append(Exemplar(ex.name, image, box))
    return out


def encode_exemplars(teacher, exemplars: list[Exemplar]) -> tuple[list[str], list[str], torch.Tensor]:
    """Loaded exemplars -> (display names, normalised names, [K, D] rows): one row per distinct
    name (first spelling shown), the mean of its exemplars' 1x + 1.5x crop embeddings,
    re-normalised."""
    from vild.text.prompts import normalize_name

    embedded = teacher.encode_regions_batch(
        [e.image for e in exemplars], [torch.tensor([e.box], dtype=torch.float32) for e in exemplars])
    rows: dict[str, list[torch.Tensor]] = {}
    shown: dict[str, str] = {}
    for ex, emb in zip(exemplars, embedded):
        key = normalize_name(ex.name)
        shown.setdefault(key, ex.name.strip())
        rows.setdefault(key, []).append(emb[0].float())
    keys = list(rows)
    emb = torch.stack([torch.stack(rows[k]).mean(0) for k in keys])
    return [shown[k] for k in keys], keys, torch.nn.functional.normalize(emb, dim=-1)


def exemplar_vocabulary(detector, vocabulary, exemplars):
    """`Detector.encode_vocabulary` with exemplars: the text names (None: the model's default;
    an empty list: none) and the exemplar rows, as one `Vocabulary`."""
    from vild.inference.inputs import Vocabulary, is_collection
    from vild.text.prompts import normalize_name

    loaded = load_exemplars(exemplars)
    if not loaded:
        return detector.encode_vocabulary(vocabulary)
    if detector.teacher is None:
        raise ExemplarError("exemplars: embedding an example image needs the teacher, and this detector has none")
    if is_collection(vocabulary):
        vocabulary = list(vocabulary)
    text = None if vocabulary == [] else detector.encode_vocabulary(vocabulary)
    shown, keys, rows = encode_exemplars(detector.teacher, loaded)
    device = detector.vocabularies.device  # where the vocabulary's rows live
    rows = rows.to(device)
    names = list(text.names) if text is not None else []
    emb = list(text.embeddings.float()) if text is not None else []
    base = list(text.base.tolist()) if text is not None else []
    index = {normalize_name(n): i for i, n in enumerate(names)}
    for name, key, row in zip(shown, keys, rows):
        if key in index:  # text and exemplars of one name: one row, equal halves
            i = index[key]
            emb[i] = torch.nn.functional.normalize(emb[i] + row, dim=0)
        else:
            names.append(name)
            emb.append(row)
            base.append(True)  # measured: the text-head-heavy weighting finds more (module docstring)
    ids = tuple(extend_ids(text.category_ids, len(names))) if text is not None and text.category_ids else None
    return Vocabulary(tuple(names), torch.stack(emb), torch.tensor(base, dtype=torch.bool, device=device), ids)


def extend_ids(category_ids, count: int) -> list[int]:
    """The text names' category ids, then new ids after the largest for the exemplar rows that
    follow them, `count` in all."""
    ids = [int(c) for c in category_ids]
    return ids + list(range(max(ids) + 1, max(ids) + 1 + count - len(ids)))


__all__ = ["Exemplar", "ExemplarError", "as_exemplars", "check_box", "encode_exemplars",
           "exemplar_vocabulary", "extend_ids", "load_exemplars", "parse_box", "parse_exemplar_arg"]
