"""Label-free rarity weights for the distilled proposals of a region store.

Detection images show frequent categories far more often than rare ones, so most distilled
proposals repeat a few frequent looks and the rare (novel) objects, which the teacher knows
well, are a small share of the distillation loss. Each proposal's weight is

    (1 + number of reference proposals whose teacher embedding has cosine > threshold) ** -power

normalised to mean 1 over the store: proposals in dense regions of the teacher's embedding
space (frequent looks) count less, isolated ones (rare looks) more. It uses the teacher's
embeddings alone: no label, no category name. power 0 gives the paper's uniform loss.
Measured in docs/distillation.md (section 5).
"""

from __future__ import annotations

import torch

from vild.errors import VildError


def density_counts(embeddings: torch.Tensor, reference: torch.Tensor, threshold: float,
                   chunk: int = 8192) -> torch.Tensor:
    """[N] number of `reference` rows [R, D] with cosine > `threshold` to each of `embeddings` [N, D]
    (both L2-normalised)."""
    counts = torch.empty(len(embeddings), dtype=torch.float32)
    reference = reference.float()
    for start in range(0, len(embeddings), chunk):
        block = embeddings[start:start + chunk].float() @ reference.T
        counts[start:start + chunk] = (block > threshold).sum(1).float()
    return counts


def rarity_weights(store, *, power: float, threshold: float = 0.8, reference_size: int = 8192,
                   seed: int = 0, image_ids=None) -> dict[int, torch.Tensor]:
    """Region store (or anything with `.get(image_id)` and `.image_ids`) -> {image id: weights [P]}.

    The reference set is `reference_size` proposals drawn without replacement (fixed `seed`)
    from all proposals in store order, so the weights are a pure function of the store and the
    arguments. The store is read three times (sizes, reference, densities) and never held whole
    in memory: an LVIS-size store (millions of proposals) costs the reference set and one
    float per proposal.
    """
    if power < 0:
        raise VildError(f"rarity power must be >= 0, got {power}")
    if not -1.0 < threshold < 1.0:
        raise VildError(f"rarity threshold is a cosine in (-1, 1), got {threshold}")
    ids = list(store.image_ids) if image_ids is None else [int(i) for i in image_ids]

    def stored(image_id):
        entry = store.get(image_id)
        return entry[2] if entry is not None and len(entry[2]) else None

    owners = [(i, len(e)) for i in ids if (e := stored(i)) is not None]
    total = sum(n for _, n in owners)
    if not total:
        return {}
    pick = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:reference_size]
    order = pick.argsort()
    wanted = pick[order]  # ascending positions in store order
    rows, start, k = [], 0, 0
    for image_id, n in owners:
        j = k
        while j < len(wanted) and int(wanted[j]) < start + n:
            j += 1
        if j > k:
            rows.append(stored(image_id)[wanted[k:j] - start].float())
        k, start = j, start + n
    reference = torch.empty(len(pick), rows[0].shape[1])
    reference[order] = torch.cat(rows)  # back in draw order
    density = torch.cat([1.0 + density_counts(stored(image_id), reference, threshold) for image_id, _ in owners])
    weights = density.pow(-float(power))
    weights = weights / weights.mean()
    out, start = {}, 0
    for image_id, n in owners:
        out[image_id] = weights[start:start + n].clone()
        start += n
    return out
