"""The on-disk teacher folder (open_clip local-dir layout) and the weights identity.

Split from `vild.teacher.teacher` so training (`vild.teacher.train`) can write a folder
without the loading code; `Teacher.save` and `Teacher.load` use the same names.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vild.errors import VildError

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
# What open_clip itself accepts as the weights file of a local-dir / hf-hub folder.
CHECKPOINT_PATTERNS = ("*.safetensors", "*.bin", "*.pth")


def weights_identity(model: torch.nn.Module) -> str:
    """A stable short hash of a model's weights (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(str(t.dtype).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def save_teacher_folder(model: torch.nn.Module, path: str | os.PathLike, *, model_cfg: dict,
                        preprocess_cfg: dict, info: dict | None = None) -> Path:
    """Write an open_clip folder atomically: open_clip_config.json + open_clip_model.safetensors
    (+ vild_teacher.json with `info` if given). The files are written to a hidden sibling
    folder and renamed into place, so `path` is either absent/old or complete, never half."""
    from safetensors.torch import save_file

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise VildError(f"{path} exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / CONFIG_NAME).is_file():
        raise VildError(f"{path} exists and is not a teacher folder; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        if info is not None:
            (tmp / "vild_teacher.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
