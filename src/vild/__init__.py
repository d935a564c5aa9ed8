"""vild: open-vocabulary object detection by vision-and-language knowledge distillation."""

__version__ = "0.1.0"

from vild.errors import VildError  # noqa: E402  (kept light: no torch import here)

__all__ = ["VildError", "__version__"]
