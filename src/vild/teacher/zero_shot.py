"""Zero-shot checks of the teacher: classify held-out web images by their category prompts.

Used during training (`held_out_probe` + `probe_accuracy`, on the model as it trains) and at
its end (`simple_prompt_top1`); the benchmark uses the 63 ViLD prompts instead of
`SIMPLE_TEMPLATES`.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vild.errors import VildError
from vild.teacher.corpus import load_categories, load_web_corpus

SIMPLE_TEMPLATES = ("a photo of a {}.", "{}", "a {} shape.")


def class_prompts(categories: list[dict], templates=SIMPLE_TEMPLATES) -> list[list[str]]:
    """Per category, prompts over its name and synonyms (underscores -> spaces)."""
    out = []
    for c in categories:
        names = [c["name"].replace("_", " ")] + [s.replace("_", " ") for s in c.get("synonyms", [])]
        out.append([t.format(n) for n in names for t in templates])
    return out


@torch.no_grad()
def text_classifier(teacher, prompts: list[list[str]]) -> torch.Tensor:
    """[C, D]: per class, the normalised mean of its normalised prompt embeddings."""
    rows = [F.normalize(teacher.encode_text(p).mean(0), dim=-1) for p in prompts]
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_predict(teacher, images: torch.Tensor, classifier: torch.Tensor, *,
                      batch_size: int = 512) -> torch.Tensor:
    """uint8 [N, 3, S, S] (or float 0..1) -> predicted class index [N] (argmax cosine)."""
    preds = []
    for s in range(0, images.shape[0], batch_size):
        x = images[s:s + batch_size]
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        emb = teacher.encode_images(x)
        preds.append((emb @ classifier.to(emb.device).T).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def simple_prompt_top1(teacher, world_dir: Path) -> float:
    """Top-1 accuracy of `teacher` on the world's held-out web split with `SIMPLE_TEMPLATES`
    prompts, rounded to 4 digits (`VildError` if the split or the categories are unreadable)."""
    val = load_web_corpus(world_dir, "val")
    cats = load_categories(world_dir)
    clf = text_classifier(teacher, class_prompts(cats))
    id_to_index = {int(c["id"]): i for i, c in enumerate(cats)}
    labels = torch.tensor([id_to_index.get(int(i), -1) for i in val.category_ids])
    pred = zero_shot_predict(teacher, val.images, clf)
    return round(float((pred == labels).float().mean()), 4)


def held_out_probe(world_dir: Path, n_images: int):
    """(uint8 images, labels, prompts) of a fixed held-out subset, or None if unavailable."""
    try:
        val = load_web_corpus(world_dir, "val")
        cats = load_categories(world_dir)
    except VildError:
        return None
    id_to_index = {int(c["id"]): i for i, c in enumerate(cats)}
    idx = torch.linspace(0, len(val) - 1, min(n_images, len(val))).long()
    labels = torch.tensor([id_to_index.get(int(i), -1) for i in val.category_ids[idx]])
    return val.images[idx], labels, class_prompts(cats)


class TrainingModelView:
    """encode_text / encode_images over a model that is still training (no freezing)."""

    def __init__(self, model, tokenizer, image_size: int, mean, std) -> None:
        self.model, self.tokenizer, self.image_size = model, tokenizer, image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return F.normalize(self.model.encode_text(self.tokenizer(list(texts)).to(self.device)).float(), dim=-1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)


def probe_accuracy(model, tokenizer, probe, image_size, mean, std) -> float:
    """Top-1 of a training `model` on `held_out_probe`'s images; leaves it in eval mode (the
    loop puts it back in training mode)."""
    images, labels, prompts = probe
    model.eval()
    view = TrainingModelView(model, tokenizer, image_size, mean, std)
    pred = zero_shot_predict(view, images, text_classifier(view, prompts))
    return float((pred == labels).float().mean())
