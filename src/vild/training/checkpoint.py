"""Checkpoints: safetensors weights + JSON configs, written atomically, never unpickled."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from vild.errors import VildError
from vild.io import atomic_write_text, load_config, save_config
from vild.model import ViLDConfig, ViLDDetector, build_detector

MODEL_CONFIG = "model_config.json"
MODEL_WEIGHTS = "model.safetensors"
VOCABULARY = "vocabulary.json"
TEXT_EMBEDDINGS = "text_embeddings.safetensors"
RESUME_DIR = "resume"


def save_weights(model: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp))
    tmp.replace(path)


def save_model(folder: str | Path, model: ViLDDetector) -> None:
    """A loadable model folder: model_config.json + model.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / MODEL_WEIGHTS)
    save_config(folder / MODEL_CONFIG, model.config)


def load_model(folder: str | Path, *, device: str = "cpu") -> ViLDDetector:
    folder = Path(folder)
    for name in (MODEL_CONFIG, MODEL_WEIGHTS):
        if not (folder / name).is_file():
            raise VildError(f"{folder} is not a vild model folder: {name} is missing")
    config = load_config(ViLDConfig, folder / MODEL_CONFIG)
    model = build_detector(config)
    try:
        state = load_file(str(folder / MODEL_WEIGHTS), device=device)
    except Exception as e:
        raise VildError(f"cannot read {folder / MODEL_WEIGHTS}: {e}") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise VildError(
            f"{folder / MODEL_WEIGHTS} does not match {MODEL_CONFIG}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    return model.to(device).eval()


def save_vocabulary(folder: str | Path, vocabulary: dict, text_embeddings: torch.Tensor) -> None:
    """vocabulary.json (names, synonyms, category ids, base flags, teacher) + its embeddings."""
    folder = Path(folder)
    atomic_write_text(folder / VOCABULARY, json.dumps(vocabulary, indent=2) + "\n")
    tmp = folder / f".{TEXT_EMBEDDINGS}.tmp"
    save_file({"embeddings": text_embeddings.contiguous().float().cpu()}, str(tmp))
    tmp.replace(folder / TEXT_EMBEDDINGS)


def load_vocabulary(folder: str | Path) -> tuple[dict, torch.Tensor]:
    folder = Path(folder)
    if not (folder / VOCABULARY).is_file() or not (folder / TEXT_EMBEDDINGS).is_file():
        raise VildError(f"{folder} has no saved vocabulary ({VOCABULARY}, {TEXT_EMBEDDINGS})")
    vocabulary = json.loads((folder / VOCABULARY).read_text())
    embeddings = load_file(str(folder / TEXT_EMBEDDINGS))["embeddings"]
    if embeddings.shape[0] != len(vocabulary["names"]):
        raise VildError(f"{folder}: {TEXT_EMBEDDINGS} rows do not match {VOCABULARY}")
    return vocabulary, embeddings


# ------------------------------------------------------------------- resumable training state
def save_resume_state(folder: Path, model, optimizer, step: int, train_config) -> None:
    """Everything needed to continue exactly: weights, optimiser buffers, step, RNG states."""
    final = folder / RESUME_DIR
    tmp = folder / f".{RESUME_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / MODEL_WEIGHTS)
    opt_state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in opt_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {
        "step": step,
        "param_groups": opt_state["param_groups"],
        "scalars": scalars,
        "python_rng": repr(random.getstate()),
        "numpy_rng": np.random.get_state()[1].tolist(),
    }
    atomic_write_text(tmp / "state.json", json.dumps(meta) + "\n")
    save_config(tmp / "train_config.json", train_config)
    old = folder / f".{RESUME_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_resume_state(folder: Path, model, optimizer) -> int | None:
    """Restore a resume state into model and optimizer; returns the step to continue from."""
    final = folder / RESUME_DIR
    if not (final / "state.json").is_file():
        old = folder / f".{RESUME_DIR}.old"  # killed between the two renames
        if (old / "state.json").is_file():
            old.rename(final)
        else:
            return None
    meta = json.loads((final / "state.json").read_text())
    model.load_state_dict(load_file(str(final / MODEL_WEIGHTS)))
    tensors = load_file(str(final / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])
