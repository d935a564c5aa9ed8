"""A model folder as `Detector` reads it: model_config.json + model.safetensors, and optionally
vocabulary.json + text_embeddings.safetensors (file names in `vild.inference.registry`). Every
problem is one `VildError` line."""

from __future__ import annotations

from pathlib import Path

import torch

from vild.errors import VildError, one_line


def load_model_folder(folder: Path, *, device="cpu", expected: dict | None = None):
    """model_config.json + model.safetensors -> `ViLDDetector` in eval mode; every problem
    (missing, unreadable, mismatched files; a config unlike what a registry entry expects)
    is one `VildError` line."""
    from safetensors.torch import load_file

    from vild.inference.registry import MODEL_CONFIG, MODEL_WEIGHTS
    from vild.io import load_config
    from vild.model import ViLDConfig, build_detector

    folder = Path(folder)
    try:
        config = load_config(ViLDConfig, folder / MODEL_CONFIG)
    except VildError as e:
        raise VildError(f"{folder / MODEL_CONFIG}: {e}") from None
    except (TypeError, ValueError) as e:
        raise VildError(f"{folder / MODEL_CONFIG} is not a valid model config ({e})") from None
    for key, want in (expected or {}).items():
        got = getattr(config, key)
        if got != want:
            raise VildError(f"{folder / MODEL_CONFIG} has {key}={got!r}, this model name expects {want!r}")
    model = build_detector(config)
    try:
        state = load_file(str(folder / MODEL_WEIGHTS), device="cpu")
    except Exception as e:  # noqa: BLE001 - corrupt / truncated / not safetensors
        raise VildError(f"{folder / MODEL_WEIGHTS} is not a readable safetensors file ({one_line(e)})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise VildError(f"{folder / MODEL_WEIGHTS} does not match {MODEL_CONFIG} ({one_line(e)})") from None
    if missing or unexpected:
        raise VildError(
            f"{folder / MODEL_WEIGHTS} does not match {MODEL_CONFIG}: "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return model.to(device).eval()


def load_vocabulary_folder(folder: Path, embed_dim: int) -> tuple[dict | None, torch.Tensor | None]:
    """vocabulary.json + text_embeddings.safetensors, checked against each other and the model;
    (None, None) when the folder has neither."""
    import json

    from safetensors.torch import load_file

    from vild.inference.registry import TEXT_EMBEDDINGS, VOCABULARY

    folder = Path(folder)
    have = [(folder / f).is_file() for f in (VOCABULARY, TEXT_EMBEDDINGS)]
    if not any(have):
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
    except Exception as e:  # noqa: BLE001
        raise VildError(f"{folder / TEXT_EMBEDDINGS} is not a readable text-embedding file ({one_line(e)})") from None
    if emb.ndim != 2 or emb.shape[0] != len(vocab["names"]) or len(vocab["synonyms"]) != len(vocab["names"]):
        raise VildError(
            f"model folder {folder}: {TEXT_EMBEDDINGS} has {tuple(emb.shape)} rows for "
            f"{len(vocab['names'])} names in {VOCABULARY}")
    if emb.shape[1] != embed_dim:
        raise VildError(f"model folder {folder}: text embeddings are {emb.shape[1]}-d, the model is {embed_dim}-d")
    if not bool(torch.isfinite(emb).all()):
        raise VildError(f"model folder {folder}: {TEXT_EMBEDDINGS} contains NaN or infinity")
    return vocab, emb.float()
