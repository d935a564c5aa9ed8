"""`Detector`: the user-facing ViLD API.

    det = Detector.from_pretrained()                    # the bundled ShapeWorld-OV model
    dets = det.detect(["a.png", "b.png"], vocabulary=["star", "ring"], threshold=0.3)
    regions = det.embed("a.png")                         # run the network once ...
    det.query(regions, ["red star", "blue ring"])        # ... score any text later: a matmul
    det.detect("b.png", exemplars=[Exemplar("thing", "a.png", (10, 12, 60, 58))])  # by example

A `Detector` holds one ViLD model, its teacher (for new vocabularies and the CLIP methods)
and an in-memory table of text embeddings per vocabulary entry (backed by the on-disk cache of
`vild.text`), so changing the vocabulary encodes only names it has not seen and never reloads
a model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from vild.errors import VildError, VocabularyError
from vild.inference.encoder import VocabularyEncoder, default_vocabulary, load_teacher
from vild.inference.inputs import ImageRegions, Vocabulary, as_image_list, check_post, class_names
from vild.data.images import load_image
from vild.model.methods import CROP_METHODS, DESCRIPTIONS, methods_for_mode, native_method
from vild.model.predict import MIN_INPUT_SIDE, PRECISIONS  # noqa: F401 - part of this module's API
from vild.training.checkpoint import load_model, load_vocabulary

log = logging.getLogger("vild.inference")


class Detector:
    """A ViLD model + teacher + default vocabulary, ready to detect (see module docstring).

    Build with `Detector.from_pretrained`. Thread-safe for concurrent `detect` / `query` calls
    (text encoding is serialised; the network runs without gradients).
    """

    #: Masks come back at image size (N x H x W float32): detections per image are capped so
    #: that one image's masks fit in this many bytes (a warning says when). 512 MiB is 8
    #: masks of a 16-megapixel image, 100 of a 1.3-megapixel one.
    max_mask_bytes: int = 512 * 2**20
    #: Names x attributes in one call: every pair is a label scored for every region.
    max_labels: int = 20_000

    def __init__(
        self,
        model,
        teacher,
        *,
        name: str = "custom",
        default_vocabulary: Sequence | None = None,
        default_category_ids: Sequence[int] | None = None,
        default_text_embeddings: torch.Tensor | None = None,
        base_names: Sequence[str] = (),
        method: str | None = None,
        templates: str = "vild",
        cache_dir: str | None = None,
        source: str | None = None,
        teacher_spec: str | None = None,
        num_crop_regions: int = 300,
        examples: Sequence[Path] = (),
        precision: str = "fp32",
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.teacher = teacher
        self.name = name
        self.source = source
        self.teacher_spec = teacher_spec
        self.num_crop_regions = int(num_crop_regions)
        if precision not in PRECISIONS:
            raise VildError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        #: "fp32", or "bf16": the network under autocast (scores and post-processing in fp32)
        self.precision = precision
        self.examples = tuple(Path(p) for p in examples)
        #: the text-embedding table (shared code with `OnnxDetector`)
        self.vocabularies = VocabularyEncoder(
            lambda: self.teacher, device=self.device, templates=templates, cache_dir=cache_dir,
            default_entries=default_vocabulary, default_ids=default_category_ids,
            default_embeddings=default_text_embeddings, base_names=base_names)
        self.methods: tuple[str, ...] = methods_for_mode(model.config.mode, with_teacher=teacher is not None)
        self.method = self._check_method(method or native_method(model.config.mode))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        *,
        device: str | torch.device = "cpu",
        method: str | None = None,
        teacher: str | None = None,
        weights: str | None = None,
        cache_dir: str | None = None,
        precision: str = "fp32",
    ) -> "Detector":
        """Load a registered model (default: the bundled ShapeWorld-OV ViLD-ensemble), a model
        folder (`vild train` output) or ``hf-hub:ORG/REPO``, with its teacher and default
        vocabulary. `teacher` overrides the teacher the folder names; `weights` is the folder
        or hf-hub id for registry entries that ship without weights; `method` the default
        scoring method (default: the model's own); `precision` "fp32" or "bf16" (autocast). Raises `VildError` (one line) when anything
        is missing or does not match.
        """
        from vild.device import check_device
        from vild.inference import registry

        device = check_device(device)
        resolved = registry.resolve(name_or_path, weights=weights, teacher=teacher)
        model = load_model(resolved.folder, device=device, expected=resolved.expected)
        vocab, embeddings = load_vocabulary(resolved.folder, model.config.embed_dim, required=False)
        teacher_obj = load_teacher(
            resolved.teacher, identity=resolved.teacher_identity, embed_dim=model.config.embed_dim,
            model_name=resolved.name, device=device,
            where=f"model folder {resolved.folder} (no detector.json or vocabulary.json teacher)")
        entries, ids, base = default_vocabulary(vocab, resolved.default_vocabulary)
        return cls(
            model, teacher_obj, name=resolved.name, default_vocabulary=entries,
            default_category_ids=ids, default_text_embeddings=embeddings, base_names=base,
            method=method, templates=resolved.templates, cache_dir=cache_dir,
            source=str(resolved.folder), teacher_spec=resolved.teacher, examples=resolved.examples,
            precision=precision,
        )

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.model.roi_heads.background.device

    @property
    def config(self):
        return self.model.config

    @property
    def default_vocabulary(self) -> list[str]:
        return self.vocabularies.default_names

    @property
    def default_category_ids(self) -> list[int] | None:
        return self.vocabularies.default_category_ids

    @property
    def templates(self) -> str:
        return self.vocabularies.templates

    @property
    def cache_dir(self) -> str | None:
        return self.vocabularies.cache_dir

    def info(self) -> dict:
        cfg = self.model.config
        return {
            "name": self.name,
            "source": self.source,
            "mode": cfg.mode,
            "backbone": cfg.backbone,
            "input_size": [cfg.min_size, cfg.max_size],
            "method": self.method,
            "methods": list(self.methods),
            "slow_methods": [m for m in self.methods if m in CROP_METHODS],
            "method_descriptions": {m: DESCRIPTIONS[m] for m in self.methods},
            "teacher": self.teacher_spec or getattr(self.teacher, "name", None),
            "teacher_identity": getattr(self.teacher, "identity", None),
            "embed_dim": cfg.embed_dim,
            "default_vocabulary_size": len(self.vocabularies.default_entries),
            "with_masks": cfg.with_masks,
            "device": str(self.device),
            "precision": self.precision,
        }

    def __repr__(self) -> str:
        return (f"Detector(name={self.name!r}, mode={self.model.config.mode!r}, method={self.method!r}, "
                f"vocabulary={len(self.vocabularies.default_entries)} names, device={self.device})")

    # ------------------------------------------------------------------ vocabularies
    def _check_method(self, method: str | None) -> str:
        method = method or self.method
        if method not in self.methods:
            raise VildError(
                f"method {method!r} is not available for this model (mode {self.model.config.mode!r}"
                f"{'' if self.teacher is not None else ', no teacher'}): choose from {', '.join(self.methods)}")
        return method

    def encode_vocabulary(self, vocabulary=None, *, exemplars=None, what: str = "vocabulary") -> Vocabulary:
        """Names (a list of names or synonym lists, a named vocabulary such as ``"coco"``, or
        ``"a,b,c"``) -> `Vocabulary`. Only entries not seen before are encoded. `exemplars`
        (see `vild.inference.exemplars`) add rows embedded from example images; with them, an
        empty list of names means the exemplars alone."""
        if exemplars is not None:
            from vild.inference.exemplars import exemplar_vocabulary

            return exemplar_vocabulary(self, vocabulary, exemplars)
        return self.vocabularies.encode(vocabulary, what=what)

    # ------------------------------------------------------------------ detection
    def detect(
        self,
        images,
        vocabulary=None,
        *,
        exemplars=None,
        attributes=None,
        threshold: float = 0.3,
        max_detections: int = 100,
        method: str | None = None,
        batch_size: int = 4,
    ) -> list:
        """One image or many (paths, bytes, PIL images, numpy arrays H x W x 3, tensors
        3 x H x W) -> one `Detections` per image (boxes xyxy px, scores, labels into
        ``class_names``, masks at image size, region embeddings).

        vocabulary: None (the model's default), a list of names / synonym lists, a named
        vocabulary ("coco", "shapeworld", ...). exemplars: example images of what to find
        (`Exemplar(name, image, box=None)` objects, or a dict {name: image or (image, box) or
        a list of them}), added to the vocabulary as rows of their own or averaged into the
        text name they share (`vild.inference.exemplars`). attributes: a list of attribute words: every
        (name, attribute) pair becomes a label "attribute name", scored
        Pr(name, attribute | region) = Pr(name | region) x Pr(attribute | region).
        threshold: keep scores above it; max_detections: per image, after per-class NMS.
        method: one of `methods` (default: `self.method`); "clip" and "vild-text+clip" run
        the teacher on every region's crops and are slow.
        """
        method = self._check_method(method)
        check_post(threshold, max_detections)
        if batch_size < 1:
            raise VildError("batch_size must be >= 1")
        items = as_image_list(images)
        if method in CROP_METHODS:
            log.info("method %s runs the teacher on 2 crops of up to %d regions per image: slow",
                     method, self.num_crop_regions)
        vocab = self.encode_vocabulary(vocabulary, exemplars=exemplars)
        if isinstance(attributes, (list, tuple)):  # refuse before encoding thousands of words
            self.check_labels(len(vocab.names), len(attributes))
        attrs = self.encode_vocabulary(attributes, what="attributes") if attributes is not None else None
        out = []
        for start in range(0, len(items), batch_size):  # images are decoded batch by batch
            tensors = [load_image(x) for x in items[start:start + batch_size]]
            out.extend(self._detect_tensors(tensors, vocab, attrs, method, threshold, max_detections))
        return out

    def detect_tensors(self, tensors: list[torch.Tensor], vocabulary: Vocabulary, *, attributes: Vocabulary | None = None,
                       threshold: float = 0.3, max_detections: int = 100, method: str | None = None) -> list:
        """`detect` for already loaded [3, H, W] 0..1 tensors and encoded vocabularies: one
        forward pass for all of them (the caller batches)."""
        method = self._check_method(method)
        check_post(threshold, max_detections)
        return self._detect_tensors(list(tensors), vocabulary, attributes, method, threshold, max_detections)

    def _detect_tensors(self, tensors, vocab, attrs, method, threshold, max_det) -> list:
        from vild.model.predict import predict

        if not tensors:
            return []
        self.check_labels(len(vocab.names), len(attrs.names) if attrs is not None else None)
        return predict(
            self.model, tensors, vocab.embeddings, base_mask=vocab.base, method=method,
            teacher=self.teacher, attribute_embeddings=attrs.embeddings if attrs is not None else None,
            class_names=class_names(vocab, attrs), threshold=threshold, max_detections=max_det,
            num_crop_regions=self.num_crop_regions, precision=self.precision,
            max_mask_bytes=self.max_mask_bytes,
        )

    # ------------------------------------------------------------------ on-the-fly queries
    @torch.no_grad()
    def embed(self, image, *, method: str | None = None) -> ImageRegions:
        """Run the network once on one image and keep what scoring needs: every region's box,
        embeddings and class-agnostic mask (and, for the CLIP methods, the teacher's crop
        embeddings of the top `num_crop_regions` regions). `query` then scores any text."""
        from vild.inference.queries import embed_image

        method = self._check_method(method)
        return embed_image(self, load_image(image), method)

    @torch.no_grad()
    def query(
        self,
        regions: ImageRegions,
        vocabulary=None,
        *,
        exemplars=None,
        attributes=None,
        threshold: float = 0.3,
        max_detections: int = 100,
        method: str | None = None,
    ):
        """Score `vocabulary` (and `exemplars`, `attributes`) against regions kept by `embed`: text
        encoding (cached) + a matrix product + NMS; the network does not run. Gives the same
        boxes and scores as `detect` on the same image with the same arguments."""
        if not isinstance(regions, ImageRegions):
            raise VildError(f"query needs the ImageRegions returned by embed(), got {type(regions).__name__}")
        if regions.model_id not in (0, id(self.model)):
            raise VildError("these regions were embedded by another detector")
        method = self._check_method(method or regions.method)
        if method in CROP_METHODS and regions.crop_embeddings is None:
            raise VildError(
                f"method {method!r} needs the teacher's crops of the regions: embed the image "
                f"with embed(image, method={method!r})")
        check_post(threshold, max_detections)
        vocab = self.encode_vocabulary(vocabulary, exemplars=exemplars)
        if isinstance(attributes, (list, tuple)):  # refuse before encoding thousands of words
            self.check_labels(len(vocab.names), len(attributes))
        attrs = self.encode_vocabulary(attributes, what="attributes") if attributes is not None else None
        from vild.inference.queries import score_regions

        self.check_labels(len(vocab.names), len(attrs.names) if attrs is not None else None)
        return score_regions(self, regions, vocab, attrs, method, threshold, max_detections)

    # ------------------------------------------------------------------ internals
    def check_labels(self, names: int, attributes: int | None) -> None:
        """Raise `VocabularyError` when names x attributes exceeds `max_labels`."""
        if attributes is not None and names * attributes > self.max_labels:
            raise VocabularyError(
                f"{names} names x {attributes} attributes = {names * attributes:,} labels; the limit is "
                f"{self.max_labels:,} (Detector.max_labels)")


__all__ = ["Detector", "ImageRegions", "Vocabulary"]
