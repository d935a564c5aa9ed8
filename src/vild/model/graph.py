"""The detector as one traceable function of tensors, for export (`vild export --format onnx`).

    graph = DetectionGraph(model)                    # eval mode, the model's own method
    boxes, scores, labels, masks, embeddings, image_embeddings, input_size = graph(
        image, text_embeddings, base_mask, score_threshold)

The vocabulary stays an input: `text_embeddings` [C, D] with any C. The graph runs the same
steps as `vild.model.predict` for one image (`ViLDDetector.regions`, the scoring method of
`vild.model.methods`, `ViLDDetector.select_and_mask`), and stops before
`vild.model.postprocess.finish_detections`, which the ONNX runner (`vild.inference.onnx`)
calls on the graph's outputs: masks come out as [K, M, M] probabilities inside their boxes
and are pasted there by the one paster.

Inputs: image [3, H, W] float in 0..1 (any H, W; thin images padded beforehand with
`vild.model.predict.pad_thin_image`), text_embeddings [C, D] L2-normalised rows, base_mask
[C] bool (categories labelled in training: ViLD-ensemble's weighting), score_threshold []
float. Outputs (`output_names`): boxes [K, 4] xyxy in the network's resized input, scores
[K], labels [K] int64, masks [K, M, M] (models with masks), embeddings [K, D] (text head),
image_embeddings [K, D] (ViLD-ensemble), input_size [2] int64 (the resized input's H, W).
K <= `max_detections`, fixed when the graph is built.
"""

from __future__ import annotations

import torch
from torch import nn

from vild.model.methods import CROP_METHODS, resolve_method, vocabulary_probabilities
from vild.model.postprocess import with_limits

INPUT_NAMES = ("image", "text_embeddings", "base_mask", "score_threshold")


class DetectionGraph(nn.Module):
    """One image and a vocabulary -> selected detections before pasting (see module docstring).

    method: a scoring method of the model that needs no teacher (default: the model's own);
    max_detections: the most detections the graph returns (default: the config's)."""

    def __init__(self, model, *, method: str | None = None, max_detections: int | None = None) -> None:
        super().__init__()
        mode = model.config.mode
        if method in CROP_METHODS:
            raise ValueError(f"method {method!r} runs the teacher on crops and cannot be part of the graph")
        if model.config.image_head_input == "tower":
            raise ValueError("a model whose distillation head reads the teacher's tower cannot be exported "
                             "yet (its per-box upsampling is data-dependent); run it with vild detect")
        self.model = model.eval()
        self.method = resolve_method(method, mode, with_teacher=False)
        self.max_detections = int(model.config.detections_per_image if max_detections is None else max_detections)
        if self.max_detections < 1:
            raise ValueError(f"max_detections must be >= 1, got {max_detections}")
        # the wrapper too: torch.onnx.export restores the mode it found, recursively
        self.eval()

    @property
    def output_names(self) -> tuple[str, ...]:
        cfg = self.model.config
        names = ["boxes", "scores", "labels"]
        names += ["masks"] if cfg.with_masks else []
        names += ["embeddings"]
        names += ["image_embeddings"] if cfg.separate_image_head else []
        return tuple(names + ["input_size"])

    def example_inputs(self, *, height: int = 96, width: int = 128, categories: int = 3) -> tuple:
        """Inputs to trace with: a structured image (so that the trace sees detections) and
        random unit text embeddings; C and H x W are dynamic in the exported graph."""
        g = torch.Generator().manual_seed(0)
        image = torch.rand(3, 1, 1, generator=g).expand(3, height, width).clone()
        image[:, height // 4: height // 2, width // 4: width // 2] = torch.rand(3, 1, 1, generator=g)
        text = torch.nn.functional.normalize(torch.randn(categories, self.model.config.embed_dim, generator=g), dim=-1)
        base = torch.arange(categories) % 2 == 0
        return image, text, base, torch.tensor(0.0)

    @torch.no_grad()
    def forward(self, image: torch.Tensor, text_embeddings: torch.Tensor, base_mask: torch.Tensor,
                score_threshold: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model, cfg = self.model, self.model.config
        batch = model.regions([image])
        r = batch.regions[0]
        probs = vocabulary_probabilities(self.method, cfg, model.roi_heads.background, r.embeddings,
                                         r.image_embeddings, None, text_embeddings, base_mask)
        limits = with_limits(cfg, threshold=score_threshold, max_detections=self.max_detections)
        picks, masks = model.select_and_mask(batch, [probs], limits, batched=True)
        boxes, scores, labels, index = picks[0]
        height, width = batch.sizes[0]
        # shape values are tensors while tracing: the input size stays dynamic in the graph
        input_size = torch.stack([torch.as_tensor(height), torch.as_tensor(width)]).to(torch.int64)
        out = {"boxes": boxes, "scores": scores, "labels": labels, "masks": masks[0],
               "embeddings": r.embeddings[index],
               "image_embeddings": r.image_embeddings[index] if r.image_embeddings is not None else None,
               "input_size": input_size}
        return tuple(out[name] for name in self.output_names)
