"""Where `Detector.from_pretrained(name_or_path)` finds a model, its teacher and its vocabulary.

A *model folder* holds::

    model_config.json             ViLDConfig                                   (required)
    model.safetensors             the detector's weights                       (required)
    vocabulary.json               default vocabulary: names, synonyms, category ids, base
    text_embeddings.safetensors   flags, teacher {name, identity} + its text embeddings
    detector.json                 {"format": "vild-detector/1", "name", "teacher",
                                   "teacher_identity", "templates", "default_vocabulary",
                                   "description"}                              (optional)

`detector.json` says which teacher the model needs: ``"teacher"`` is a folder *relative to the
model folder* (the bundled model: ``"../../teachers/shapeworld-clip"``), an absolute folder,
``hf-hub:ORG/REPO`` or an open_clip ``ARCH:TAG``; ``"teacher_identity"`` is the hash of its
weights (checked at load). Without detector.json the teacher recorded by `vild train` in
vocabulary.json is used (its path as typed at training, tried as is and relative to the model
folder).

Registered names:

* ``shapeworld-vild-ensemble`` (the default): shipped inside the package under
  ``vild/assets/models/`` with its teacher under ``vild/assets/teachers/`` and example images
  under ``vild/assets/examples/``; `vild.inference.bundle.bundle_model` writes them.
* ``shapeworld-vild-tower``: bundled beside it, the same world's ViLD-text model with a
  distillation head on a frozen copy of the teacher's own image tower (`vild distill-tower`;
  docs/distillation.md section 18): stronger on novel categories, about 8x slower on a CPU,
  not exportable.
* ``vild-r50-vitb32``, ``vild-r152-vitb32``: the official LVIS recipes (`lvis-r50`,
  `lvis-r152` presets) with a CLIP ViT-B/32 teacher. No weights ship with vild: give a model
  folder or ``hf-hub:ORG/REPO`` (argument ``weights=`` / ``vild detect --weights``, or the
  environment variable named in the entry).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vild.errors import VildError, WeightsUnavailableError
from vild.training.model_files import MODEL_CONFIG, MODEL_WEIGHTS, TEXT_EMBEDDINGS, VOCABULARY

ASSETS_DIR = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL = "shapeworld-vild-ensemble"
TOWER_MODEL = "shapeworld-vild-tower"
DETECTOR_FILE = "detector.json"
DETECTOR_FORMAT = "vild-detector/1"
MODEL_FILES = (MODEL_CONFIG, MODEL_WEIGHTS, VOCABULARY, TEXT_EMBEDDINGS, DETECTOR_FILE)
TEACHER_FILES = ("open_clip_config.json", "open_clip_model.safetensors")
BUNDLE_LIMIT_BYTES = 30 * 1024 * 1024


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    bundled: bool
    model_dir: str | None = None  # bundled: relative to ASSETS_DIR
    teacher: str | None = None  # teacher spec used when the folder does not name one
    preset: str | None = None  # the training preset the weights must come from
    expected: dict = field(default_factory=dict)  # ViLDConfig fields the weights must match
    default_vocabulary: str | None = None  # named vocabulary when the folder has none
    env_var: str | None = None  # where a user points at the weights

    @property
    def how_to_get(self) -> str:
        if self.bundled:
            return "ships with vild"
        return (f"weights=FOLDER|hf-hub:ORG/REPO or ${self.env_var}; train with "
                f"`vild train --preset {self.preset} --teacher {self.teacher} ...`")


REGISTRY: dict[str, RegistryEntry] = {
    DEFAULT_MODEL: RegistryEntry(
        name=DEFAULT_MODEL,
        description="ViLD-ensemble trained on ShapeWorld-OV with its ShapeWorld CLIP teacher (bundled, CPU)",
        bundled=True,
        model_dir=f"models/{DEFAULT_MODEL}",
    ),
    TOWER_MODEL: RegistryEntry(
        name=TOWER_MODEL,
        description="ViLD-ensemble whose distillation head reads the teacher's own image tower (vild "
                    "distill-tower), ShapeWorld-OV (bundled, CPU; stronger on novel categories, slower)",
        bundled=True,
        model_dir=f"models/{TOWER_MODEL}",
    ),
    "vild-r50-vitb32": RegistryEntry(
        name="vild-r50-vitb32",
        description="ViLD R50-FPN, LVIS recipe, CLIP ViT-B/32 teacher (weights not included)",
        bundled=False,
        teacher="ViT-B-32:openai",
        preset="lvis-r50",
        expected={"backbone": "resnet50", "embed_dim": 512},
        default_vocabulary="coco",
        env_var="VILD_MODEL_VILD_R50_VITB32",
    ),
    "vild-r152-vitb32": RegistryEntry(
        name="vild-r152-vitb32",
        description="ViLD R152-FPN, LVIS recipe, CLIP ViT-B/32 teacher (weights not included)",
        bundled=False,
        teacher="ViT-B-32:openai",
        preset="lvis-r152",
        expected={"backbone": "resnet152", "embed_dim": 512},
        default_vocabulary="coco",
        env_var="VILD_MODEL_VILD_R152_VITB32",
    ),
}


@dataclass(frozen=True)
class ResolvedModel:
    """Everything `Detector.from_pretrained` needs to load a model."""

    name: str
    folder: Path
    teacher: str | None  # spec for Teacher.load, already resolved against the folder
    teacher_identity: str | None
    templates: str = "vild"
    default_vocabulary: str | None = None
    expected: dict = field(default_factory=dict)
    examples: tuple[Path, ...] = ()
    bundled: bool = False


def assets_dir() -> Path:
    """The package's asset folder (``$VILD_ASSETS_DIR`` overrides, for tests and packaging)."""
    override = os.environ.get("VILD_ASSETS_DIR")
    return Path(override).expanduser() if override else ASSETS_DIR


