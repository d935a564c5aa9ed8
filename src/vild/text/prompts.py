"""Prompt templates and category-name normalisation, as ViLD defines them.

The rules (ViLD's official code, restated in docs and `vild-method.md`):

* names: Unicode NFC, lower-case, ``_`` -> space, ``/`` -> `` or ``, trailing dots removed
  (the official ``rm_dot``), runs of whitespace collapsed to one space;
* ``{article}`` is ``"an"`` when the normalised name starts with one of ``a e i o u``
  (ASCII vowels only, as in the official code) and ``"a"`` otherwise;
* a template whose first word is ``a``, ``an``, ``the`` or ``{article}`` gets the prefix
  ``"This is "``. On the 63 ViLD templates this is exactly the official rule (which tests
  ``text.startswith('a') or text.startswith('the')`` on the formatted prompt); for custom
  templates we test the template's first word, so a template that starts with the name
  (``"{} on a table."``) never depends on the name's spelling.

Non-ASCII names are accepted: open_clip's BPE is byte-level, so every Unicode string encodes
(NFC normalisation first, so that composed and decomposed spellings are one name).
"""

from __future__ import annotations

import hashlib
import json
import string
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Sequence, Union

from vild.errors import VocabularyError, shorten

#: The single-template mode: one of the 63 ViLD templates, so "single" prompts are a subset of
#: the full set (with the prefix rule: "This is a photo of an apple.").
SINGLE_TEMPLATE = "a photo of {article} {}."
THIS_IS = "This is "
_PREFIX_WORDS = frozenset({"a", "an", "the", "{article}"})
#: Bumped whenever a rule above changes, so that cached embeddings are never reused wrongly.
RULES_VERSION = "vild-prompts/1"

Templates = Union[str, Sequence[str]]


@lru_cache(maxsize=1)
def vild_templates() -> tuple[str, ...]:
    """ViLD's 63 prompt templates, verbatim, in file order (before the "This is " rule)."""
    text = resources.files("vild.text").joinpath("vild_prompt_templates.txt").read_text("utf-8")
    templates = tuple(line.strip() for line in text.splitlines() if line.strip())
    return templates


def normalize_name(name: str) -> str:
    """A category name as it goes into a prompt: ``"Bow_(weapon)"`` -> ``"bow (weapon)"``."""
    if not isinstance(name, str):
        raise VocabularyError(f"category names must be strings, got {type(name).__name__}: {shorten(name)}")
    out = unicodedata.normalize("NFC", name).lower().replace("_", " ").replace("/", " or ")
    out = " ".join(out.split()).rstrip(".").strip()
    if not out:
        raise VocabularyError(f"category name {shorten(name)} is empty after normalisation")
    return out


def article(normalized_name: str) -> str:
    """``"an"`` before a (lower-case ASCII) vowel, else ``"a"``."""
    return "an" if normalized_name[:1] in ("a", "e", "i", "o", "u") else "a"


def needs_this_is(template: str) -> bool:
    """Whether the ViLD rule prefixes this template with ``"This is "``."""
    words = template.split(maxsplit=1)
    return bool(words) and words[0] in _PREFIX_WORDS


def check_template(template: str) -> None:
    """A template has exactly one ``{}`` and no replacement field other than ``{article}``."""
    if not isinstance(template, str) or not template.strip():
        raise VocabularyError(f"a template must be a non-empty string, got {template!r}")
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise VocabularyError(f"template {template!r} is not a valid format string: {e}") from None
    if fields.count("") != 1 or any(f not in ("", "article") for f in fields):
        raise VocabularyError(
            f"template {template!r} must contain exactly one '{{}}' (the name) and no field "
            "other than '{article}'"
        )


def resolve_templates(templates: Templates = "vild", *, this_is: bool = True) -> tuple[str, ...]:
    """The effective templates: ``"vild"`` (63), ``"single"`` (1) or a custom list, with the
    ``"This is "`` prefix already applied where the rule says so (``this_is=True``)."""
    if isinstance(templates, str):
        if templates == "vild":
            base: tuple[str, ...] = vild_templates()
        elif templates == "single":
            base = (SINGLE_TEMPLATE,)
        else:
            raise VocabularyError(
                f"unknown template set {templates!r}: use 'vild', 'single' or a list of templates"
            )
    else:
        base = tuple(templates)
        if not base:
            raise VocabularyError("the template list is empty")
        for t in base:
            check_template(t)
        if len(set(base)) != len(base):
            dup = next(t for t in base if base.count(t) > 1)
            raise VocabularyError(f"duplicate template {dup!r}")
    if this_is:
        base = tuple(THIS_IS + t if needs_this_is(t) else t for t in base)
    return base


def format_prompt(template: str, normalized_name: str) -> str:
    """One effective template (see `resolve_templates`) filled with one normalised name."""
    return template.format(normalized_name, article=article(normalized_name))


def prompts_for(name: str, templates: Templates = "vild", *, this_is: bool = True) -> list[str]:
    """Every prompt of one (raw) category name."""
    n = normalize_name(name)
    return [format_prompt(t, n) for t in resolve_templates(templates, this_is=this_is)]


def templates_key(effective_templates: Sequence[str]) -> str:
    """A hash of the exact effective template strings and of the rules that fill them."""
    payload = json.dumps({"rules": RULES_VERSION, "templates": list(effective_templates)})
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


Entry = Union[str, Sequence[str]]


def normalize_vocabulary(vocabulary: Sequence[Entry]) -> tuple[list[str], list[list[str]]]:
    """Validate a vocabulary and normalise every name.

    `vocabulary` is a sequence of entries; an entry is a name or a non-empty list of synonyms
    whose first element is the entry's display name. Returns ``(names, synonyms)``: the display
    names (as given, stripped) and, per entry, its distinct normalised names in order
    (repeats inside one entry, e.g. LVIS's name repeated among its synonyms, are dropped).

    Raises `VocabularyError` for an empty vocabulary, an empty entry, a non-string name, a
    name that is empty after normalisation, or two entries with the same normalised display
    name (or the same set of names).
    """
    if isinstance(vocabulary, str):
        raise VocabularyError("the vocabulary must be a list of names, not a single string")
    vocabulary = list(vocabulary)
    if not vocabulary:
        raise VocabularyError("the vocabulary is empty: give at least one category name")
    names: list[str] = []
    synonyms: list[list[str]] = []
    seen_first: dict[str, int] = {}
    seen_sets: dict[frozenset, int] = {}
    for i, entry in enumerate(vocabulary):
        if isinstance(entry, str):
            group = [entry]
        elif isinstance(entry, (list, tuple)):
            group = list(entry)
        else:
            raise VocabularyError(
                f"vocabulary entry {i} must be a name or a list of synonyms, got {shorten(entry)}"
            )
        if not group:
            raise VocabularyError(f"vocabulary entry {i} is an empty synonym list")
        normed: list[str] = []
        for raw in group:
            n = normalize_name(raw)
            if n not in normed:
                normed.append(n)
        first = normed[0]
        if first in seen_first:
            j = seen_first[first]
            raise VocabularyError(
                f"duplicate category: entry {i} ({shorten(group[0])}) and entry {j} ({shorten(names[j])}) "
                "are the same name after normalisation"
            )
        key = frozenset(normed)
        if key in seen_sets:
            j = seen_sets[key]
            raise VocabularyError(
                f"duplicate category: entries {j} ({shorten(names[j])}) and {i} ({shorten(group[0])}) "
                "have the same synonyms"
            )
        seen_first[first] = i
        seen_sets[key] = i
        names.append(group[0].strip())
        synonyms.append(normed)
    return names, synonyms
