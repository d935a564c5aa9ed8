"""Run a detector over an annotated split and evaluate it (LVIS + COCO), timing inference."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm import tqdm

from vild.evaluation.coco_eval import evaluate_coco
from vild.evaluation.lvis_eval import evaluate_lvis
from vild.evaluation.proposals import proposal_recall
from vild.evaluation.results import save_results


def _image_batches(images_dir, annotations, batch_size, max_images):
    from vild.data.detection import DetectionDataset

    dataset = DetectionDataset(images_dir, annotations, with_masks=False)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for start in range(0, count, batch_size):
        idx = range(start, min(start + batch_size, count))
        yield [dataset.image_ids[i] for i in idx], [dataset.load_image(i) for i in idx]


@torch.no_grad()
def predict_split(
    model, images_dir, annotations, text_embeddings, category_ids, *,
    base_mask=None, method=None, teacher=None, batch_size=4, max_images=None, progress=True,
    num_crop_regions=300, precision="fp32",
) -> tuple[list[dict], dict]:
    """-> (COCO-format results, {"images", "ms_per_image"}). Timing covers inference only.

    Detections come from `vild.model.predict.predict`, the path `Detector.detect` runs, with
    the config's score_thresh and detections_per_image; one forward pass per `batch_size`
    images. method: a `vild.model.methods.METHODS` name (None or "native": the model's own).
    """
    from vild.model.convert import detections_to_coco
    from vild.model.predict import predict

    model.eval()
    results, seconds, images_done = [], 0.0, 0
    bar = tqdm(desc=f"eval[{method or 'native'}]", unit="img", disable=not progress)
    for image_ids, images in _image_batches(images_dir, annotations, batch_size, max_images):
        started = time.perf_counter()
        detections = predict(
            model, images, text_embeddings, base_mask=base_mask, method=method, teacher=teacher,
            num_crop_regions=num_crop_regions, precision=precision,
        )
        seconds += time.perf_counter() - started
        images_done += len(images)
        for image_id, det in zip(image_ids, detections):
            results.extend(detections_to_coco(det, image_id, category_ids))
        bar.update(len(images))
    bar.close()
    return results, {"images": images_done, "ms_per_image": 1000 * seconds / max(images_done, 1)}


def evaluate_detector(
    model, images_dir, annotations, text_embeddings, category_ids, *,
    base_mask=None, novel_category_ids=None, method=None, teacher=None, batch_size=4,
    max_images=None, results_path: str | Path | None = None, progress=True, num_crop_regions=300,
    precision="fp32",
) -> dict:
    """Predict (`predict_split`) and evaluate: {"lvis": {segm, bbox}, "coco": {segm, bbox}, "timing": ...}."""
    results, timing = predict_split(
        model, images_dir, annotations, text_embeddings, category_ids, base_mask=base_mask,
        method=method, teacher=teacher, batch_size=batch_size, max_images=max_images,
        progress=progress, num_crop_regions=num_crop_regions, precision=precision,
    )
    if results_path is not None:
        save_results(results_path, results)
    image_ids = None
    if max_images is not None:
        from vild.data.detection import load_annotation_file

        image_ids = [int(im["id"]) for im in load_annotation_file(annotations)["images"][:max_images]]
    timing["precision"] = precision
    return {
        "lvis": evaluate_lvis(str(annotations), results, image_ids=image_ids),
        "coco": evaluate_coco(
            str(annotations), results, novel_category_ids=novel_category_ids, image_ids=image_ids
        ),
        "timing": timing,
    }


@torch.no_grad()
def evaluate_rpn_recall(
    model, images_dir, annotations, *, category_ids=None, limits=(100, 300, 1000), batch_size=8,
    max_images=None, progress=True,
) -> dict:
    """RPN average recall (IoU 0.5:0.95) on `category_ids` (e.g. the novel ones).

    The RPN keeps max(limits) proposals here, whatever the model's test-time setting.
    """
    proposals = {}
    rpn = model.rpn
    saved = dict(rpn._pre_nms_top_n), dict(rpn._post_nms_top_n)
    rpn._pre_nms_top_n["testing"] = max(saved[0]["testing"], max(limits))
    rpn._post_nms_top_n["testing"] = max(limits)
    try:
        for image_ids, images in tqdm(
            _image_batches(images_dir, annotations, batch_size, max_images), desc="rpn recall",
            disable=not progress,
        ):
            for image_id, (boxes, scores) in zip(image_ids, model.propose(images)):
                proposals[image_id] = (boxes, scores)
    finally:
        rpn._pre_nms_top_n, rpn._post_nms_top_n = saved
    return proposal_recall(str(annotations), proposals, category_ids=category_ids, limits=limits)