def example_images() -> list[Path]:
    """The example images shipped with the bundled model (may be empty)."""
    folder = assets_dir() / "examples"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def is_installed(entry: RegistryEntry) -> bool:
    if not entry.bundled:
        return False
    folder = assets_dir() / entry.model_dir
    return all((folder / f).is_file() for f in (MODEL_CONFIG, MODEL_WEIGHTS))


def list_models() -> list[dict]:
    """One row per registered model: name, description, available (bool), how to get it."""
    rows = []
    for entry in REGISTRY.values():
        available = is_installed(entry) if entry.bundled else bool(os.environ.get(entry.env_var or ""))
        rows.append({"name": entry.name, "description": entry.description,
                     "available": available, "how": entry.how_to_get, "default": entry.name == DEFAULT_MODEL})
    return rows


def read_detector_json(folder: Path) -> dict:
    path = folder / DETECTOR_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise VildError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise VildError(f"{path} must hold a JSON object")
    fmt = data.get("format", DETECTOR_FORMAT)
    if fmt != DETECTOR_FORMAT:
        raise VildError(f"{path}: unknown format {fmt!r} (this vild reads {DETECTOR_FORMAT})")
    return data


def _read_vocabulary_teacher(folder: Path) -> tuple[str | None, str | None]:
    path = folder / VOCABULARY
    if not path.is_file():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise VildError(f"{path} is not valid JSON ({e})") from None
    teacher = data.get("teacher") if isinstance(data, dict) else None
    if not isinstance(teacher, dict):
        return None, None
    return teacher.get("name"), teacher.get("identity")


def _looks_like_path(spec: str) -> bool:
    return (spec.startswith((".", "/", "~")) or os.sep in spec
            or (os.altsep is not None and os.altsep in spec)) and not spec.startswith("hf-hub:")


def resolve_teacher_spec(spec: str, folder: Path, *, relative_to_folder: bool) -> str:
    """A teacher spec recorded in a model folder -> a spec for `Teacher.load`.

    hf-hub: and ARCH:TAG pass through. A relative folder is relative to the model folder
    (detector.json) or, as `vild train` recorded it, to the directory training ran in; the
    latter is tried as is and then against the model folder."""
    spec = str(spec).strip()
    if spec.startswith("hf-hub:"):
        return spec
    candidate = Path(spec).expanduser()
    if candidate.is_absolute():
        return str(candidate)
    inside = folder / candidate
    if relative_to_folder:
        return str(inside.resolve()) if inside.exists() else str(inside)
    if candidate.exists():
        return str(candidate.resolve())
    if inside.exists():
        return str(inside.resolve())
    if _looks_like_path(spec):
        raise WeightsUnavailableError(
            f"model folder {folder} was trained with teacher {spec!r}, which is not found here "
            "(neither from the working directory nor from the model folder): pass the teacher "
            "(teacher=... / --teacher FOLDER|hf-hub:ORG/REPO|ARCH:TAG)")
    return spec


