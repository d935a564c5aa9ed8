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

from vild.errors import VildError, one_line
from vild.io import atomic_write_text, load_config, save_config
from vild.model import ViLDConfig, ViLDDetector, build_detector
from vild.training.model_files import MODEL_CONFIG, MODEL_WEIGHTS, TEXT_EMBEDDINGS, VOCABULARY

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


def load_model(folder: str | Path, *, device: str = "cpu", expected: dict | None = None) -> ViLDDetector:
    """model_config.json + model.safetensors -> `ViLDDetector` in eval mode on `device`.
    `expected`: config values a registry entry's name promises ({"backbone": ...}). Every
    problem (missing, unreadable or mismatched files, a config unlike `expected`) is one
    `VildError` line: callers range from `vild train --init` to `Detector.from_pretrained`."""
    folder = Path(folder)
    for name in (MODEL_CONFIG, MODEL_WEIGHTS):
        if not (folder / name).is_file():
            raise VildError(f"{folder} is not a vild model folder: {name} is missing")
    config_path, weights_path = folder / MODEL_CONFIG, folder / MODEL_WEIGHTS
    try:
        config = load_config(ViLDConfig, config_path)
    except VildError as e:
        message = str(e)
        raise VildError(message if str(config_path) in message else f"{config_path}: {message}") from None
    except (TypeError, ValueError) as e:
        raise VildError(f"{config_path} is not a valid model config ({one_line(e)})") from None
    for key, want in (expected or {}).items():
        got = getattr(config, key)
        if got != want:
            raise VildError(f"{config_path} has {key}={got!r}, this model name expects {want!r}")
    model = build_detector(config)
    try:
        state = load_file(str(weights_path), device="cpu")
    except Exception as e:  # noqa: BLE001 - corrupt / truncated / not safetensors
        raise VildError(f"{weights_path} is not a readable safetensors file ({one_line(e)})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # same names, other shapes
        raise VildError(f"{weights_path} does not match {MODEL_CONFIG} ({one_line(e)})") from None
    if missing or unexpected:
        raise VildError(
            f"{weights_path} does not match {MODEL_CONFIG}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return model.to(device).eval()


def save_vocabulary(folder: str | Path, vocabulary: dict, text_embeddings: torch.Tensor) -> None:
    """vocabulary.json (names, synonyms, category ids, base flags, teacher) + its embeddings."""
    folder = Path(folder)
    atomic_write_text(folder / VOCABULARY, json.dumps(vocabulary, indent=2) + "\n")
    tmp = folder / f".{TEXT_EMBEDDINGS}.tmp"
    save_file({"embeddings": text_embeddings.contiguous().float().cpu()}, str(tmp))
    tmp.replace(folder / TEXT_EMBEDDINGS)


def load_vocabulary(folder: str | Path, embed_dim: int | None = None, *,
                    required: bool = True) -> tuple[dict | None, torch.Tensor | None]:
    """vocabulary.json + text_embeddings.safetensors, checked against each other (and against
    the model's `embed_dim` when given). A folder with neither file is an error when
    `required`, else (None, None): a model folder for `Detector` may omit its vocabulary."""
    folder = Path(folder)
    have = [(folder / f).is_file() for f in (VOCABULARY, TEXT_EMBEDDINGS)]
    if not any(have):
        if required:
            raise VildError(f"{folder} has no saved vocabulary ({VOCABULARY}, {TEXT_EMBEDDINGS})")
        return None, None
    if not all(have):
        present, absent = (VOCABULARY, TEXT_EMBEDDINGS) if have[0] else (TEXT_EMBEDDINGS, VOCABULARY)
        raise VildError(f"model folder {folder} has {present} but no {absent}")
    try:
        vocab = json.loads((folder / VOCABULARY).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise VildError(f"{folder / VOCABULARY} is not valid JSON ({e})") from None
    if not isinstance(vocab, dict) or not isinstance(vocab.get("names"), list) or not vocab["names"]:
        raise VildError(f"{folder / VOCABULARY} has no 'names' list")
    vocab.setdefault("synonyms", [[] for _ in vocab["names"]])
    try:
        emb = load_file(str(folder / TEXT_EMBEDDINGS))["embeddings"]
    except Exception as e:  # noqa: BLE001 - corrupt / truncated / no "embeddings" tensor
        raise VildError(f"{folder / TEXT_EMBEDDINGS} is not a readable text-embedding file ({one_line(e)})") from None
    if emb.ndim != 2 or emb.shape[0] != len(vocab["names"]) or len(vocab["synonyms"]) != len(vocab["names"]):
        raise VildError(
            f"model folder {folder}: {TEXT_EMBEDDINGS} has {tuple(emb.shape)} rows for "
            f"{len(vocab['names'])} names in {VOCABULARY}")
    if embed_dim is not None and emb.shape[1] != embed_dim:
        raise VildError(f"model folder {folder}: text embeddings are {emb.shape[1]}-d, the model is {embed_dim}-d")
    if not bool(torch.isfinite(emb).all()):
        raise VildError(f"model folder {folder}: {TEXT_EMBEDDINGS} contains NaN or infinity")
    return vocab, emb.float()


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
