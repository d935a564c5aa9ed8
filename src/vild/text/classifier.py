"""The frozen text classifier: one L2-normalised teacher text embedding per category.

Per name: fill every template, encode every prompt, L2-normalise each, average, L2-normalise.
Per category with synonyms: average the normalised per-name embeddings, L2-normalise. No
background row (the learned background embedding belongs to the detector).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vild.errors import NameTooLongError, VildError, VocabularyError, shorten
from vild.io import atomic_write_bytes
from vild.text.prompts import (
    Entry,
    Templates,
    format_prompt,
    normalize_vocabulary,
    resolve_templates,
    templates_key,
)

log = logging.getLogger("vild.text")

CLASSIFIER_FORMAT = "vild-text-classifier/1"
#: Names encoded per step; each step's results are written to the cache as soon as it ends,
#: so an interrupted build keeps what it finished.
NAMES_PER_STEP = 256
_TOKENIZER_PROBES = ["a photo of a cat.", "This is an embroidered bow (weapon) or bag.", "café 東京 ü!"]


@dataclass(frozen=True, eq=False)
class TextClassifier:
    """Frozen text embeddings of a vocabulary: ``embeddings`` [C, D] float32 (unit rows) and
    ``names`` (the first name of each vocabulary entry, as given)."""

    embeddings: torch.Tensor
    names: list[str]
    synonyms: list[list[str]] = field(default_factory=list)  # normalised names used per row
    teacher_identity: str = ""
    templates_key: str = ""

    def __post_init__(self) -> None:
        e = self.embeddings
        if not isinstance(e, torch.Tensor) or e.ndim != 2 or e.dtype != torch.float32:
            raise VildError("TextClassifier.embeddings must be a float32 [C, D] tensor")
        if e.shape[0] != len(self.names) or e.shape[0] == 0:
            raise VildError(f"{e.shape[0]} embeddings for {len(self.names)} names")
        if self.synonyms and len(self.synonyms) != len(self.names):
            raise VildError(f"{len(self.synonyms)} synonym lists for {len(self.names)} names")
        arr = e.detach().cpu().numpy()
        if not np.isfinite(arr).all():
            raise VildError("text classifier embeddings contain NaN or infinity")
        if float(np.abs(np.sqrt(np.einsum("ij,ij->i", arr, arr)) - 1).max()) > 1e-3:
            raise VildError("text classifier rows are not L2-normalised")
        e.requires_grad_(False)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def save(self, path: str | os.PathLike) -> None:
        """Write as safetensors (``embeddings`` + names and provenance in the metadata)."""
        from safetensors.torch import save

        values = self.embeddings.detach().cpu().contiguous()
        meta = {
            "format": CLASSIFIER_FORMAT,
            "names": json.dumps(self.names, ensure_ascii=False),
            "synonyms": json.dumps(self.synonyms, ensure_ascii=False),
            "teacher_identity": self.teacher_identity,
            "templates_key": self.templates_key,
        }
        meta["sha256"] = _classifier_digest(meta, values)
        atomic_write_bytes(path, save({"embeddings": values}, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextClassifier":
        """Read a file written by `save`; any inconsistency is a `VildError`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise VildError(f"text classifier file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if list(f.keys()) != ["embeddings"]:
                    raise VildError(f"{path} is not a vild text classifier (tensors {list(f.keys())})")
                values = f.get_tensor("embeddings")
        except VildError:
            raise
        except Exception as e:  # noqa: BLE001 - corrupt/truncated file
            raise VildError(f"{path} is not a readable safetensors file: {e}") from None
        if meta.get("format") != CLASSIFIER_FORMAT:
            raise VildError(f"{path} is not a vild text classifier (format {meta.get('format')!r})")
        if meta.get("sha256") != _classifier_digest(meta, values):
            raise VildError(f"{path} is corrupt (checksum mismatch)")
        try:
            names = json.loads(meta["names"])
            synonyms = json.loads(meta.get("synonyms", "[]"))
        except (KeyError, json.JSONDecodeError):
            raise VildError(f"{path} has unreadable names metadata") from None
        return cls(
            embeddings=values, names=names, synonyms=synonyms,
            teacher_identity=meta.get("teacher_identity", ""),
            templates_key=meta.get("templates_key", ""),
        )


def _classifier_digest(meta: dict, values: torch.Tensor) -> str:
    h = hashlib.sha256()
    for k in ("format", "names", "synonyms", "teacher_identity", "templates_key"):
        h.update(k.encode() + b"=" + meta.get(k, "").encode("utf-8") + b"\0")
    h.update(str(tuple(values.shape)).encode())
    h.update(values.contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokens of a few probe strings: tokenizers that differ give different keys."""
    tokens = torch.as_tensor(tokenizer(list(_TOKENIZER_PROBES)))
    return hashlib.sha256(tokens.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()[:16]


def cache_key(effective_templates: Sequence[str], tokenizer, precision: str) -> tuple[str, dict]:
    from vild.text.cache import FORMAT

    describe = {
        "cache_format": FORMAT,
        "templates_key": templates_key(effective_templates),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "precision": precision,
        "templates": list(effective_templates),
    }
    payload = json.dumps({k: v for k, v in describe.items() if k != "templates"}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16], describe


def _embed_dim(teacher) -> int | None:
    try:
        return int(teacher.embed_dim)
    except Exception:  # noqa: BLE001 - only a consistency check for the cache
        return None


def build_text_classifier(
    teacher,
    vocabulary: Sequence[Entry],
    *,
    templates: Templates = "vild",
    this_is: bool = True,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    batch_size: int = 1024,
    progress: bool | None = None,
    precision: str = "fp32",
) -> TextClassifier:
    """Text embeddings of `vocabulary` with `teacher`'s text tower.

    vocabulary: entries, each a name or a list of synonyms (first = display name), e.g.
        ``["circle", ["star", "pentagram"]]``. Names are normalised (see `vild.text.prompts`).
    templates: ``"vild"`` (ViLD's 63), ``"single"`` (``"This is a photo of {article} {}."``)
        or a list of templates with one ``{}`` and optionally ``{article}``.
    this_is: apply ViLD's ``"This is "`` prefix rule (templates starting with a/an/the).
    cache_dir: cache root (default ``$VILD_CACHE_DIR/text`` or ``~/.cache/vild/text``);
        ``use_cache=False`` disables reading and writing. Only names missing from the cache
        (for this teacher, template set, tokenizer and precision) are encoded.
    batch_size: most prompts per forward pass (also capped at 16,384 token positions).
    progress: tqdm bar with prompts/s; None = only for long runs on a terminal.
    precision: ``"fp32"`` (exact, default) or ``"bf16"`` (faster on bf16 CPUs/GPUs, not exact;
        cached separately).

    Raises `VocabularyError` for an empty vocabulary, duplicate names, a name whose prompts do
    not fit the text context; `VildError` if the model yields non-finite embeddings.
    """
    from vild.text.cache import EmbeddingCache, default_cache_dir
    from vild.text.encode import text_encoder_for

    names, synonyms = normalize_vocabulary(vocabulary)
    effective = resolve_templates(templates, this_is=this_is)
    if precision not in ("fp32", "bf16"):
        raise VildError(f"unknown precision {precision!r}: use 'fp32' or 'bf16'")
    tkey = templates_key(effective)
    identity = str(getattr(teacher, "identity", "") or "")

    needed: list[str] = []
    owner: dict[str, int] = {}
    for i, group in enumerate(synonyms):
        for n in group:
            if n not in owner:
                owner[n] = i
                needed.append(n)

    cache = None
    per_name: dict[str, torch.Tensor] = {}
    if use_cache:
        if not identity:
            raise VildError("the teacher has no identity (weights hash): cannot key the cache")
        key, describe = cache_key(effective, teacher.tokenizer, precision)
        describe["teacher_identity"] = identity
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cache = EmbeddingCache(root, identity, key, dim=_embed_dim(teacher), describe=describe)
        per_name.update(cache.load(needed))

    missing = [n for n in needed if n not in per_name]
    if missing:
        encoder = text_encoder_for(
            teacher.model, teacher.tokenizer, batch_size=batch_size, precision=precision
        )
        per_name.update(_encode_names(encoder, missing, effective, names, owner, cache, progress))

    # per entry: mean of its names' normalised embeddings, normalised (one batched op)
    # (numpy: single-threaded, so no thread-pool latency on a busy machine)
    index = {n: i for i, n in enumerate(needed)}
    table = torch.stack([per_name[n] for n in needed]).float().numpy()
    which = np.array([index[n] for group in synonyms for n in group], dtype=np.int64)
    owner_row = np.array([i for i, group in enumerate(synonyms) for _ in group], dtype=np.int64)
    counts = np.array([len(group) for group in synonyms], dtype=np.float32)
    sums = np.zeros((len(synonyms), table.shape[1]), dtype=np.float32)
    np.add.at(sums, owner_row, table[which])
    means = sums / counts[:, None]
    rows = means / np.maximum(np.sqrt(np.einsum("ij,ij->i", means, means)), 1e-12)[:, None]
    return TextClassifier(
        embeddings=torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)),
        names=names,
        synonyms=[list(g) for g in synonyms],
        teacher_identity=identity,
        templates_key=tkey,
    )


def _encode_names(encoder, missing, templates, display, owner, cache, progress) -> dict[str, torch.Tensor]:
    n_t = len(templates)
    prompts = [format_prompt(t, n) for n in missing for t in templates]
    tokens, too_long = encoder.tokenize(prompts)
    if too_long is not None and bool(too_long.any()):
        i = int(torch.nonzero(too_long)[0])
        name = missing[i // n_t]
        count = encoder.token_count(prompts[i])
        size = f"{count} tokens" if count else "more tokens than fit"
        shown = display[owner[name]]
        which = f"category {shorten(shown)}" if shown == name else f"category {shorten(shown)}: name {shorten(name)}"
        raise NameTooLongError(
            f"{which} is too long: its prompts have {size}, the text encoder's context is "
            f"{encoder.context_length} tokens"
        )
    bar = None
    total = len(prompts)
    if progress or (progress is None and total >= 2000):
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total, unit="prompt", desc=f"encoding {len(missing)} names x {n_t} prompts",
            disable=None if progress is None else False, file=sys.stderr, dynamic_ncols=True,
        )
    out: dict[str, torch.Tensor] = {}
    try:
        for start in range(0, len(missing), NAMES_PER_STEP):
            chunk = missing[start:start + NAMES_PER_STEP]
            rows = slice(start * n_t, (start + len(chunk)) * n_t)
            feats = encoder.encode_tokens(tokens[rows], on_progress=bar.update if bar else None)
            if not bool(torch.isfinite(feats).all()):
                bad = chunk[int(torch.nonzero(~torch.isfinite(feats).all(dim=1))[0]) // n_t]
                raise VildError(f"the text encoder produced NaN/inf for name {bad!r}: check the teacher weights")
            per_prompt = F.normalize(feats, dim=-1).view(len(chunk), n_t, -1)
            means = F.normalize(per_prompt.mean(dim=1), dim=-1)
            new = {n: means[j].clone() for j, n in enumerate(chunk)}
            if cache is not None:
                cache.add(new)
            out.update(new)
    finally:
        if bar is not None:
            bar.close()
    return out
