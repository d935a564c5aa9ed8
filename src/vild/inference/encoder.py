"""Vocabularies as a detector encodes them: names -> `Vocabulary` (normalised [C, D] text
embeddings from the teacher, cached in memory per entry and on disk by `vild.text`), and the
default vocabulary and teacher a model brings. Shared by `Detector` (PyTorch) and
`OnnxDetector` (onnxruntime), so both encode names the same way."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch

from vild.errors import VildError, VocabularyError
from vild.inference.inputs import Vocabulary, is_collection, vocabulary_from_string


class VocabularyEncoder:
    """The text-embedding table of one detector.

    teacher: a callable returning the teacher (or None when there is none); it is called only
    when a name must be encoded, so a detector whose callers keep to known names never needs
    it. default_entries / default_ids / default_embeddings: the model's own vocabulary (its
    embeddings seed the table); base_names: names labelled in the model's training.
    Thread-safe: encoding is serialised.
    """

    def __init__(self, teacher: Callable[[], object | None], *, device: torch.device | str = "cpu",
                 templates: str = "vild", cache_dir: str | None = None,
                 default_entries: Sequence = (), default_ids: Sequence[int] | None = None,
                 default_embeddings: torch.Tensor | None = None, base_names: Sequence[str] = ()) -> None:
        from vild.text.prompts import normalize_name

        self._teacher = teacher
        self.device = torch.device(device)
        self.templates = templates
        self.cache_dir = cache_dir
        self._lock = threading.Lock()
        self._text: dict[tuple[str, ...], torch.Tensor] = {}
        self._base_names = {normalize_name(n) for n in base_names}
        self.default_entries = [list(e) if not isinstance(e, str) else [e] for e in (default_entries or [])]
        self.default_ids = tuple(int(c) for c in default_ids) if default_ids else None
        if self.default_entries and default_embeddings is not None:
            self._seed(self.default_entries, default_embeddings)

    @property
    def default_names(self) -> list[str]:
        """The first name of each entry of the model's own vocabulary."""
        return [e[0] for e in self.default_entries]

    @property
    def default_category_ids(self) -> list[int] | None:
        return list(self.default_ids) if self.default_ids else None

    def _seed(self, entries, embeddings: torch.Tensor) -> None:
        from vild.text.prompts import normalize_vocabulary

        _, groups = normalize_vocabulary(entries)
        emb = embeddings.detach().float().to(self.device)
        for group, row in zip(groups, emb):
            self._text[tuple(group)] = row

    def encode(self, vocabulary=None, *, what: str = "vocabulary") -> Vocabulary:
        """Names (a list of names or synonym lists, a named vocabulary such as ``"coco"``, or
        ``"a,b,c"``; None: the default) -> `Vocabulary`. Only entries not seen before are encoded."""
        from vild.text.prompts import normalize_vocabulary

        ids = None
        if vocabulary is None:
            if not self.default_entries:
                raise VocabularyError("this model has no default vocabulary: pass a vocabulary")
            entries, ids = self.default_entries, self.default_ids
        elif isinstance(vocabulary, Vocabulary):
            return vocabulary
        elif isinstance(vocabulary, str):
            entries, ids = vocabulary_from_string(vocabulary)
        elif is_collection(vocabulary):
            entries = list(vocabulary)
        else:
            raise VocabularyError(
                f"{what} must be a list of names (or synonym lists), a named vocabulary or "
                f"'a,b,c', got {type(vocabulary).__name__}")
        try:
            names, groups = normalize_vocabulary(entries)
        except VocabularyError as e:
            raise VocabularyError(f"{what}: {e}") from None
        keys = [tuple(g) for g in groups]
        with self._lock:
            missing = list(dict.fromkeys(k for k in keys if k not in self._text))
            if missing:
                teacher = self._teacher()
                if teacher is None:
                    raise VildError(f"{what}: encoding new names needs the teacher, and this detector has none")
                from vild.text import build_text_classifier

                clf = build_text_classifier(teacher, [list(k) for k in missing], templates=self.templates,
                                            cache_dir=self.cache_dir)
                for k, row in zip(missing, clf.embeddings.to(self.device)):
                    self._text[k] = row
            emb = torch.stack([self._text[k] for k in keys])
        base = torch.tensor([any(n in self._base_names for n in g) for g in groups],
                            dtype=torch.bool, device=self.device)
        return Vocabulary(tuple(names), emb, base, tuple(ids) if ids else None)


def default_vocabulary(vocab: dict | None, named: str | None) -> tuple[list, list[int] | None, list[str]]:
    """A model's default vocabulary: from its vocabulary.json content (`vocab`), else from a
    named vocabulary (`named`, e.g. "coco") -> (entries, category ids or None, base names)."""
    if vocab is not None:
        from vild.training.vocabulary import vocabulary_entries

        base = [n for n, b in zip(vocab["names"], vocab.get("base", [])) if b]
        base += [s for syn, b in zip(vocab.get("synonyms", []), vocab.get("base", [])) if b for s in syn]
        return vocabulary_entries(vocab), vocab.get("category_ids"), base
    if named:
        from vild.inference.vocabularies import resolve_vocabulary

        resolved = resolve_vocabulary(named)
        return resolved.entries, resolved.category_ids, []
    return [], None, []


def load_teacher(spec: str | None, *, identity: str | None, embed_dim: int, model_name: str,
                 where: str, device="cpu"):
    """`Teacher.load(spec)`, checked against the weights hash and embedding size the model
    recorded; every mismatch is one `VildError` line (`where` names the model's files)."""
    from vild.teacher import Teacher

    if not spec:
        raise VildError(f"{where} does not say which teacher it was trained with: pass teacher=... / --teacher")
    teacher = Teacher.load(spec, device=device)
    if identity and teacher.identity != identity:
        raise VildError(f"teacher {spec} (weights {teacher.identity}) is not the teacher model "
                        f"{model_name} was trained with (weights {identity})")
    if teacher.embed_dim != embed_dim:
        raise VildError(f"teacher {spec} embeds in {teacher.embed_dim} dimensions, the model expects {embed_dim}")
    return teacher
