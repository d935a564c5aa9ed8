"""Inference for users: `Detector` (load, detect, on-the-fly queries), `OnnxDetector` (an
exported graph run by onnxruntime), image loading, drawing,
conversions, the model registry and `vild detect`.

    from vild.inference import Detector, Exemplar, ImageRegions, load_image

Importing this package is light (no torch); the names below load their module on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = [
    "Detector",
    "OnnxDetector",
    "Exemplar",
    "ImageRegions",
    "Vocabulary",
    "load_image",
    "draw_detections",
    "list_models",
    "resolve_vocabulary",
]

_WHERE = {
    "Detector": "detector",
    "OnnxDetector": "onnx",
    "Exemplar": "exemplars",
    "ImageRegions": "detector",
    "Vocabulary": "detector",
    "load_image": "vild.data.images",
    "draw_detections": "draw",
    "list_models": "registry",
    "resolve_vocabulary": "vocabularies",
}

if TYPE_CHECKING:  # pragma: no cover
    from vild.inference.detector import Detector, ImageRegions, Vocabulary
    from vild.inference.onnx import OnnxDetector
    from vild.inference.exemplars import Exemplar
    from vild.inference.draw import draw_detections
    from vild.data.images import load_image
    from vild.inference.registry import list_models
    from vild.inference.vocabularies import resolve_vocabulary


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        where = _WHERE[name]
        module = importlib.import_module(where if "." in where else f"vild.inference.{where}")
        return getattr(module, name)
    raise AttributeError(f"module 'vild.inference' has no attribute {name!r}")
