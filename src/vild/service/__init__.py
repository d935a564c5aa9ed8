"""HTTP service and page for a `Detector`: `vild serve`, or `create_app(detector, config)`.

Importing this package is cheap (the CLI imports it for `--help`); FastAPI and torch load
when `create_app` is first used.
"""

from vild.service.config import ServiceConfig

__all__ = ["ServiceConfig", "create_app"]


def __getattr__(name):
    if name == "create_app":
        from vild.service.app import create_app

        return create_app
    raise AttributeError(name)
