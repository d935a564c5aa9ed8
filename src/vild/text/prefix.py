"""Shared-prefix encoding: prompts that start with the same tokens compute them once.

Prompts of one template share a token prefix (``"<sot> this is a photo of the"`` for every
name). `plan_prefix_groups` groups prompts by a common prefix where that saves work; the
prefix's keys/values are computed once per group (`prefix_table`) and only the suffixes
(``"<name> . <eot>"``) run through the tower (`run_suffixes`), attending to their group's
cached prefix. By causality this is the same computation as the full sequence; only the
floating-point summation order differs. Needs plain open_clip ``ResidualAttentionBlock``s
(`vild.text.tower.TextTower.kv_blocks`), whose attention `kv_block` re-implements.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vild.text.tower import TextTower, embed_tokens


def plan_prefix_groups(
    seqs: np.ndarray, lengths: np.ndarray, *, overhead: float = 8.0, prefix_weight: float = 4.0,
) -> list[tuple[int, np.ndarray]]:
    """Partition sequences into groups that share a token prefix, minimising the work.

    `seqs` is [N, L] int64 (rows padded with -1 after their `lengths`). Returns a list of
    ``(prefix_len, row_indices)``; every row of a group starts with the same `prefix_len`
    tokens and keeps at least one own token (``prefix_len <= length - 1``). Cost model, in
    token-positions: a group costs ``overhead + prefix_weight * prefix_len + sum(len - prefix)``
    (the prefix runs once, in a small batch, which is less efficient per token); a group whose
    sharing would not pay gets ``prefix_len = 0``.
    """
    n = seqs.shape[0]
    if n == 0:
        return []
    order = np.lexsort(seqs.T[::-1])
    s = seqs[order]
    lens = lengths[order].astype(np.int64)
    if n > 1:
        eq = s[:-1] == s[1:]
        lcp = np.cumprod(eq, axis=1).sum(axis=1)
    else:
        lcp = np.zeros(0, dtype=np.int64)

    groups: list[tuple[int, np.ndarray]] = []

    def own(lo: int, hi: int) -> tuple[float, int]:
        p = int(lens[lo:hi].min()) - 1
        if hi - lo > 1:
            p = min(p, int(lcp[lo:hi - 1].min()))
        p = max(p, 0)
        total = float(lens[lo:hi].sum())
        shared = overhead + prefix_weight * p + total - p * (hi - lo)
        return (shared, p) if p > 0 and shared < total else (total, 0)

    def solve(lo: int, hi: int) -> tuple[float, list[tuple[int, int, int]]]:
        cost, p = own(lo, hi)
        if hi - lo <= 2:
            return cost, [(p, lo, hi)]
        seg = lcp[lo:hi - 1]
        m = int(seg.min())
        cuts = [lo] + [lo + 1 + int(j) for j in np.flatnonzero(seg == m)] + [hi]
        split_cost = 0.0
        parts: list[tuple[int, int, int]] = []
        for a, b in zip(cuts[:-1], cuts[1:]):
            c, g = solve(a, b)
            split_cost += c
            parts.extend(g)
            if split_cost >= cost:
                return cost, [(p, lo, hi)]
        return (split_cost, parts) if split_cost < cost else (cost, [(p, lo, hi)])

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        _, parts = solve(0, n)
    finally:
        sys.setrecursionlimit(limit)
    for p, lo, hi in parts:
        groups.append((p, order[lo:hi]))
    return groups


def prefix_table(tower: TextTower, prefixes: list[torch.Tensor], device, batch_size: int,
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per block, keys and values of every prefix, stacked: [1 + G, H, Pmax, hd] (entry 0
    and the positions past each prefix's length are zeros that the masks hide). Prefixes of
    one length run as one batch of at most `batch_size`."""
    if not prefixes:
        return []
    pmax = max(len(p) for p in prefixes)
    table = None
    by_length: dict[int, list[int]] = {}
    for gi, prefix in enumerate(prefixes, start=1):
        by_length.setdefault(len(prefix), []).append(gi)
    for p, gis in by_length.items():
        for i in range(0, len(gis), batch_size):
            part = gis[i:i + batch_size]
            ids = torch.stack([prefixes[g - 1] for g in part]).to(device)
            _, kv = run_blocks_full(tower, embed_tokens(tower, ids, 0))
            if table is None:
                table = [(k.new_zeros((len(prefixes) + 1, k.shape[1], pmax, k.shape[3])),
                          v.new_zeros((len(prefixes) + 1, v.shape[1], pmax, v.shape[3])))
                         for k, v in kv]
            rows = torch.tensor(part, device=device)
            for (tk, tv), (k, v) in zip(table, kv):
                tk[rows, :, :p] = k
                tv[rows, :, :p] = v
    return table


