"""`Detections` at the edges, re-exported where users of earlier versions import them from;
the one implementation is `vild.model.convert`."""

from vild.model.convert import (  # noqa: F401
    MASK_THRESHOLD,
    ConversionError,
    detections_to_coco,
    detections_to_dict,
    detections_to_supervision,
    masks_to_rle,
    rle_to_mask,
)
