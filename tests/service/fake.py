"""A small, fast detector implementing the `vild.inference.Detector` contract, for service tests.

Regions are the pure-red, pure-green and pure-blue blobs of an image; a name scores high on a
region when it contains that region's colour word, an exemplar (`vild.inference.Exemplar`) when
its box holds mostly that region's colour. It counts its calls, can sleep, can fail on
request, and fails loudly if two threads ever run it at once.
"""

from __future__ import annotations

import base64
import io
import threading
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from vild.errors import VildError, VocabularyError

COLOURS = ("red", "green", "blue")


@dataclass(frozen=True)
class FakeDetections:
    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    image_size: tuple[int, int]
    masks: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True)
class FakeRegions:
    image_size: tuple[int, int]
    boxes: torch.Tensor
    masks: torch.Tensor
    colours: tuple[str, ...]
    embeddings: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 3))


class FakeDetector:
    methods = ("native", "clip")

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.default_vocabulary = list(COLOURS) + ["square"]
        self.embed_calls = 0
        self.query_calls = 0
        self.detect_calls = 0
        self.last_call: dict = {}
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {"name": "fake", "mode": "vild", "teacher": "none", "embed_dim": 3,
                "default_vocabulary_size": len(self.default_vocabulary)}

    def _enter(self):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            if self.active > 1:
                self.active -= 1
                raise AssertionError("the detector was entered by two threads at once")

    def _leave(self):
        with self._lock:
            self.active -= 1

    @staticmethod
    def _colour_masks(image):
        if image.dtype == torch.uint8:
            image = image.float() / 255
        for c, name in enumerate(COLOURS):
            others = [o for o in range(3) if o != c]
            yield name, (image[c] > 0.6) & (image[others[0]] < 0.4) & (image[others[1]] < 0.4)

    def exemplar_colour(self, exemplar) -> str | None:
        """The colour most of an exemplar's box holds (None: no pure colour in it)."""
        image = exemplar.image
        assert isinstance(image, torch.Tensor) and image.ndim == 3, "the service hands over decoded pixels"
        h, w = image.shape[1:]
        x0, y0, x1, y1 = exemplar.box if exemplar.box is not None else (0, 0, w, h)
        crop = image[:, int(y0):int(y1), int(x0):int(x1)]
        counts = {name: int(m.sum()) for name, m in self._colour_masks(crop)}
        best = max(counts, key=counts.get)
        return best if counts[best] else None

    def embed(self, image, *, method=None) -> FakeRegions:
        self._enter()
        try:
            self.embed_calls += 1
            if self.delay:
                time.sleep(self.delay)
            assert isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3
            h, w = image.shape[1:]
            boxes, masks, colours = [], [], []
            for name, m in self._colour_masks(image):
                if m.sum() < 4:
                    continue
                ys, xs = torch.nonzero(m, as_tuple=True)
                boxes.append([float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)])
                masks.append(m.float())
                colours.append(name)
            return FakeRegions(
                image_size=(int(h), int(w)),
                boxes=torch.tensor(boxes).reshape(-1, 4),
                masks=torch.stack(masks) if masks else torch.zeros(0, h, w),
                colours=tuple(colours),
            )
        finally:
            self._leave()

    def query(self, regions, vocabulary=None, *, attributes=None, threshold=0.3, max_detections=100,
              exemplars=None):
        self._enter()
        try:
            self.query_calls += 1
            self.last_call = dict(masks=regions.masks is not None, max_detections=max_detections,
                                  **({"exemplars": exemplars} if exemplars else {}))
            return self._score(regions, vocabulary, attributes, threshold, max_detections, exemplars)
        finally:
            self._leave()

    def detect(self, images, vocabulary=None, *, attributes=None, threshold=0.3, max_detections=100, method=None,
               exemplars=None):
        if method is not None and method not in self.methods:
            raise VildError(f"unknown method {method!r}")
        self.detect_calls += 1
        self.last_call = dict(max_detections=max_detections, **({"exemplars": exemplars} if exemplars else {}))
        out = []
        for im in images:
            regions = self.embed(im)
            self._enter()
            try:
                out.append(self._score(regions, vocabulary, attributes, threshold, max_detections, exemplars))
            finally:
                self._leave()
        return out

    def _score(self, regions, vocabulary, attributes, threshold, max_detections, exemplars=None):
        vocab = list(vocabulary) if vocabulary is not None else list(self.default_vocabulary)
        shown = {}  # exemplar name -> the colour its examples hold (like the real one: by name)
        for e in exemplars or []:
            shown.setdefault(e.name, self.exemplar_colour(e))
        vocab += [n for n in shown if n not in vocab]
        if not vocab:
            raise VocabularyError("the vocabulary is empty")
        if "boom-user" in vocab:
            raise VildError("the name boom-user is not allowed")
        if "boom-internal" in vocab:
            raise RuntimeError("secret internal state /etc/passwd")
        names = list(vocab)
        if attributes:  # like the real Detector: every "attribute name" pair, scores multiplied
            names = [f"{a} {v}" for v in vocab for a in attributes]
        rows = []
        for r, colour in enumerate(regions.colours):
            for j, name in enumerate(names):
                if attributes:
                    v, a = vocab[j // len(attributes)], attributes[j % len(attributes)]
                    s = self._one(colour, v) * (0.9 if a == colour else 0.2)
                elif name in shown:
                    s = 0.9 if shown[name] == colour else 0.05
                else:
                    s = self._one(colour, name)
                if s >= threshold:
                    rows.append((s, r, j))
        rows.sort(key=lambda t: -t[0])
        rows = rows[:max_detections]
        idx = torch.tensor([r for _, r, _ in rows], dtype=torch.long)
        h, w = regions.image_size
        return FakeDetections(
            boxes=regions.boxes[idx].reshape(-1, 4),
            scores=torch.tensor([s for s, _, _ in rows], dtype=torch.float32),
            labels=torch.tensor([j for _, _, j in rows], dtype=torch.long),
            image_size=(h, w),
            masks=regions.masks[idx].reshape(-1, h, w) if regions.masks is not None else None,
            class_names=tuple(names),
        )

    @staticmethod
    def _one(colour: str, name: str) -> float:
        if colour in name:
            return 0.9
        if name == "square":
            return 0.5
        return 0.01 + (zlib.crc32(f"{colour}/{name}".encode()) % 20) / 100  # 0.01..0.20


def make_image(colour: str = "red", size: tuple[int, int] = (64, 80), box=(10, 20, 40, 50),
               fmt: str = "PNG") -> bytes:
    """A dark image with one pure-colour rectangle at box = (x1, y1, x2, y2)."""
    h, w = size
    a = np.full((h, w, 3), 30, np.uint8)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}[colour]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    """The base64 text of `data`, as a JSON request carries an image."""
    return base64.b64encode(data).decode()
