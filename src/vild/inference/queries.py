"""The work behind `Detector.embed` and `Detector.query` (the paper's on-the-fly queries): run
the network once and keep what scoring needs, then score any vocabulary with a matrix product
through the same methods, selection and finish as `detect`."""

from __future__ import annotations

import torch

from vild.inference.inputs import ImageRegions, Vocabulary, class_names


@torch.no_grad()
def embed_image(detector, image: torch.Tensor, method: str) -> ImageRegions:
    """One loaded image -> its `ImageRegions` (every region's box, embeddings and
    class-agnostic mask; the teacher's crop embeddings for the CLIP methods)."""
    from vild.model.predict import embed_batch, precision_context

    model = detector.model
    embedded = embed_batch(model, [image], method=method, teacher=detector.teacher,
                           num_crop_regions=detector.num_crop_regions, precision=detector.precision)
    batch, size, crops = embedded.batch, embedded.image_sizes[0], embedded.crops[0]
    r = batch.regions[0]
    masks = None
    if model.config.with_masks:
        with precision_context(detector.device, detector.precision):
            masks = model.roi_heads.predict_masks(batch.features, [r.boxes.float()], batch.sizes)[0][:, 0]
    boxes = batch.boxes_in_original(0).float()
    boxes = torch.stack([boxes[:, 0].clamp(0, size[1]), boxes[:, 1].clamp(0, size[0]),
                         boxes[:, 2].clamp(0, size[1]), boxes[:, 3].clamp(0, size[0])], dim=1)
    return ImageRegions(
        boxes=boxes,
        objectness=r.objectness,
        embeddings=r.embeddings,
        image_embeddings=r.image_embeddings,
        crop_embeddings=crops,
        masks=masks,
        image_size=size,
        input_boxes=r.boxes.float(),
        input_size=tuple(batch.sizes[0]),
        padded_size=tuple(batch.original_sizes[0]),
        method=method,
        model_id=id(model),
        clip_scale=embedded.clip_scale,
    )


@torch.no_grad()
def score_regions(detector, regions: ImageRegions, vocab: Vocabulary, attrs: Vocabulary | None,
                  method: str, threshold: float, max_detections: int):
    """Encoded vocabularies against kept regions -> `Detections`, exactly as `detect` would."""
    from vild.model.methods import vocabulary_probabilities
    from vild.model.postprocess import finish_detections, mask_limit, select_detections_batch, with_limits

    cfg = detector.model.config
    probs = vocabulary_probabilities(
        method, cfg, detector.model.roi_heads.background, regions.embeddings, regions.image_embeddings,
        regions.crop_embeddings, vocab.embeddings, vocab.base,
        attribute_embeddings=attrs.embeddings if attrs is not None else None,
        clip_scale=regions.clip_scale)
    if regions.masks is not None:
        max_detections = mask_limit(max_detections, regions.padded_size, detector.max_mask_bytes)
    limits = with_limits(cfg, threshold=threshold, max_detections=max_detections)
    boxes, scores, labels, index = select_detections_batch([regions.input_boxes], [probs], limits)[0]
    return finish_detections(
        boxes, scores, labels, regions.masks[index] if regions.masks is not None else None,
        regions.embeddings[index],
        regions.image_embeddings[index] if regions.image_embeddings is not None else None,
        input_size=regions.input_size, padded_size=regions.padded_size,
        image_size=regions.image_size, class_names=class_names(vocab, attrs),
        max_mask_bytes=detector.max_mask_bytes,
    )
