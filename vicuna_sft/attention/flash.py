"""Flash attention, with or without the flash-attn package.

- flash-attn importable (`pip install 'vicuna_sft[flash]'`): transformers' own `flash_attention_2`
  (unpads padded batches; packed rows go through its varlen kernel via `cu_seq_lens_q/k`).
  It passes the model's sliding window and logit softcapping to flash-attn itself; models with
  attention sinks are refused (`check_model`): flash-attn 2 has no sinks and transformers would drop them.
- otherwise PyTorch's own flash kernels, registered per model through `AttentionInterface`:
  padded batches -> `scaled_dot_product_attention` restricted to the FLASH backend with
  `is_causal=True` (exact for real tokens under right padding, which the mask function checks);
  packed rows -> `torch.nn.attention.varlen.varlen_attn` over the sequence boundaries.
  A sliding window (Mistral, Qwen2, ...) is varlen_attn's `window_size`: with one, padded batches
  go through varlen_attn too (each row one sequence), since SDPA has no window. Logit softcapping
  and sinks: no PyTorch flash kernel has them; such models are refused before any weights load.

The chosen kernel is logged. Nothing is imported from flash_attn unless this variant is selected,
and nothing is registered before `implementation(cfg)` is called.
"""

import importlib.util
import logging
from typing import Any

from ..config import Padding
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
    require_half,
    same_length_or_raise,
)

log = logging.getLogger(__name__)

# No "flash" in the name: transformers routes every implementation containing "flash" to its
# flash-attn integration.
TORCH_KERNELS = "vicuna_sft_torch_fa"


def has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def has_torch_varlen() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def check(cfg: Any) -> None:
    check_packing(cfg)
    require_cuda(cfg, "flash")
    require_half(cfg, "flash")
    if Padding(cfg.data.padding) == Padding.packed and not (has_flash_attn() or has_torch_varlen()):
        import torch

        raise AttentionUnavailable(
            f"data.padding=packed with attention=flash needs flash-attn (pip install 'vicuna_sft[flash]') "
            f"or torch.nn.attention.varlen (torch >= 2.10; this is {torch.__version__}); "
            f"use data.padding=longest"
        )


def check_model(cfg: Any, model_config: Any) -> None:
    if has_flash_attn():  # transformers hands flash-attn window_size and softcap, never sinks
        refuse_model_features("flash (flash-attn)", model_config, softcap=False, sinks=True)
    else:
        refuse_model_features("flash (PyTorch flash kernels)", model_config, softcap=True, sinks=True)
        window = getattr(model_config, "sliding_window", None) and getattr(
            model_config, "use_sliding_window", True
        )
        if window and not has_torch_varlen():  # the window needs varlen_attn, padded batches too
            import torch

            raise AttentionUnavailable(
                f"attention=flash: this model's sliding window needs flash-attn (pip install 'vicuna_sft[flash]') "
                f"or torch.nn.attention.varlen (torch >= 2.10; this is {torch.__version__})"
            )


def implementation(cfg: Any) -> str:
    if has_flash_attn():
        from importlib.metadata import version

        log.info("attention=flash: flash-attn %s via transformers' flash_attention_2", version("flash-attn"))
        return "flash_attention_2"
    register(TORCH_KERNELS, torch_flash_attention)
    log.info(
        "attention=flash: flash-attn not installed; PyTorch flash kernels: SDPA FLASH_ATTENTION backend "
        "(padded batches), torch.nn.attention.varlen.varlen_attn (packed rows)"
    )
    return TORCH_KERNELS


def prepare(model: Any) -> Any:
    return guard_packed(model)


# Kernel entry points, looked up at call time so that CPU tests can substitute a reference.
def _varlen_attn(*args: Any, **kwargs: Any) -> Any:
    from ..compat.torch import varlen_attn

    return varlen_attn(*args, **kwargs)


def _sdpa_flash(query: Any, key: Any, value: Any, **kwargs: Any) -> Any:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        return F.scaled_dot_product_attention(query, key, value, **kwargs)


def torch_flash_attention(
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
    import torch

    refuse_unsupported("flash", softcap=softcap, s_aux=s_aux)
    same_length_or_raise(query, key, "flash")
    dtype = compute_dtype(query, module, allow_fp32=False)
    q, k, v = query.to(dtype), key.to(dtype), value.to(dtype)
    batch, heads, length, dim = q.shape
    gqa = heads != k.shape[1]
    window = active_window(sliding_window, length)
    bounds = packed_boundaries(query, attention_mask, kwargs)
    if bounds is None and window is None:
        out = _sdpa_flash(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    if dropout:
        raise NotImplementedError("varlen_attn has no dropout; set the model's attention_dropout to 0")
    if bounds is None:  # a padded batch with a sliding window: each row one sequence of `length`
        cu = torch.arange(0, (batch + 1) * length, length, dtype=torch.int32, device=query.device)
        bounds = (cu, length)
    cu, max_len = bounds
    # [B, H, L, D] -> [B*L, H, D] (B = 1 for a packed row); window (left, 0): causal, keys i-left..i
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (q, k, v))
    out = _varlen_attn(
        q,
        k,
        v,
        cu,
        cu,
        max_len,
        max_len,
        scale=scaling,
        window_size=(-1 if window is None else window - 1, 0),
        enable_gqa=gqa,
    )
    return out.reshape(batch, length, heads, dim), None
