"""Metrics -> markdown tables (the shape of the paper's tables)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

LVIS_COLUMNS = ("APr", "APc", "APf", "AP")
COCO_OV_COLUMNS = ("AP50_novel", "AP50_base", "AP50")
PROPOSAL_COLUMNS = ("AR@100", "AR@300", "AR@1000")


def _cell(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_header(columns: Sequence[str] = LVIS_COLUMNS, *, name: str = "method") -> str:
    """`| method | APr | ... |` and the separator line."""
    head = "| " + " | ".join([name, *columns]) + " |"
    sep = "|" + "|".join(["---"] * (len(columns) + 1)) + "|"
    return head + "\n" + sep


def format_row(
    name: str, metrics: Mapping[str, float], columns: Sequence[str] = LVIS_COLUMNS, *, digits: int = 1
) -> str:
    """One markdown table row, e.g. `| ViLD | 16.1 | 20.0 | 28.3 | 22.5 |`; missing/NaN -> `-`.

    `metrics` is one iou type's dict, e.g. `evaluate_lvis(...)["segm"]`.
    """
    return "| " + " | ".join([name, *(_cell(metrics.get(c), digits) for c in columns)]) + " |"


def format_table(
    rows: Mapping[str, Mapping[str, float]],
    columns: Sequence[str] = LVIS_COLUMNS,
    *,
    digits: int = 1,
    name: str = "method",
) -> str:
    """A whole markdown table: `rows` maps a row name to one iou type's metrics dict."""
    lines = [format_header(columns, name=name)]
    lines += [format_row(k, v, columns, digits=digits) for k, v in rows.items()]
    return "\n".join(lines)


summarise = format_row
