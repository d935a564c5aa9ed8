"""Checkpoints: safetensors weights + JSON configs, written atomically, never unpickled."""

from __future__ import annotations

import json
import os
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
# A resume state is a folder `resume/` holding model.safetensors, optimizer.safetensors (every
# optimiser buffer and the RNG states as tensors), state.json (step, optimiser hyper-parameters,
# scheduler, data-sampler position, Python / NumPy RNG) and train_config.json. It is written as
# `.resume.tmp/` and renamed into place; the previous state survives as `.resume.old/` until
# the new one is in place, so at every instant one complete state exists on disk.
RESUME_TMP = f".{RESUME_DIR}.tmp"
RESUME_OLD = f".{RESUME_DIR}.old"


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def save_resume_state(folder: Path, model, optimizer, step: int, train_config, *,
                      extra: dict | None = None) -> None:
    """Everything needed to continue exactly: weights, optimiser buffers, step, RNG states,
    plus `extra` (JSON: scheduler and data-sampler state) in state.json. Atomic (see above)."""
    folder = Path(folder)
    final, tmp, old = folder / RESUME_DIR, folder / RESUME_TMP, folder / RESUME_OLD
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
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    py_state = random.getstate()
    np_state = np.random.get_state()
    meta = {
        "step": step,
        "param_groups": opt_state["param_groups"],
        "scalars": scalars,
        "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy_rng": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                      float(np_state[4])],
        **(extra or {}),
    }
    atomic_write_text(tmp / "state.json", json.dumps(meta) + "\n")
    save_config(tmp / "train_config.json", train_config)
    for f in tmp.iterdir():
        _fsync_path(f)
    _fsync_path(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # stale: `final` is the newest complete state
        final.rename(old)
    # here `old` (if any) is the previous complete state and `final` is absent
    tmp.rename(final)
    _fsync_path(folder)
    shutil.rmtree(old, ignore_errors=True)


def resume_state_dir(folder: Path) -> Path | None:
    """The newest complete resume state of a model folder (None if there is none)."""
    folder = Path(folder)
    for candidate in (folder / RESUME_DIR, folder / RESUME_OLD):  # old: killed between renames
        if (candidate / "state.json").is_file() and (candidate / MODEL_WEIGHTS).is_file():
            return candidate
    return None


def read_resume_meta(folder: Path) -> dict | None:
    """state.json of the newest resume state (step, scheduler, sampler, ...), or None."""
    path = resume_state_dir(folder)
    return None if path is None else json.loads((path / "state.json").read_text())


def load_resume_state(folder: Path, model, optimizer) -> int | None:
    """Restore a resume state into model, optimizer and the RNGs; returns the step to continue
    from (None when the folder has no resume state). Reads only: safe on every rank at once."""
    final = resume_state_dir(folder)
    if final is None:
        return None
    meta = json.loads((final / "state.json").read_text())
    model.load_state_dict(load_file(str(final / MODEL_WEIGHTS)))
    tensors = load_file(str(final / "optimizer.safetensors"))
    torch.set_rng_state(tensors.pop("rng.torch"))
    cuda_rng = tensors.pop("rng.cuda", None)
    if cuda_rng is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_rng)
    if isinstance(meta.get("python_rng"), list):
        version, internal, gauss = meta["python_rng"]
        random.setstate((version, tuple(internal), gauss))
    if isinstance(meta.get("numpy_rng"), list) and len(meta["numpy_rng"]) == 5:
        kind, keys, pos, has_gauss, cached = meta["numpy_rng"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for group_state in optimizer.state.values():
        for k, v in list(group_state.items()):
            if isinstance(v, torch.Tensor) and v.device != device and k != "step":
                group_state[k] = v.to(device)
    return int(meta["step"])
