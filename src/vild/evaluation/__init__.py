"""Evaluation: LVIS (federated, APr/APc/APf) and COCO (open-vocabulary novel/base splits)
detection and mask AP, and class-agnostic proposal recall, on top of lvis-api and
pycocotools. All metrics are floats in percent; NaN where undefined."""

from vild.evaluation.coco_eval import (
    COCO_METRICS,
    SPLIT_METRICS,
    default_novel_category_ids,
    evaluate_coco,
    load_coco_gt,
)
from vild.evaluation.lvis_eval import LVIS_METRICS, evaluate_lvis, load_lvis_gt
from vild.evaluation.proposals import proposal_recall
from vild.evaluation.results import detections_to_coco_results, load_results, save_results
from vild.evaluation.summary import (
    COCO_OV_COLUMNS,
    LVIS_COLUMNS,
    PROPOSAL_COLUMNS,
    format_header,
    format_row,
    format_table,
    summarise,
)

__all__ = [
    "COCO_METRICS",
    "COCO_OV_COLUMNS",
    "LVIS_COLUMNS",
    "LVIS_METRICS",
    "PROPOSAL_COLUMNS",
    "SPLIT_METRICS",
    "default_novel_category_ids",
    "detections_to_coco_results",
    "evaluate_coco",
    "evaluate_lvis",
    "format_header",
    "format_row",
    "format_table",
    "load_coco_gt",
    "load_lvis_gt",
    "load_results",
    "proposal_recall",
    "save_results",
    "summarise",
]
