"""open_clip's factory behind one-line `WeightsUnavailableError`s, with its logging quietened.

Split from `vild.teacher.teacher`: `vild.teacher.arch` and `vild.inference.registry` reuse these
helpers without needing the `Teacher` class.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from typing import Any, Sequence

from vild.errors import WeightsUnavailableError

# open_clip's own model-name prefixes for a folder and a Hugging Face Hub repository.
LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"


def _listing(items: Sequence[str], limit: int = 8) -> str:
    items = list(items)
    if not items:
        return "none"
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


def _download_reason(e: BaseException) -> str | None:
    """A short reason for a failed Hugging Face / URL download, from the exception chain."""
    seen = set()
    chain = []
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {type(x).__name__ for x in chain}
    text = " ".join(str(x) for x in chain)
    if "GatedRepoError" in names:
        return "the repository is gated: accept its licence on huggingface.co and log in (`hf auth login`)"
    if "RepositoryNotFoundError" in names or "Repository Not Found" in text:
        return "repository not found on the Hugging Face Hub (or private: log in with `hf auth login`)"
    if "OfflineModeIsEnabled" in names or "LocalEntryNotFoundError" in names or "cannot find the requested files in the local cache" in text:
        return "not in the local Hugging Face cache and the Hub could not be reached"
    if "EntryNotFoundError" in names or "RemoteEntryNotFoundError" in names:
        return "the repository has no open_clip_config.json or open_clip weights file"
    if "URLError" in names or "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "the download server could not be reached"
    return None


def _hf_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _one_line(e: BaseException, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    # open_clip wraps errors repeatedly; the innermost message is the informative one
    cause = e.__cause__
    while cause is not None:
        inner = " ".join(str(cause).split())
        if inner:
            text = inner
        cause = cause.__cause__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _OpenClipLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # drop open_clip's chatty warnings
        return "open_clip" not in (record.pathname or "")


@contextlib.contextmanager
def _quiet_open_clip():
    root = logging.getLogger()
    flt = _OpenClipLogFilter()
    root.addFilter(flt)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        root.removeFilter(flt)


def _create(model_name: str, pretrained: str | None, *, device, tried: str, fix: str,
            cache_dir: str | None = None) -> Any:
    """open_clip.create_model_from_pretrained (which refuses random init), errors -> one line."""
    import open_clip

    try:
        with _quiet_open_clip():
            model = open_clip.create_model_from_pretrained(
                model_name, pretrained=pretrained, device=device, cache_dir=cache_dir,
                return_transform=False, weights_only=True,
            )
    except WeightsUnavailableError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure here means "no usable weights"
        reason = _download_reason(e) if not model_name.startswith(LOCAL_DIR_PREFIX) else None
        raise WeightsUnavailableError(f"could not load {tried}: {reason or _one_line(e)}; {fix}") from None
    return model
