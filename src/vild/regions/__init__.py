"""Offline store of teacher embeddings of proposals (ViLD-image distillation targets).

    embed_regions(dataset, proposer, teacher, out_dir, num_proposals=300) -> RegionStore
    RegionStore(out_dir).get(image_id) -> (boxes [P, 4] xyxy px, scores [P], embeddings [P, D])

Attributes are imported lazily so that importing `vild.regions.cli` stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["embed_regions", "select_proposals", "RegionStore"]

if TYPE_CHECKING:  # pragma: no cover
    from vild.regions.embed import embed_regions
    from vild.regions.proposals import select_proposals
    from vild.regions.store import RegionStore


def __getattr__(name: str) -> Any:
    if name == "embed_regions":
        from vild.regions.embed import embed_regions

        return embed_regions
    if name == "select_proposals":
        from vild.regions.proposals import select_proposals

        return select_proposals
    if name == "RegionStore":
        from vild.regions.store import RegionStore

        return RegionStore
    raise AttributeError(f"module 'vild.regions' has no attribute {name!r}")