def run_suffixes(tower: TextTower, tokens: torch.Tensor, prefix_len: torch.Tensor, suffix_len: torch.Tensor,
                 group: torch.Tensor, table: list[tuple[torch.Tensor, torch.Tensor]], device) -> torch.Tensor:
    """Pooled hidden states [B, W] of rows `tokens` [B, ctx] whose first `prefix_len` [B] tokens
    are cached in row `group` [B] of `table` (0 and `prefix_len` 0: no prefix); only the next
    `suffix_len` [B] tokens of each row (up to its pooled one) run through the blocks."""
    s = int(suffix_len.max())
    where = (prefix_len[:, None] + torch.arange(s)[None, :]).clamp_(max=tokens.shape[1] - 1)
    ids = tokens.gather(1, where).to(device)
    x = tower.token_embedding(ids).to(tower.transformer.get_cast_dtype())
    x = x + tower.positional_embedding[where.to(device)].to(x.dtype)
    pb = int(prefix_len.max())
    past = None
    prefix_valid = None
    if pb > 0:
        g = group.to(device)
        past = [(k.index_select(0, g)[:, :, :pb], v.index_select(0, g)[:, :, :pb]) for k, v in table]
        prefix_valid = torch.arange(pb, device=device)[None, :] < prefix_len.to(device)[:, None]
    return run_blocks(tower, x, past, prefix_valid, (suffix_len - 1).to(device))


def run_blocks_full(tower: TextTower, x):
    """All blocks on a full sequence from position 0 (causal); returns the hidden states
    and every block's (k, v) [B, H, S, hd]."""
    kvs = []
    for blk in tower.transformer.resblocks:
        x, kv = kv_block(blk, x, None, None, None)
        kvs.append(kv)
    return x, kvs


def run_blocks(tower: TextTower, x, past, prefix_valid, last):
    """All blocks on suffixes `x` [B, S, W] whose rows follow their own cached prefixes
    (`past`: per block (k, v) [B, H, Pb, hd] or None; `prefix_valid` [B, Pb] bool).
    The last block runs only each row's pooled token (`last` [B], index in 0..S-1);
    returns the pooled hidden states [B, W]."""
    blocks = tower.transformer.resblocks
    b, s, _ = x.shape
    dev = x.device
    causal = torch.ones(s, s, dtype=torch.bool, device=dev).tril_()
    mask = causal[None, None].expand(b, 1, s, s)
    last_mask = (torch.arange(s, device=dev)[None, :] <= last[:, None])[:, None, None, :]
    if prefix_valid is not None:
        pv = prefix_valid[:, None, None, :]
        mask = torch.cat([pv.expand(b, 1, s, pv.shape[-1]), mask], dim=-1)
        last_mask = torch.cat([pv, last_mask], dim=-1)
    for i, blk in enumerate(blocks):
        kv = past[i] if past is not None else None
        if i == len(blocks) - 1:
            x, _ = kv_block(blk, x, kv, last_mask, last)
        else:
            x, _ = kv_block(blk, x, kv, mask, None)
    return x


def kv_block(blk, x: torch.Tensor, past, mask: torch.Tensor | None, only: torch.Tensor | None):
    """open_clip ``ResidualAttentionBlock.forward`` with a key/value prefix cache.

    x: [B, S, W] hidden states of each row's suffix; past: (k, v) [B, H, P, hd] or None;
    mask: bool [B, 1, S or 1, P + S] (True = attend) or None for plain causal from position 0;
    only: per-row index of the single token to keep (then the result is [B, W]).
    Returns the new hidden states and this block's own (k, v) [B, H, S, hd]."""
    mha: nn.MultiheadAttention = blk.attn
    b, s, w = x.shape
    h = mha.num_heads
    qkv = F.linear(blk.ln_1(x), mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(b, s, 3, h, w // h).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, S, hd]
    own_kv = (k, v)
    if past is not None:
        k = torch.cat([past[0], k], dim=2)
        v = torch.cat([past[1], v], dim=2)
    if only is not None:
        rows = torch.arange(b, device=x.device)
        q = q[rows, :, only].unsqueeze(2)  # [B, H, 1, hd]
        x = x[rows, only].unsqueeze(1)  # [B, 1, W]
    if mask is None:
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = F.linear(o.transpose(1, 2).reshape(b, -1, w), mha.out_proj.weight, mha.out_proj.bias)
    x = x + blk.ls_1(o)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    if only is not None:
        x = x.squeeze(1)
    return x, own_kv
