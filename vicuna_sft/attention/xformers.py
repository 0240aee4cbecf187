"""xformers' `memory_efficient_attention`, registered per model through `AttentionInterface`
(transformers has no built-in xformers): a causal mask for padded batches (exact for real tokens
under right padding, which the registered mask function checks) and a block-diagonal causal mask
built from the sequence boundaries for packed rows.

GQA: xformers' 5-D [B, L, G, H/G, D] layout (key/value broadcast over the heads of a group, no
copy) has forward operators only (xformers 0.0.35 fmha/__init__.py: "MQA/GQA ... supported only for
the forward pass"; every BwOp has SUPPORTS_BMGHK = False), and xformers picks the backward operator
during the forward as soon as an input requires grad. So when gradients are needed key/value are
expanded to the full head count (a copy, as eager's repeat_kv does) and the 4-D [B, L, H, D] layout
is used; the 5-D layout is kept for forwards without gradients (evaluation).

Sliding window (Mistral, Qwen2, ...): a block-diagonal causal local-attention bias
(`make_local_attention`, a bias type both backward operators accept); a padded batch with an
active window runs as one block per row. Logit softcapping and sinks: xformers has neither; such
models are refused before any weights load.

Needs the `xformers` extra and a CUDA device; xformers is imported only when a forward runs.
"""

import importlib.util
import logging
from typing import Any

from . import (
    AttentionUnavailable,
    active_window,
    check_packing,
    compute_dtype,
    guard_packed,
    packed_boundaries,
    refuse_model_features,
    refuse_unsupported,
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
    require_cuda(cfg, "xformers")


def check_model(cfg: Any, model_config: Any) -> None:
    refuse_model_features("xformers", model_config, softcap=True, sinks=True)


def implementation(cfg: Any) -> str:
    register(NAME, xformers_attention)
    log.info(
        "attention=xformers: xformers.ops.memory_efficient_attention (causal / block-diagonal causal / local)"
    )
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
    sliding_window: int | None = None,
    softcap: float | None = None,
    s_aux: Any = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """query [B, H, L, D], key/value [B, H_kv, L, D] (GQA not expanded) -> ([B, L, H, D], None)."""
    refuse_unsupported("xformers", softcap=softcap, s_aux=s_aux)
    same_length_or_raise(query, key, "xformers")
    xops = _xops()
    bias_types = xops.fmha.attn_bias
    dtype = compute_dtype(query, module, allow_fp32=True)
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    q, k, v = (t.to(dtype).transpose(1, 2) for t in (query, key, value))  # [B, L, heads, D]
    if kv_heads != heads:  # query head h uses kv head h // (heads / kv_heads), as repeat_kv does
        group = heads // kv_heads
        if any(t.requires_grad for t in (q, k, v)):  # the test xformers makes (fmha/__init__.py:471)
            k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)  # [B, L, heads, D]
        else:
            q = q.reshape(batch, length, kv_heads, group, dim)
            k = k[:, :, :, None].expand(batch, length, kv_heads, group, dim)
            v = v[:, :, :, None].expand(batch, length, kv_heads, group, dim)
    window = active_window(sliding_window, length)
    bounds = packed_boundaries(query, attention_mask, kwargs)
    if bounds is None and window is None:
        bias = bias_types.LowerTriangularMask()
    else:
        if bounds is not None:
            seqlens = (bounds[0][1:] - bounds[0][:-1]).tolist()
        else:  # padded batch with a sliding window: one block per row, batch 1 as block-diagonal needs
            seqlens = [length] * batch
            q, k, v = (t.reshape(1, batch * length, *t.shape[2:]) for t in (q, k, v))
        # device=: by default xformers puts the bias on the current CUDA device, not the query's
        bias = bias_types.BlockDiagonalCausalMask.from_seqlens(seqlens, device=query.device)
        if window is not None:
            bias = bias.make_local_attention(window)  # keys i - window < j <= i, as transformers
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout, scale=scaling)
    return out.reshape(batch, length, heads, dim), None
