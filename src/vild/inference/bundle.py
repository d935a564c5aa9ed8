"""Writing the package's bundled models: a trained model folder, its teacher and example
images copied into ``vild/assets`` with a ``detector.json`` (`vild.inference.registry` reads
them back)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from vild.errors import VildError
from vild.inference.registry import (
    BUNDLE_LIMIT_BYTES, DEFAULT_MODEL, DETECTOR_FILE, DETECTOR_FORMAT, MODEL_FILES, REGISTRY, TEACHER_FILES,
    assets_dir)
from vild.training.model_files import MODEL_CONFIG, MODEL_WEIGHTS


def _copy_weights(src: Path, dst: Path, half: bool) -> None:
    """Copy a safetensors file, optionally storing floating-point tensors as float16 (they load
    back into float32 parameters; halves the size)."""
    if not half:
        shutil.copy2(src, dst)
        return
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    import torch

    state = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(dst), metadata=meta or {"format": "pt"})


def bundle_model(model_dir: str | os.PathLike, teacher_dir: str | os.PathLike, *,
                 examples=(), name: str = DEFAULT_MODEL, teacher_name: str = "shapeworld-clip",
                 assets: str | os.PathLike | None = None, limit_bytes: int = BUNDLE_LIMIT_BYTES,
                 half: bool = False, description: str | None = None) -> Path:
    """Copy a trained model folder, its teacher folder and example images into the package
    assets (``assets/models/NAME``, ``assets/teachers/TEACHER_NAME``, ``assets/examples``) and
    write ``detector.json`` pointing at the teacher (with the hash of the weights as written).
    `half` stores the model's and the teacher's weights as float16 (half the size; they load
    back as float32; text embeddings move by ~1e-4). Refuses more than `limit_bytes` in total.
    Returns the model folder written."""
    from vild.teacher import Teacher

    model_dir, teacher_dir = Path(model_dir), Path(teacher_dir)
    root = Path(assets) if assets is not None else assets_dir()
    for f in (MODEL_CONFIG, MODEL_WEIGHTS):
        if not (model_dir / f).is_file():
            raise VildError(f"{model_dir} is not a finished model folder: {f} is missing")
    for f in TEACHER_FILES:
        if not (teacher_dir / f).is_file():
            raise VildError(f"{teacher_dir} is not a teacher folder: {f} is missing")
    example_files = [Path(e) for e in examples]
    for e in example_files:
        if not e.is_file():
            raise VildError(f"example image not found: {e}")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=root))
    try:
        model_tmp, teacher_tmp = staging / "model", staging / "teacher"
        model_tmp.mkdir()
        teacher_tmp.mkdir()
        for f in MODEL_FILES[:4]:
            if (model_dir / f).is_file():
                if f == MODEL_WEIGHTS:
                    _copy_weights(model_dir / f, model_tmp / f, half)
                else:
                    shutil.copy2(model_dir / f, model_tmp / f)
        shutil.copy2(teacher_dir / TEACHER_FILES[0], teacher_tmp / TEACHER_FILES[0])
        _copy_weights(teacher_dir / TEACHER_FILES[1], teacher_tmp / TEACHER_FILES[1], half)
        files = [p for p in staging.rglob("*") if p.is_file()] + example_files
        total = sum(p.stat().st_size for p in files)
        if total > limit_bytes:
            raise VildError(f"the bundle would be {total / 2**20:.1f} MiB, more than the "
                            f"{limit_bytes / 2**20:.0f} MiB limit" + ("" if half else " (try half=True)"))
        teacher = Teacher.load(teacher_tmp)
        meta = {
            "format": DETECTOR_FORMAT,
            "name": name,
            "description": description or (REGISTRY[name].description if name in REGISTRY else name),
            "teacher": f"../../teachers/{teacher_name}",
            "teacher_identity": teacher.identity,
            "templates": "vild",
        }
        (model_tmp / DETECTOR_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for tmp, folder in ((model_tmp, root / "models" / name), (teacher_tmp, root / "teachers" / teacher_name)):
            folder.parent.mkdir(parents=True, exist_ok=True)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if example_files:
        ex = root / "examples"
        ex.mkdir(parents=True, exist_ok=True)
        for e in example_files:
            shutil.copy2(e, ex / e.name)
    return root / "models" / name
