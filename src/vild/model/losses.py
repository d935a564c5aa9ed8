"""Loss functions with explicit inputs; their weights live in the config."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy over [background + base]; logits [N, 1 + C], labels [N] (0 = bg)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels)


def box_regression_loss(
    deltas: torch.Tensor, target_deltas: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Class-agnostic smooth-L1 on foreground RoIs, normalised by all sampled RoIs.

    deltas, target_deltas [N, 4]; labels [N] (0 = background).
    """
    if deltas.shape[0] == 0:
        return deltas.sum() * 0.0
    positive = labels > 0
    loss = F.smooth_l1_loss(
        deltas[positive], target_deltas[positive], beta=1 / 9, reduction="sum"
    )
    return loss / labels.numel()


def distillation_loss(
    region_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, kind: str = "l1",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """ViLD-image loss between normalised embeddings [P, D]: summed over D, mean over P.

    kind "l1" (the paper's choice) or "l2" (squared error, for the paper's sweep). weights [P]
    scale each region's term (e.g. `vild.regions.rarity`); the sum is still divided by P.
    """
    if region_embeddings.shape[0] == 0:
        return region_embeddings.sum() * 0.0
    diff = region_embeddings - teacher_embeddings.to(region_embeddings.dtype)
    per_region = diff.abs().sum(dim=1) if kind == "l1" else diff.pow(2).sum(dim=1)
    if weights is not None:
        per_region = per_region * weights.to(per_region.dtype)
    return per_region.mean()


def relational_distillation_loss(
    region_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor, scale: float
) -> torch.Tensor:
    """How differently the regions rank the batch's teacher embeddings than the teacher does:
    mean over regions of KL(softmax(scale * t_i . T) || softmax(scale * s_i . T)), with s_i, t_i
    the region's and teacher's normalised embeddings [P, D] and T every teacher embedding.

    Why beside the L1 term: L1 weighs every dimension alike, so embeddings the batch holds few
    of (a novel object among base ones) are fitted least (docs/distillation.md sections 5, 21);
    this term is large exactly where a region sits nearer other regions' teacher embeddings
    than the teacher puts it. Overlapping proposals of one object share mass in the teacher's
    own distribution, so they are not pushed apart. 0 when the regions equal their targets.
    """
    if region_embeddings.shape[0] == 0:
        return region_embeddings.sum() * 0.0
    teacher = teacher_embeddings.to(region_embeddings.dtype)
    target = F.log_softmax(scale * teacher @ teacher.T, dim=1)
    student = F.log_softmax(scale * region_embeddings @ teacher.T, dim=1)
    return F.kl_div(student, target, reduction="batchmean", log_target=True)
