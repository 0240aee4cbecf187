"""xformers' `memory_efficient_attention`, registered per model through `AttentionInterface`
(transformers has no built-in xformers): a causal mask for padded batches (exact for real tokens
under right padding, which the registered mask function checks) and a block-diagonal causal mask
built from the sequence boundaries for packed rows. GQA uses xformers' 5-D [B, L, G, H/G, D]
layout with key/value broadcast over the heads of a group (no copy).

Needs the `xformers` extra and a CUDA device; xformers is imported only when a forward runs.
"""

import importlib.util
import logging
from typing import Any

from . import (
    AttentionUnavailable,
    check_packing,
    compute_dtype,
    guard_packed,
    packed_boundaries,
    register,
    require_cuda,
    same_length_or_raise,
)

log = logging.getLogger(__name__)
NAME = "vicuna_sft_xformers"


def check(cfg: Any) -> None:
    check_packing(cfg)
    if importlib.util.find_spec("xformers") is None:
        raise AttentionUnavailable(
            "attention=xformers needs the xformers package: pip install 'vicuna_sft[xformers]' "
            "(or use attention=flash / attention=sdpa)"
        )
    require_cuda("xformers")


def implementation(cfg: Any) -> str:
    register(NAME, xformers_attention)
    log.info("attention=xformers: xformers.ops.memory_efficient_attention (causal / block-diagonal causal)")
    return NAME


def prepare(model: Any) -> Any:
    return guard_packed(model)


def _xops() -> Any:  # looked up at call time so that CPU tests can substitute a reference
    import xformers.ops

    return xformers.ops


def xformers_attention(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[Any, None]:
    """query [B, H, L, D], key/value [B, H_kv, L, D] (GQA not expanded) -> ([B, L, H, D], None)."""
    same_length_or_raise(query, key, "xformers")
    xops = _xops()
    dtype = compute_dtype(query, module, allow_fp32=True)
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (query, key, value))  # [B, L, heads, D]
    if kv_heads != heads:  # query head h uses kv head h // (heads / kv_heads), as repeat_kv does
        group = heads // kv_heads
        q = q.reshape(batch, length, kv_heads, group, dim)
        k = k[:, :, :, None].expand(batch, length, kv_heads, group, dim)
        v = v[:, :, :, None].expand(batch, length, kv_heads, group, dim)
    bounds = packed_boundaries(query, attention_mask, kwargs)
    if bounds is not None:
        seqlens = (bounds[0][1:] - bounds[0][:-1]).tolist()
        bias = xops.fmha.attn_bias.BlockDiagonalCausalMask.from_seqlens(seqlens)
    else:
        bias = xops.fmha.attn_bias.LowerTriangularMask()
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout, scale=scaling)
    return out.reshape(batch, length, heads, dim), None
