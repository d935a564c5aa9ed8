"""The robustness suite reuses the tiny random model folder of the inference tests."""

from tests.inference.conftest import _seed_and_threads, detector, model_dir  # noqa: F401
