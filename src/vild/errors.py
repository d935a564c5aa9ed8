"""User-facing errors: one clear line, never a traceback, at the CLI and service edges."""


class VildError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""


class WeightsUnavailableError(VildError):
    """Weights could not be found or fetched (offline, wrong name, missing file)."""


class VocabularyError(VildError, ValueError):
    """A vocabulary that cannot be encoded (empty, duplicated, too long, ...)."""
