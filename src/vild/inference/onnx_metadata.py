"""What an exported ONNX detector carries besides its graph: the model folder's config,
default vocabulary with its text embeddings, and teacher reference, as ONNX metadata
(string key -> string value), so that one .onnx file is all `vild detect --onnx` needs.

    vild.format            "vild-onnx/1"
    vild.detector          JSON: name, description, method, max_detections, teacher,
                           teacher_identity, templates, default_vocabulary, bundled
    vild.model_config      JSON: the ViLDConfig (model_config.json)
    vild.vocabulary        JSON: vocabulary.json, when the model folder has one
    vild.text_embeddings   base64 of a safetensors file {"embeddings": [C, D] float32}

`vild.export` writes it (`encode_metadata`); `vild.inference.onnx` reads it
(`decode_metadata`). The teacher is a spec for `Teacher.load`; a teacher folder shipped in
vild's assets is written ``assets:RELATIVE/PATH`` so that the file works from any install.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vild.errors import VildError, one_line

ONNX_FORMAT = "vild-onnx/1"
KEY_FORMAT = "vild.format"
KEY_DETECTOR = "vild.detector"
KEY_CONFIG = "vild.model_config"
KEY_VOCABULARY = "vild.vocabulary"
KEY_TEXT = "vild.text_embeddings"
ASSETS_PREFIX = "assets:"


@dataclass(frozen=True)
class ExportedModel:
    """The metadata of an exported detector, decoded."""

    name: str
    config: object  # ViLDConfig
    method: str
    max_detections: int
    teacher: str | None
    teacher_identity: str | None
    templates: str = "vild"
    default_vocabulary: str | None = None
    vocabulary: dict | None = None
    text_embeddings: torch.Tensor | None = None
    bundled: bool = False
    description: str = ""


def portable_teacher(spec: str | None) -> str | None:
    """A teacher spec as the export records it: a folder inside vild's assets relative to them."""
    from vild.inference.registry import assets_dir

    if not spec:
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        try:
            return ASSETS_PREFIX + path.resolve().relative_to(assets_dir().resolve()).as_posix()
        except ValueError:
            return str(path.resolve())
    return spec


def teacher_spec(recorded: str | None) -> str | None:
    """A recorded teacher spec -> one for `Teacher.load`."""
    from vild.inference.registry import assets_dir

    if recorded and recorded.startswith(ASSETS_PREFIX):
        return str(assets_dir() / recorded[len(ASSETS_PREFIX):])
    return recorded


def encode_metadata(exported: ExportedModel) -> dict[str, str]:
    from safetensors.torch import save

    from vild.io import config_to_dict

    detector = {"name": exported.name, "description": exported.description, "method": exported.method,
                "max_detections": exported.max_detections, "teacher": portable_teacher(exported.teacher),
                "teacher_identity": exported.teacher_identity, "templates": exported.templates,
                "default_vocabulary": exported.default_vocabulary, "bundled": exported.bundled}
    meta = {KEY_FORMAT: ONNX_FORMAT, KEY_DETECTOR: json.dumps(detector),
            KEY_CONFIG: json.dumps(config_to_dict(exported.config))}
    if exported.vocabulary is not None and exported.text_embeddings is not None:
        meta[KEY_VOCABULARY] = json.dumps(exported.vocabulary)
        blob = save({"embeddings": exported.text_embeddings.detach().float().cpu().contiguous()})
        meta[KEY_TEXT] = base64.b64encode(blob).decode("ascii")
    return meta


def decode_metadata(meta: dict[str, str], source: str) -> ExportedModel:
    """ONNX metadata -> `ExportedModel`; anything missing or malformed is one `VildError` line
    naming `source` (the file)."""
    from safetensors.torch import load

    from vild.io import config_from_dict
    from vild.model import ViLDConfig

    fmt = meta.get(KEY_FORMAT)
    if fmt is None:
        raise VildError(f"{source} is an ONNX file but not a vild export (no {KEY_FORMAT} metadata): "
                        "write one with `vild export --format onnx`")
    if fmt != ONNX_FORMAT:
        raise VildError(f"{source}: unknown format {fmt!r} (this vild reads {ONNX_FORMAT})")
    try:
        detector = json.loads(meta[KEY_DETECTOR])
        config = config_from_dict(ViLDConfig, json.loads(meta[KEY_CONFIG]))
        vocabulary = json.loads(meta[KEY_VOCABULARY]) if KEY_VOCABULARY in meta else None
        text = load(base64.b64decode(meta[KEY_TEXT]))["embeddings"] if KEY_TEXT in meta else None
        return ExportedModel(
            name=str(detector["name"]), config=config, method=str(detector["method"]),
            max_detections=int(detector["max_detections"]), teacher=teacher_spec(detector.get("teacher")),
            teacher_identity=detector.get("teacher_identity"), templates=detector.get("templates", "vild"),
            default_vocabulary=detector.get("default_vocabulary"), vocabulary=vocabulary,
            text_embeddings=text, bundled=bool(detector.get("bundled")),
            description=str(detector.get("description") or ""))
    except VildError as e:
        raise VildError(f"{source}: vild metadata is malformed ({e})") from None
    except Exception as e:  # noqa: BLE001 - missing keys, bad JSON, bad base64 / safetensors
        raise VildError(f"{source}: vild metadata is malformed ({type(e).__name__}: {one_line(e)})") from None
