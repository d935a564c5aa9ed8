"""Request checks that bound the work one request can ask for: names, labels, JSON bodies."""

from __future__ import annotations

import json
from typing import Any

from vild.errors import NameTooLongError, VildError, VocabularyError
from vild.inference.exemplars import ExemplarError
from vild.service.config import ServiceConfig
from vild.service.errors import ServiceError


def clean_names(value: Any, what: str, config: ServiceConfig) -> list[str] | None:
    """A list or comma-separated string of names -> cleaned, de-duplicated list (or None)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    names: list[str] = []
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ServiceError(422, "bad_vocabulary", f"{what} must be strings")
        name = " ".join(item.split())  # trims and folds whitespace, newlines included
        if not name:
            continue
        if len(name) > config.max_name_length:
            raise ServiceError(
                422, "name_too_long",
                f"a name in {what} has {len(name)} characters; the limit is {config.max_name_length}",
            )
        if name not in seen:
            seen.add(name)
            names.append(name)
        if len(names) > config.max_vocabulary:
            raise ServiceError(
                422, "vocabulary_too_long", f"{what} has more than {config.max_vocabulary} names"
            )
    if not names:
        raise ServiceError(422, "bad_vocabulary", f"{what} has no names")
    return names


def check_labels(vocabulary: list[str] | None, attributes: list[str] | None, default_size: int,
                 config: ServiceConfig) -> None:
    """Every (name, attribute) pair is a label scored for every region: their number, not each
    list's length, sets the memory of a request."""
    if attributes is None:
        return
    names = len(vocabulary) if vocabulary is not None else default_size
    if names * len(attributes) > config.max_labels:
        raise ServiceError(
            422, "too_many_labels",
            f"{names} names x {len(attributes)} attributes = {names * len(attributes):,} labels; "
            f"the limit is {config.max_labels:,}",
        )


def parse_json(body: bytes) -> Any:
    """Request bytes -> JSON value; malformed or absurdly nested JSON is a 400 `bad_json`."""
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        raise ServiceError(400, "bad_json", "the body is not valid JSON (or is nested too deeply)") from None


def vild_error_answer(exc: VildError) -> tuple[int, str, str]:
    """A `VildError` raised by the detector -> (status, code, one line)."""
    line = (str(exc).strip().splitlines() or ["invalid request"])[0]
    line = line if len(line) <= 300 else line[:297] + "..."
    if isinstance(exc, NameTooLongError):
        return 422, "name_too_long", line
    if isinstance(exc, VocabularyError):
        return 422, "bad_vocabulary", line
    if isinstance(exc, ExemplarError):
        return 422, "bad_exemplar", line
    return 400, "bad_request", line


__all__ = ["check_labels", "clean_names", "parse_json", "vild_error_answer"]