def _folder_model(folder: Path, name: str, *, teacher: str | None, entry: RegistryEntry | None = None) -> ResolvedModel:
    if not folder.exists():
        raise WeightsUnavailableError(f"model folder {folder} does not exist")
    if not folder.is_dir():
        raise WeightsUnavailableError(
            f"{folder} is a file, not a model folder ({MODEL_CONFIG} + {MODEL_WEIGHTS})")
    missing = [f for f in (MODEL_CONFIG, MODEL_WEIGHTS) if not (folder / f).is_file()]
    if missing:
        raise WeightsUnavailableError(
            f"model folder {folder} is incomplete: {' and '.join(missing)} missing "
            f"(a model folder from `vild train` holds {MODEL_CONFIG} and {MODEL_WEIGHTS})")
    meta = read_detector_json(folder)
    voc_teacher, voc_identity = _read_vocabulary_teacher(folder)
    identity = meta.get("teacher_identity") or voc_identity
    if teacher:
        resolved = os.fspath(teacher)
    elif meta.get("teacher"):
        resolved = resolve_teacher_spec(meta["teacher"], folder, relative_to_folder=True)
    elif voc_teacher:
        resolved = resolve_teacher_spec(voc_teacher, folder, relative_to_folder=False)
    else:
        resolved = entry.teacher if entry else None
    return ResolvedModel(
        name=entry.name if entry is not None else (meta.get("name") or name),
        folder=folder,
        teacher=resolved,
        teacher_identity=identity,
        templates=meta.get("templates", "vild"),
        default_vocabulary=meta.get("default_vocabulary") or (entry.default_vocabulary if entry else None),
        expected=dict(entry.expected) if entry else {},
        examples=tuple(example_images()) if entry is not None and entry.bundled else (),
        bundled=bool(entry is not None and entry.bundled),
    )


def _download_hf(repo: str) -> Path:
    """A model folder from the Hugging Face Hub (cached by huggingface_hub)."""
    repo = repo.strip()
    if repo.count("/") != 1:
        raise WeightsUnavailableError(f"hf-hub:{repo}: expected hf-hub:ORG/REPO")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise WeightsUnavailableError("hf-hub: models need the huggingface_hub package (pip install huggingface_hub)") from None
    try:
        path = snapshot_download(repo, allow_patterns=list(MODEL_FILES))
    except Exception as e:  # noqa: BLE001 - any failure means "no weights"
        from vild.teacher.factory import _download_reason, _one_line

        reason = _download_reason(e) or _one_line(e)
        raise WeightsUnavailableError(
            f"could not download model hf-hub:{repo}: {reason}; download the folder and pass its path") from None
    return Path(path)


def _model_source(spec: str) -> Path:
    if spec.startswith("hf-hub:"):
        return _download_hf(spec[len("hf-hub:"):])
    return Path(spec).expanduser()


def resolve(name_or_path: str | os.PathLike | None = None, *, weights: str | None = None,
            teacher: str | None = None) -> ResolvedModel:
    """A registered name, a model folder or ``hf-hub:ORG/REPO`` -> `ResolvedModel`.

    Raises `WeightsUnavailableError` (one line) when the weights are not there: the bundled
    model not installed, a real-world entry without `weights` / its environment variable, a
    folder that does not exist or lacks files.
    """
    name = DEFAULT_MODEL if name_or_path is None else os.fspath(name_or_path).strip()
    if not name:
        raise WeightsUnavailableError("empty model name: give a registered name or a model folder")
    entry = REGISTRY.get(name)
    if entry is not None and entry.bundled:
        folder = assets_dir() / entry.model_dir
        if weights:
            folder = _model_source(weights)
        elif not is_installed(entry):
            raise WeightsUnavailableError(
                f"the bundled model {name!r} is not installed in this copy of vild "
                f"({folder} has no {MODEL_WEIGHTS}); reinstall vild, or pass a model folder "
                "from `vild train` (--model DIR)")
        return _folder_model(folder, name, teacher=teacher, entry=entry)
    if entry is not None:
        source = weights or os.environ.get(entry.env_var or "")
        if not source:
            raise WeightsUnavailableError(
                f"model {name!r} needs weights that do not ship with vild (the official ViLD "
                f"checkpoints are TensorFlow): train one with `vild train --preset {entry.preset} "
                f"--teacher {entry.teacher} ...` and pass its folder (--weights DIR, weights=DIR) "
                f"or hf-hub:ORG/REPO, or set {entry.env_var}=DIR")
        return _folder_model(_model_source(source), name, teacher=teacher, entry=entry)
    if name.startswith("hf-hub:"):
        return _folder_model(_download_hf(name[len("hf-hub:"):]), name, teacher=teacher)
    path = Path(name).expanduser()
    if not path.exists() and not _looks_like_path(name):
        raise WeightsUnavailableError(
            f"unknown model {name!r}: not a registered name ({', '.join(REGISTRY)}), "
            "a model folder or hf-hub:ORG/REPO")
    return _folder_model(path, path.name, teacher=teacher)


def __getattr__(name: str):
    """`bundle_model` (which writes the bundled assets) lives in `vild.inference.bundle`; the
    old `vild.inference.registry.bundle_model` still works, imported on first use because that
    module imports this one."""
    if name == "bundle_model":
        from vild.inference.bundle import bundle_model

        return bundle_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
