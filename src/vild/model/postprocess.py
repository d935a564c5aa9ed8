"""Post-processing that fits the device: class-aware NMS over scored regions, mask pasting,
and the one finish from selected regions to `Detections`.

Two branches give the same detections (tests/model/test_postprocess.py runs both on CPU):
- batched (the default on accelerators): one NMS over every candidate of every image (classes
  and images kept apart by offsetting their coordinates), and masks pasted with one
  `grid_sample` per chunk of masks, chunks bounded in bytes. Few kernel launches, no
  per-class or per-mask Python loop.
- per image (the default on CPU, measured faster there: benchmarks/results/perf_inference_cpu.json): NMS
  by a per-class loop or one offset NMS, whichever the candidate counts make cheaper, and
  each mask resized into its box's window only.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
import torch.nn.functional as F
from torchvision.models.detection.transform import resize_boxes
from torchvision.models.detection._utils import _topk_min
from torchvision.ops import nms, remove_small_boxes

from vild.model.outputs import Detections

#: Bytes of pasted masks (and their sampling grid) made at once by the batched paste.
PASTE_CHUNK_BYTES = 1 << 30

log = logging.getLogger("vild.model")


def _use_batched(tensor: torch.Tensor, batched: bool | None) -> bool:
    return tensor.device.type != "cpu" if batched is None else bool(batched)


# ------------------------------------------------------------------------------ selection
def _candidates(boxes: torch.Tensor, probs: torch.Tensor, config):
    """(region, label, score) triples above the threshold, the `pre_nms_topk` best at most,
    boxes of (near) zero size dropped; in the order of the flattened [P * C] scores."""
    num_classes = probs.shape[1]
    scores = probs.reshape(-1)
    # no branch on the candidate count: top-k of at most all scores, back in index order, is
    # the same set either way, and a traced graph (ONNX export) then fits any P x C
    idx = scores.topk(_topk_min(scores, config.pre_nms_topk, 0)).indices.sort().values
    idx = idx[scores[idx] > config.score_thresh]
    region, labels = idx // num_classes, idx % num_classes
    keep = remove_small_boxes(boxes[region], 1e-2)
    region, labels = region[keep], labels[keep]
    return region, labels, scores[idx[keep]]


def _stable_argsort(values: torch.Tensor, *, descending: bool = False) -> torch.Tensor:
    """argsort that keeps ties in index order. The ONNX exporter refuses the `stable` flag,
    and needs none: sorting exports to ONNX TopK, which breaks ties by the lower index."""
    if torch.onnx.is_in_onnx_export():
        return values.argsort(descending=descending)
    return values.argsort(descending=descending, stable=True)


def _ranked(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Kept candidate indices ordered by score, ties by candidate order (same in both branches)."""
    keep = keep.sort().values
    return keep[_stable_argsort(scores[keep], descending=True)]


