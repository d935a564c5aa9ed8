"""Scoring methods: region embeddings (and the teacher's crop embeddings) -> class
probabilities, under the one set of names that `vild detect`, `vild eval`, the API and the
service use.

    vild-text       the text head alone: cosine to text embeddings, softmax with the background
    vild-image      the distillation head alone: softmax over the vocabulary (no background)
    vild            one head trained with both losses
    vild-ensemble   text head and distillation head, geometric weighting (lambda on base)
    clip            the teacher on 1x + 1.5x crops of every region (slow)
    vild-text+clip  the text head ensembled with CLIP on crops (slow)
"""

from __future__ import annotations

import torch

from vild.model.heads import ensemble_probabilities, image_probabilities, text_logits

#: Every scoring method by its paper name, in the order of the paper's table.
METHODS = ("vild-text", "vild-image", "vild", "vild-ensemble", "clip", "vild-text+clip")
#: Methods that run the teacher's image tower on two crops of every region: slow.
CROP_METHODS = ("clip", "vild-text+clip")
DESCRIPTIONS = {
    "vild-text": "text head alone: cosine to text embeddings, softmax with the learned background",
    "vild-image": "distillation head alone: softmax over the vocabulary (no background)",
    "vild": "one head trained with both losses (ViLD)",
    "vild-ensemble": "text head and distillation head, geometric weighting (lambda on base)",
    "clip": "the teacher on 1x + 1.5x crops of every region (slow: two teacher passes per region)",
    "vild-text+clip": "text head ensembled with CLIP on crops (slow: two teacher passes per region)",
}
_NATIVE = {"text": "vild-text", "image": "vild-image", "vild": "vild", "ensemble": "vild-ensemble"}
#: Names of an earlier `vild eval` still accepted by the Python API (benchmark scripts).
_OLD_NAMES = {"text+clip": "vild-text+clip"}


def native_method(mode: str) -> str:
    """The method a model of `mode` ("text", "image", "vild", "ensemble") was trained for."""
    return _NATIVE[mode]


def methods_for_mode(mode: str, *, with_teacher: bool = True) -> tuple[str, ...]:
    """The methods a model of `mode` supports: its own heads, and with the teacher CLIP on
    crops (+ the ensemble of ViLD-text with it where the model has a text-only head)."""
    own = {
        "text": {"vild-text"},
        "image": {"vild-image"},
        "vild": {"vild"},
        "ensemble": {"vild-text", "vild-image", "vild-ensemble"},
    }[mode]
    if with_teacher:
        own.add("clip")
        if mode in ("text", "ensemble"):
            own.add("vild-text+clip")
    return tuple(m for m in METHODS if m in own)


def resolve_method(method: str | None, mode: str, *, with_teacher: bool = True) -> str:
    """`method` checked against what a model of `mode` supports; None (or the old name
    "native") is the model's own. Raises ValueError naming the choices."""
    if method is None or method == "native":
        return native_method(mode)
    method = _OLD_NAMES.get(method, method)
    allowed = methods_for_mode(mode, with_teacher=with_teacher)
    if method not in allowed:
        raise ValueError(
            f"method {method!r} is not available for this model (mode {mode!r}"
            f"{'' if with_teacher else ', no teacher'}): choose from {', '.join(allowed)}")
    return method


def teacher_logit_scale(teacher) -> float:
    """The teacher's CLIP temperature (`Teacher.logit_scale`; 100 for an object without one)."""
    scale = getattr(teacher, "logit_scale", None)
    return float(scale) if isinstance(scale, (int, float)) else 100.0


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits.float(), dim=-1)


def method_probabilities(
    method: str,
    config,
    background: torch.Tensor,
    embeddings: torch.Tensor,
    image_embeddings: torch.Tensor | None,
    crop_embeddings: torch.Tensor | None,
    text_embeddings: torch.Tensor,
    base_mask: torch.Tensor | None,
    *,
    clip_scale: float = 100.0,
    with_background: bool = True,
) -> torch.Tensor:
    """[P, C] fp32 probabilities of `method` for P regions against C text embeddings.

    embeddings [P, D]: the first (text) head's region embeddings; image_embeddings [P, D]:
    the ensemble's distillation head (None otherwise); crop_embeddings [P, D]: the teacher's
    1x + 1.5x crop embeddings (CLIP methods). base_mask [C] bool: categories labelled in
    training (ensemble weighting; None = all novel). `with_background=False` scores a set
    that is not a vocabulary of objects (attributes): the text head's softmax then runs over
    the set alone and every entry counts as novel in the ensembles. Always fp32, whatever
    precision the network ran in.
    """
    text_embeddings = text_embeddings.float()
    if base_mask is None or not with_background:
        base_mask = torch.zeros(text_embeddings.shape[0], dtype=torch.bool)
    base_mask = base_mask.to(text_embeddings.device)

    def p_text() -> torch.Tensor:
        if with_background:
            return _softmax(text_logits(embeddings.float(), text_embeddings, background.float(),
                                        config.temperature))[:, 1:]
        return _softmax(config.temperature * embeddings.float() @ text_embeddings.T)

    def p_image(head: torch.Tensor | None) -> torch.Tensor:
        if head is None:
            raise ValueError(f"method {method!r} needs the distillation head's embeddings")
        return image_probabilities(head.float(), text_embeddings, config.image_temperature)

    def p_clip() -> torch.Tensor:
        if crop_embeddings is None:
            raise ValueError(f"method {method!r} needs the teacher's crop embeddings")
        return _softmax(clip_scale * crop_embeddings.float() @ text_embeddings.T)

    lam = config.ensemble_lambda
    if method in ("vild-text", "vild"):
        return p_text()
    if method == "vild-image":
        return p_image(image_embeddings if config.separate_image_head else embeddings)
    if method == "vild-ensemble":
        return ensemble_probabilities(p_text(), p_image(image_embeddings), base_mask, lam)
    if method == "clip":
        return p_clip()
    if method == "vild-text+clip":
        return ensemble_probabilities(p_text(), p_clip(), base_mask, lam)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def vocabulary_probabilities(
    method: str, config, background, embeddings, image_embeddings, crop_embeddings,
    text_embeddings: torch.Tensor, base_mask: torch.Tensor | None, *,
    attribute_embeddings: torch.Tensor | None = None, clip_scale: float = 100.0,
) -> torch.Tensor:
    """`method_probabilities` over a vocabulary [C, D], optionally crossed with attributes
    [A, D]: -> [P, C * A], Pr(name, attribute | region) = Pr(name | region) x
    Pr(attribute | region), label c * A + a for (name c, attribute a)."""
    args = (method, config, background, embeddings, image_embeddings, crop_embeddings)
    p = method_probabilities(*args, text_embeddings, base_mask, clip_scale=clip_scale)
    if attribute_embeddings is None:
        return p
    pa = method_probabilities(*args, attribute_embeddings, None, clip_scale=clip_scale,
                              with_background=False)
    return (p[:, :, None] * pa[:, None, :]).reshape(p.shape[0], -1)
