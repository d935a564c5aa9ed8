"""open_clip causal text towers: which ones the fast paths support, and trimmed encoding.

`inspect_text_tower` accepts open_clip ``CLIP`` (built-in text tower) and ``CustomTextCLIP``
whose ``.text`` is a ``TextTransformer``, with a standard causal mask, no CLS token / padding
mask and ``argmax``, ``eos`` or ``first`` pooling, and says why it rejects anything else (HF
text towers, ``last`` pooling, bidirectional towers, subclasses that override ``encode_text``).

With the causal mask, the pooled token attends only to positions at or before it, so the
padding after it is dead work: `encode_text_trimmed` (training) and `vild.text.encode.TextEncoder`
(inference) both run only positions ``0..pooled``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class TextTower:
    """The pieces of an open_clip causal text tower the fast path needs."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: torch.Tensor | nn.Linear | None
    attn_mask: torch.Tensor
    pool_type: str
    eos_id: int | None
    kv_blocks: bool  # every block is a plain ResidualAttentionBlock: prefix sharing possible


def _is_causal_mask(mask: torch.Tensor | None, n: int) -> bool:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (n, n):
        return False
    ref = torch.full((n, n), float("-inf"), device=mask.device, dtype=mask.dtype).triu_(1)
    return bool(torch.equal(mask, ref))


def _plain_block(blk: nn.Module) -> bool:
    """A ResidualAttentionBlock whose attention we can re-implement with a key/value cache."""
    from open_clip.transformer import ResidualAttentionBlock

    if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
        return False
    if type(blk).forward is not ResidualAttentionBlock.forward:
        return False
    a = blk.attn
    return (
        type(a) is nn.MultiheadAttention
        and a.batch_first
        and a._qkv_same_embed_dim
        and a.bias_k is None
        and a.bias_v is None
        and not a.add_zero_attn
        and a.in_proj_weight is not None
        and a.embed_dim % a.num_heads == 0
    )


def inspect_text_tower(model: nn.Module) -> tuple[TextTower | None, str]:
    """Detect a text tower the fast path supports. Returns ``(tower, "")`` or ``(None, why)``."""
    try:
        from open_clip.model import CLIP, CustomTextCLIP
        from open_clip.transformer import TextTransformer, Transformer
    except ImportError as e:  # pragma: no cover - open_clip is a dependency
        return None, f"open_clip not importable ({e})"

    if isinstance(model, CLIP):
        if type(model).encode_text is not CLIP.encode_text:
            return None, f"{type(model).__name__} overrides encode_text"
        src = model
        pool_type = getattr(model, "text_pool_type", None)
        eos_id = getattr(model, "text_eos_id", None)
    elif isinstance(model, CustomTextCLIP):
        if type(model).encode_text is not CustomTextCLIP.encode_text:
            return None, f"{type(model).__name__} overrides encode_text"
        src = model.text
        if not isinstance(src, TextTransformer) or type(src).forward is not TextTransformer.forward:
            return None, f"text tower {type(src).__name__} is not open_clip's TextTransformer"
        if src.cls_emb is not None or getattr(src, "use_pad_mask", False):
            return None, "text tower uses a CLS token or a padding mask"
        pool_type = src.pool_type
        eos_id = getattr(src, "eos_id", None)
    else:
        return None, f"{type(model).__name__} is not an open_clip CLIP/CustomTextCLIP"

    transformer = getattr(src, "transformer", None)
    if type(transformer) is not Transformer or not getattr(transformer, "batch_first", False):
        return None, "text transformer is not open_clip's batch-first Transformer"
    pos = getattr(src, "positional_embedding", None)
    if not isinstance(pos, torch.Tensor) or pos.ndim != 2:
        return None, "no positional embedding table"
    if not _is_causal_mask(getattr(src, "attn_mask", None), pos.shape[0]):
        return None, "text tower is not causal (no standard causal attention mask)"
    if pool_type not in ("argmax", "eos", "first"):
        return None, f"pool type {pool_type!r} depends on padding"
    if pool_type == "eos" and eos_id is None:
        return None, "eos pooling without an eos id"
    proj = getattr(src, "text_projection", None)
    if proj is not None and not isinstance(proj, (torch.Tensor, nn.Linear)):
        return None, f"unsupported text projection {type(proj).__name__}"
    tower = TextTower(
        token_embedding=src.token_embedding,
        positional_embedding=pos,
        transformer=transformer,
        ln_final=src.ln_final,
        text_projection=proj,
        attn_mask=src.attn_mask,
        pool_type=pool_type,
        eos_id=eos_id,
        kv_blocks=all(_plain_block(b) for b in transformer.resblocks),
    )
    return tower, ""


def project_pooled(t: TextTower, pooled: torch.Tensor) -> torch.Tensor:
    """The tower's end, ``ln_final`` then the projection, on pooled hidden states [B, W]."""
    pooled = t.ln_final(pooled)
    if isinstance(t.text_projection, nn.Linear):
        pooled = t.text_projection(pooled)
    elif t.text_projection is not None:
        pooled = pooled @ t.text_projection
    return pooled.float()


def embed_tokens(t: TextTower, ids: torch.Tensor, start: int) -> torch.Tensor:
    """Token plus positional embeddings of `ids` [B, S] placed at positions ``start..``."""
    cast = t.transformer.get_cast_dtype()
    x = t.token_embedding(ids).to(cast)
    return x + t.positional_embedding[start:start + ids.shape[1]].to(cast)


def encode_text_trimmed(model: nn.Module, tokens: torch.Tensor, tower: TextTower | None = None) -> torch.Tensor:
    """``model.encode_text(tokens)`` (unnormalised, float32, differentiable: for training) run on
    positions ``0..`` the batch's last pooled position only; the padding after it is causally
    invisible. Falls back to ``model.encode_text`` for towers `inspect_text_tower` rejects.
    Pass ``tower`` (from `inspect_text_tower`) to skip the inspection on every call."""
    if tower is None:
        tower, _ = inspect_text_tower(model)
        if tower is None:
            return model.encode_text(tokens).float()
    pos = pooled_positions(tokens, tower.pool_type, tower.eos_id)
    length = int(pos.max()) + 1
    x = tower.transformer(embed_tokens(tower, tokens[:, :length], 0), attn_mask=tower.attn_mask[:length, :length])
    return project_pooled(tower, x[torch.arange(tokens.shape[0], device=x.device), pos])


def pooled_positions(tokens: torch.Tensor, pool_type: str, eos_id: int | None) -> torch.Tensor:
    """The position ``text_global_pool`` reads for each row (same expressions as open_clip)."""
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    if pool_type == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    if pool_type == "first":
        return torch.zeros(tokens.shape[0], dtype=torch.long)
    raise ValueError(f"pool type {pool_type!r} has no fixed pooled position")

