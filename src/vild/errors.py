"""User-facing errors: one clear line, never a traceback, at the CLI and service edges."""


class VildError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class WeightsUnavailableError(VildError):
    """Weights could not be found or fetched (offline, wrong name, missing file)."""


class VocabularyError(VildError, ValueError):
    """A vocabulary that cannot be encoded (empty, duplicated, too long, ...)."""


class NameTooLongError(VocabularyError):
    """A category name whose prompts do not fit the text encoder's context."""


def one_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message on one line (whitespace collapsed), cut to `limit` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(text: object, limit: int = 60) -> str:
    """`repr` of a user's string for an error line, cut to about `limit` characters: a
    10,000-character name must not make a 10,000-character message."""
    s = repr(text)
    if len(s) <= limit:
        return s
    size = f" ({len(text):,} characters)" if isinstance(text, str) else ""
    return s[: limit - 3] + "..." + size
