"""`OnnxDetector`: an exported detector (`vild export --format onnx`) run with onnxruntime.

    det = OnnxDetector.load("model.onnx")                      # CUDA when onnxruntime has it
    dets = det.detect(["a.png"], vocabulary=["star", "ring"], threshold=0.3)

The vocabulary is a graph input, so any names work without exporting again. Everything
around the graph is the PyTorch path's own code: images decoded by `vild.data.images.load_image`
and padded by `pad_thin_image`, names encoded by the `VocabularyEncoder` a `Detector` uses
(teacher + text cache; the teacher loads only when a name is new), and the graph's outputs
finished by `finish_detections` (box scaling, mask pasting) into the same `Detections`.
Not in the graph: attributes, the CLIP methods (they run the teacher on crops), bf16.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import torch

from vild.errors import VildError, one_line
from vild.inference.detector import Detector
from vild.inference.encoder import VocabularyEncoder, default_vocabulary, load_teacher
from vild.inference.inputs import Vocabulary, as_image_list, check_post
from vild.inference.onnx_metadata import ExportedModel, decode_metadata
from vild.model.methods import DESCRIPTIONS

log = logging.getLogger("vild.inference")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise VildError("running an ONNX model needs onnxruntime: pip install 'vild[export]'") from None
    return onnxruntime


def providers_for(device: str, available: list[str]) -> list[str]:
    """onnxruntime execution providers for `device`: "cpu"; "cuda" (refused without the CUDA
    provider); "auto" (CUDA when this onnxruntime has it, else CPU)."""
    device = str(device)
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "auto":
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    if device.split(":")[0] == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise VildError(f"--device {device}: this onnxruntime has no CUDAExecutionProvider "
                            f"(it has {', '.join(available)}); install onnxruntime-gpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise VildError(f"device {device!r}: an ONNX model runs on cpu, cuda or auto")


class OnnxDetector:
    """An exported detector + its default vocabulary + (lazily) its teacher; `detect` has the
    shape of `Detector.detect` and returns the same `Detections`. Build with `load`."""

    #: masks come back at image size: the same bound as the PyTorch `Detector`'s
    max_mask_bytes: int = Detector.max_mask_bytes
    num_crop_regions = 0  # no crop methods in a graph
    precision = "fp32"

    def __init__(self, session, exported: ExportedModel, *, source: str, teacher=None,
                 cache_dir: str | None = None) -> None:
        from vild.inference.registry import example_images

        self.session = session
        self.exported = exported
        self.source = source
        self.name = exported.name
        self.method = exported.method
        self.methods = (exported.method,)
        self.examples = tuple(example_images()) if exported.bundled else ()
        self._teacher_arg = teacher
        self._teacher = None
        self._teacher_lock = threading.Lock()
        self._inputs = {i.name for i in session.get_inputs()}
        self._outputs = [o.name for o in session.get_outputs()]
        entries, ids, base = default_vocabulary(exported.vocabulary, exported.default_vocabulary)
        self.vocabularies = VocabularyEncoder(
            self._load_teacher, templates=exported.templates, cache_dir=cache_dir, default_entries=entries,
            default_ids=ids, default_embeddings=exported.text_embeddings if exported.vocabulary else None,
            base_names=base)

    @classmethod
    def load(cls, path: str | os.PathLike, *, teacher=None, device: str = "auto", threads: int | None = None,
             cache_dir: str | None = None) -> "OnnxDetector":
        """An exported .onnx file -> `OnnxDetector`. teacher: a spec (folder, hf-hub:ORG/REPO,
        ARCH:TAG) or a loaded `Teacher`, overriding the one the file names (needed only to
        encode names the file's default vocabulary lacks); device "auto" | "cpu" | "cuda";
        threads: onnxruntime's intra-op threads. Every problem is one `VildError` line."""
        ort = import_onnxruntime()
        path = Path(path).expanduser()
        if not path.is_file():
            raise VildError(f"ONNX model not found: {path}" if not path.exists() else f"{path} is not a file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        providers = providers_for(device, ort.get_available_providers())
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - truncated, not ONNX, unsupported operators
            raise VildError(f"{path} is not a readable ONNX model ({one_line(e)})") from None
        exported = decode_metadata(dict(session.get_modelmeta().custom_metadata_map), str(path))
        return cls(session, exported, source=str(path), teacher=teacher, cache_dir=cache_dir)

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.exported.config

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())

    @property
    def default_vocabulary(self) -> list[str]:
        return self.vocabularies.default_names

    @property
    def default_category_ids(self) -> list[int] | None:
        return self.vocabularies.default_category_ids

    @property
    def teacher(self):
        """The teacher, loaded on first use (only new names need it)."""
        return self._load_teacher()

    def _load_teacher(self):
        with self._teacher_lock:
            if self._teacher is None:
                arg, e = self._teacher_arg, self.exported
                if arg is not None and not isinstance(arg, (str, os.PathLike)):
                    self._teacher = arg  # an already loaded Teacher
                else:
                    spec = os.fspath(arg) if arg is not None else e.teacher
                    self._teacher = load_teacher(spec, identity=e.teacher_identity, embed_dim=e.config.embed_dim,
                                                 model_name=e.name, where=f"ONNX model {self.source}")
            return self._teacher

    def info(self) -> dict:
        cfg = self.config
        return {
            "name": self.name, "source": self.source, "runtime": "onnxruntime", "mode": cfg.mode,
            "backbone": cfg.backbone, "input_size": [cfg.min_size, cfg.max_size], "method": self.method,
            "methods": list(self.methods), "slow_methods": [],
            "method_descriptions": {self.method: DESCRIPTIONS[self.method]},
            "teacher": self.exported.teacher, "teacher_identity": self.exported.teacher_identity,
            "embed_dim": cfg.embed_dim, "default_vocabulary_size": len(self.vocabularies.default_entries),
            "with_masks": cfg.with_masks, "max_detections": self.exported.max_detections,
            "device": ",".join(self.providers), "precision": self.precision,
        }

    def __repr__(self) -> str:
        return (f"OnnxDetector(name={self.name!r}, method={self.method!r}, "
                f"vocabulary={len(self.vocabularies.default_entries)} names, providers={self.providers})")

    # ------------------------------------------------------------------ detection
    def encode_vocabulary(self, vocabulary=None, *, exemplars=None, what: str = "vocabulary") -> Vocabulary:
        """As `Detector.encode_vocabulary` (the same code, exemplars included: the vocabulary
        is an input of the graph, so example images need no re-export)."""
        if exemplars is not None:
            from vild.inference.exemplars import exemplar_vocabulary

            return exemplar_vocabulary(self, vocabulary, exemplars)
        return self.vocabularies.encode(vocabulary, what=what)

    def check_labels(self, names: int, attributes: int | None) -> None:
        if attributes is not None:
            raise VildError("attributes are not part of the exported graph: use the PyTorch Detector")

    def detect(self, images, vocabulary=None, *, exemplars=None, attributes=None, threshold: float = 0.3,
               max_detections: int = 100, method: str | None = None, batch_size: int = 4) -> list:
        """As `Detector.detect`: one image or many -> one `Detections` per image."""
        from vild.data.images import load_image

        self._check_call(attributes, method, threshold, max_detections)
        if batch_size < 1:
            raise VildError("batch_size must be >= 1")
        vocab = self.encode_vocabulary(vocabulary, exemplars=exemplars)
        items = as_image_list(images)
        out = []
        for start in range(0, len(items), batch_size):  # images are decoded batch by batch
            tensors = [load_image(x) for x in items[start:start + batch_size]]
            out.extend(self._detect_tensors(tensors, vocab, threshold, max_detections))
        return out

    def detect_tensors(self, tensors: list[torch.Tensor], vocabulary: Vocabulary, *, attributes=None,
                       threshold: float = 0.3, max_detections: int = 100, method: str | None = None) -> list:
        """As `Detector.detect_tensors`: loaded [3, H, W] 0..1 tensors, an encoded vocabulary."""
        self._check_call(attributes, method, threshold, max_detections)
        return self._detect_tensors(list(tensors), vocabulary, threshold, max_detections)

    def _check_call(self, attributes, method, threshold, max_detections) -> None:
        if attributes is not None:
            self.check_labels(0, 1)
        if method is not None and method != self.method:
            raise VildError(f"method {method!r}: this ONNX model was exported with method {self.method!r} "
                            "(export again with --method to change it)")
        check_post(threshold, max_detections)
        if max_detections > self.exported.max_detections:
            raise VildError(f"max_detections {max_detections}: this ONNX model returns at most "
                            f"{self.exported.max_detections} (export again with a larger --max-detections)")

    def _check_vocabulary(self, vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
        emb, base, d = vocab.embeddings, vocab.base, self.config.embed_dim
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[1] != d or emb.shape[0] == 0:
            shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise VildError(f"text embeddings must be [C, {d}] with C >= 1 for this model, got {shape}")
        if base.shape != (emb.shape[0],):
            raise VildError(f"base flags must be [{emb.shape[0]}] (one per category), got {tuple(base.shape)}")
        return emb.detach().float().cpu(), base.detach().bool().cpu()

    @torch.no_grad()
    def _detect_tensors(self, tensors, vocab: Vocabulary, threshold: float, max_detections: int) -> list:
        from vild.model.postprocess import finish_detections
        from vild.model.predict import pad_thin_image

        emb, base = self._check_vocabulary(vocab)
        feed = {"text_embeddings": emb.numpy(), "base_mask": base.numpy(),
                "score_threshold": torch.tensor(float(threshold)).numpy()}
        out = []
        for tensor in tensors:
            padded, size = pad_thin_image(tensor.float().cpu(), self.config)
            feed["image"] = padded.contiguous().numpy()
            values = self.session.run(self._outputs, {k: v for k, v in feed.items() if k in self._inputs})
            got = {name: torch.from_numpy(v) for name, v in zip(self._outputs, values)}
            first = slice(0, max_detections)
            masks = got.get("masks")
            image_embeddings = got.get("image_embeddings")
            out.append(finish_detections(
                got["boxes"][first], got["scores"][first], got["labels"][first],
                masks[first] if masks is not None else None, got["embeddings"][first],
                image_embeddings[first] if image_embeddings is not None else None,
                input_size=tuple(int(s) for s in got["input_size"]), padded_size=tuple(padded.shape[-2:]),
                image_size=size, class_names=vocab.names, output_device="cpu",
                max_mask_bytes=self.max_mask_bytes))
        return out


__all__ = ["OnnxDetector", "import_onnxruntime", "providers_for"]