def select_detections(
    boxes: torch.Tensor, probs: torch.Tensor, config
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class NMS over one image's class-agnostic boxes (the per-image branch).

    boxes [P, 4], probs [P, C] -> (boxes [K, 4], scores [K], labels [K], region index [K]),
    K <= config.detections_per_image, sorted by score. Uses config.score_thresh,
    nms_thresh, pre_nms_topk.

    Built for large vocabularies (20,000 categories): top-k straight over the [P * C] scores,
    and NMS only for classes with two or more candidates, by a per-class loop when few
    classes have several candidates and by one offset-coordinates NMS when many do.
    """
    region, labels, cand_scores = _candidates(boxes, probs, config)
    cand_boxes = boxes[region]
    counts = torch.bincount(labels, minlength=probs.shape[1])
    multi = counts[labels] > 1
    kept = [torch.where(~multi)[0]]
    m = torch.where(multi)[0]
    if m.numel():
        classes = torch.unique(labels[m])
        # measured on CPU: the loop costs ~0.35 ms per class, one NMS over n boxes ~3 ns x n^2
        if classes.numel() * 120_000 < m.numel() ** 2:
            for c in classes.tolist():
                sel = m[labels[m] == c]
                kept.append(sel[nms(cand_boxes[sel], cand_scores[sel], config.nms_thresh)])
        else:
            kept.append(m[batched_nms_offsets(cand_boxes[m], cand_scores[m], labels[m], config.nms_thresh)])
    keep = _ranked(torch.cat(kept), cand_scores)[: config.detections_per_image]
    return cand_boxes[keep], cand_scores[keep], labels[keep], region[keep]


def batched_nms_offsets(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                        iou_threshold: float) -> torch.Tensor:
    """NMS within each group in one call: boxes of different groups are shifted apart so that
    they never overlap (what torchvision's batched_nms does for small inputs). In float64:
    with thousands of groups the offsets reach 1e7 px, where float32 steps are a pixel wide."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    boxes = boxes.double()
    span = boxes.max() - boxes.min() + 1
    offsets = torch.unique(groups, return_inverse=True)[1].to(boxes) * span
    return nms(boxes - boxes.min() + offsets[:, None], scores.double(), iou_threshold)


def select_detections_batch(
    boxes: list[torch.Tensor], probs: list[torch.Tensor], config, *, batched: bool | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """`select_detections` for every image of a batch. batched (default: on accelerators):
    one NMS over all candidates of all images, no per-class or per-image NMS loop."""
    if not boxes:
        return []
    if config.detections_per_image == 0:
        empty = boxes[0].new_zeros(0, dtype=torch.int64)
        return [(b[:0], p.new_zeros(0), empty, empty) for b, p in zip(boxes, probs)]
    if not _use_batched(boxes[0], batched):
        return [select_detections(b, p, config) for b, p in zip(boxes, probs)]
    cands = [_candidates(b, p, config) for b, p in zip(boxes, probs)]
    image = torch.cat([torch.full_like(c[1], i) for i, c in enumerate(cands)])
    region = torch.cat([c[0] for c in cands])
    labels = torch.cat([c[1] for c in cands])
    scores = torch.cat([c[2] for c in cands])
    cand_boxes = torch.cat([b[c[0]] for b, c in zip(boxes, cands)])
    num_classes = max(p.shape[1] for p in probs)
    keep = batched_nms_offsets(cand_boxes, scores, image * num_classes + labels, config.nms_thresh)
    keep = _ranked(keep, scores)
    keep = keep[_stable_argsort(image[keep])]  # image-major, by score within each image
    if len(boxes) == 1:  # one image: no split by counts (which a traced graph would fix)
        per_image = [keep]
    else:
        per_image = keep.split(torch.bincount(image[keep], minlength=len(boxes)).tolist())
    out = []
    for k in per_image:
        k = k[: config.detections_per_image]
        out.append((cand_boxes[k], scores[k], labels[k], region[k]))
    return out


def with_limits(config, *, threshold: float | None = None, max_detections: int | None = None):
    """The config with the caller's score threshold and detection limit (None: the config's)."""
    changes = {}
    if threshold is not None:
        # a 0-dim tensor stays one: the score threshold is an input of the exported graph
        changes["score_thresh"] = threshold if isinstance(threshold, torch.Tensor) else float(threshold)
    if max_detections is not None:
        changes["detections_per_image"] = int(max_detections)
    return replace(config, **changes) if changes else config


# ------------------------------------------------------------------------------ masks
def mask_limit(max_detections: int, size: tuple[int, int], max_mask_bytes: int | None) -> int:
    """`max_detections`, lowered (with a warning) so that one image's pasted masks, float32 at
    `size` (the padded image the network saw), fit in `max_mask_bytes` (None: no bound)."""
    if max_mask_bytes is None:
        return max_detections
    h, w = int(size[0]), int(size[1])
    each = 4 * max(1, h * w)
    fit = max(1, int(max_mask_bytes) // each)
    if max_detections <= fit:
        return max_detections
    log.warning("max_detections lowered from %d to %d for a %dx%d image: its masks take %.1f MiB "
                "each and max_mask_bytes is %.0f MiB", max_detections, fit, w, h, each / 2**20,
                max_mask_bytes / 2**20)
    return fit


def _mask_spans(masks: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's pasting geometry, so that both branches paste what Mask R-CNN always has:
    each [M, M] mask gets a one-pixel zero border, its box grows by (M + 2) / M about its
    centre and is truncated to whole pixels x0..x1 (inclusive), i.e. the span [x0, x1 + 1).
    -> (padded masks [N, M + 2, M + 2], spans [N, 4] (left, top, right, bottom) float)."""
    m = masks.shape[-1]
    scale = (m + 2) / m
    b = boxes.float()
    centre = (b[:, :2] + b[:, 2:]) * 0.5
    half = (b[:, 2:] - b[:, :2]) * 0.5 * scale
    corners = torch.cat([centre - half, centre + half], dim=1).to(torch.int64)
    size = (corners[:, 2:] - corners[:, :2] + 1).clamp_min(1)
    spans = torch.cat([corners[:, :2], corners[:, :2] + size], dim=1).float()
    return F.pad(masks.float(), (1, 1, 1, 1)), spans


def _sample_window(padded: torch.Tensor, spans: torch.Tensor, y0: int, x0: int, y1: int, x1: int) -> torch.Tensor:
    """Padded masks [N, M', M'] stretched over their spans [N, 4], sampled bilinearly at the
    pixel centres of the window [y0, y1) x [x0, x1) -> [N, y1 - y0, x1 - x0]. The border of
    the padded masks is zero, so "border" sampling is zero outside each span."""
    n = padded.shape[0]
    ys = torch.arange(y0, y1, device=padded.device, dtype=torch.float32) + 0.5
    xs = torch.arange(x0, x1, device=padded.device, dtype=torch.float32) + 0.5
    gx = (xs[None, :] - spans[:, 0:1]) / (spans[:, 2:3] - spans[:, 0:1]) * 2 - 1
    gy = (ys[None, :] - spans[:, 1:2]) / (spans[:, 3:4] - spans[:, 1:2]) * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(n, ys.numel(), xs.numel()),
                        gy[:, :, None].expand(n, ys.numel(), xs.numel())], dim=3)
    return F.grid_sample(padded[:, None], grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[:, 0]


def paste_masks(masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int], *,
                batched: bool | None = None, chunk_bytes: int = PASTE_CHUNK_BYTES) -> torch.Tensor:
    """[N, M, M] mask probabilities inside [N, 4] xyxy boxes -> [N, H, W] at image size, with
    torchvision's `paste_masks_in_image` geometry (tests/model/test_postprocess.py).

    batched (default: on accelerators): one grid_sample over the whole image per chunk of
    masks, each chunk's output and sampling grid within `chunk_bytes`. Otherwise each mask
    is resized to its own span and written into it (torchvision's arithmetic, without its
    per-mask full-image buffers)."""
    h, w = int(image_size[0]), int(image_size[1])
    n = masks.shape[0]
    if n == 0 or h == 0 or w == 0:
        return masks.new_zeros(n, h, w, dtype=torch.float32)
    padded, spans = _mask_spans(masks, boxes)
    # one preallocated output: the masks are held once (no list of chunks + concatenation)
    out = masks.new_zeros(n, h, w, dtype=torch.float32)
    if _use_batched(masks, batched):
        per_mask = h * w * 12  # float32 output + 2 x float32 grid per pixel
        rows = max(1, chunk_bytes // per_mask)
        for s in range(0, n, rows):
            out[s:s + rows] = _sample_window(padded[s:s + rows], spans[s:s + rows], 0, 0, h, w)
        return out
    for i, (left, top, right, bottom) in enumerate(spans.to(torch.int64).tolist()):
        x0, y0, x1, y1 = max(left, 0), max(top, 0), min(right, w), min(bottom, h)
        if x1 > x0 and y1 > y0:
            # separable bilinear resize of the one mask to its span: cheaper on CPU than sampling
            resized = F.interpolate(padded[i][None, None], size=(bottom - top, right - left),
                                    mode="bilinear", align_corners=False)[0, 0]
            out[i, y0:y1, x0:x1] = resized[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


# ------------------------------------------------------------------------------ finish
def finish_detections(
    boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor | None,
    embeddings: torch.Tensor, image_embeddings: torch.Tensor | None, *,
    input_size: tuple[int, int], padded_size: tuple[int, int], image_size: tuple[int, int],
    class_names=None, output_device: str | torch.device | None = "cpu", batched: bool | None = None,
    max_mask_bytes: int | None = None,
) -> Detections:
    """Selected regions -> `Detections` in original image pixels: the one finish of
    `ViLDDetector.forward`, `vild.model.predict` (Detector, `vild eval`, the service).

    boxes [K, 4] xyxy in the network's resized input (`input_size`), sorted by score; masks
    [K, M, M] inside those boxes or None; padded_size: the image the network saw (thin images
    are padded bottom/right, see `vild.model.predict.pad_thin_image`), image_size: the
    original. Boxes are resized, detections lying wholly in the padding dropped, masks
    pasted, and everything handed to `output_device` (None: stays where it is) as float32 /
    int64. max_mask_bytes: with masks, only the best detections whose pasted masks fit in
    this many bytes are kept (a warning says so; checked before anything is pasted).
    """
    if masks is not None and max_mask_bytes is not None:
        k = mask_limit(int(boxes.shape[0]), padded_size, max_mask_bytes)
        boxes, scores, labels, masks, embeddings = boxes[:k], scores[:k], labels[:k], masks[:k], embeddings[:k]
        image_embeddings = image_embeddings[:k] if image_embeddings is not None else None
    boxes = resize_boxes(boxes.float(), list(input_size), list(padded_size))
    h, w = int(image_size[0]), int(image_size[1])
    paste_boxes = boxes
    if tuple(padded_size) != (h, w):  # padded thin image: crop back, drop boxes in the padding
        clamped = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                               boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], dim=1)
        keep = (clamped[:, 2] > clamped[:, 0]) & (clamped[:, 3] > clamped[:, 1])
        paste_boxes, boxes = boxes[keep], clamped[keep]
        scores, labels, embeddings = scores[keep], labels[keep], embeddings[keep]
        image_embeddings = image_embeddings[keep] if image_embeddings is not None else None
        masks = masks[keep] if masks is not None else None
    pasted = None
    if masks is not None:
        # the kept masks pasted (with their unclamped boxes) at the padded size into one
        # tensor, then cropped: a view, no second copy of the masks. The batched branch's
        # chunks (output + sampling grid) stay within the same bound as the masks.
        chunk = PASTE_CHUNK_BYTES if max_mask_bytes is None else min(PASTE_CHUNK_BYTES, int(max_mask_bytes))
        pasted = paste_masks(masks, paste_boxes, tuple(padded_size), batched=batched,
                             chunk_bytes=chunk)[:, :h, :w]

    def out(t: torch.Tensor | None, dtype=torch.float32):
        if t is None:
            return None
        return t.to(output_device or t.device, dtype)

    return Detections(
        boxes=out(boxes), scores=out(scores), labels=out(labels, torch.int64), image_size=(h, w),
        masks=out(pasted), embeddings=out(embeddings), image_embeddings=out(image_embeddings),
        class_names=tuple(class_names) if class_names is not None else None,
    )
