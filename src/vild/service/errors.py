"""Errors the service answers with: a status, a short machine-readable code and one line."""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service refuses: answered as `{"error": code, "detail": message}`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
