"""The teacher, model, evaluation and export stages import nothing from a later stage (docs/architecture.md):
the model -> inference -> evaluation -> model cycle must not come back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vild

SRC = Path(vild.__file__).parent
# stage order, earliest first; shared modules (errors, io) may be imported from anywhere
ORDER = ["data", "text", "teacher", "model", "regions", "training", "evaluation", "inference", "export", "service",
         "recipes"]
SHARED = {"errors", "io", "device"}  # docs/architecture.md: "Shared"


def _vild_imports(path: Path) -> set[str]:
    """The vild subpackage named by every import in the file, lazy (in-function) ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        for m in modules:
            parts = m.split(".")
            if parts[0] == "vild" and len(parts) > 1:
                names.add(parts[1])
    return names


@pytest.mark.parametrize("stage", ["teacher", "model", "evaluation", "export"])
def test_no_import_from_a_later_stage(stage):
    allowed = set(ORDER[: ORDER.index(stage) + 1]) | SHARED
    bad = {}
    for path in sorted((SRC / stage).rglob("*.py")):
        later = _vild_imports(path) - allowed
        if later:
            bad[str(path.relative_to(SRC))] = sorted(later)
    assert not bad, f"imports from later stages: {bad}"
