"""Attention variants, one module per `AttentionImpl` member (and per conf/attention/*.yaml).

Each module exposes:
    check(cfg)           raise a clear error early (before any weights load) if it cannot run here
    implementation(cfg)  the `attn_implementation` the model is loaded with
    check_model(cfg, model_config)  refuse, from the model's config (before any weights load), a model
                         whose attention this variant would compute differently from eager
    prepare(model)       configure this model instance; never patch a class, never at import time

Only `vicuna_sft.model` uses this package: the Trainer flow never sees which variant runs.

Packed batches (`data.padding=packed`, see `vicuna_sft.data.collate`) carry no attention mask;
their sequence boundaries are the restarts of `position_ids` (and `cu_seq_lens_q/k`). eager and
sdpa rely on transformers turning those restarts into per-sample masks, which it only does when
no KV cache is built: `guard_packed` makes every forward of a packed batch run with
`use_cache=False`, whatever `config.use_cache` says and whoever calls the model.
"""

import importlib
from types import ModuleType
from typing import Any

from ..compat.transformers import passes_attention_sinks
from ..config import AttentionImpl, Padding
from ..errors import UserError


class AttentionUnavailable(UserError, RuntimeError):
    pass


def get(impl: AttentionImpl) -> ModuleType:
    return importlib.import_module(f"{__name__}.{AttentionImpl(impl).value}")


def check_packing(cfg: Any) -> None:
    """Packing is only correct where the attention sees the boundaries: transformers' own model
    code routes position_ids into its masks / varlen kernels; remote code may not."""
    if Padding(cfg.data.padding) != Padding.packed:
        return
    if cfg.model.trust_remote_code:
        raise AttentionUnavailable(
            "data.padding=packed with model.trust_remote_code=true: custom modeling code may ignore "
            "the sequence boundaries of a packed row (samples would attend to each other); "
            "use data.padding=longest"
        )


def is_packed_call(kwargs: dict[str, Any]) -> bool:
    """A packed batch: varlen boundaries, or position_ids without an attention mask."""
    if kwargs.get("cu_seq_lens_q") is not None:
        return True
    return kwargs.get("attention_mask") is None and kwargs.get("position_ids") is not None


def _no_cache_for_packed(module: Any, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    if is_packed_call(kwargs):
        if kwargs.get("past_key_values") is not None or kwargs.get("cache") is not None:
            raise ValueError("a packed batch (restarting position_ids) cannot be combined with a KV cache")
        kwargs["use_cache"] = False  # with a cache transformers skips packed-sequence masking
    return args, kwargs


def guard_packed(model: Any) -> Any:
    """Force `use_cache=False` on packed forwards of this instance (idempotent, instance-only)."""
    if getattr(model, "_vicuna_sft_packed_guard", None) is None:
        model._vicuna_sft_packed_guard = model.register_forward_pre_hook(
            _no_cache_for_packed, with_kwargs=True
        )
    return model


# --- shared by the kernel variants (flash, xformers): checks, masks, boundaries, dtypes ---------


def require_cuda(cfg: Any, variant: str) -> None:
    """The run must compute on CUDA (the plan's device: a visible GPU, and trainer.use_cpu not set)."""
    import torch

    from ..plan import Device, cuda_available, device

    if not cuda_available():
        raise AttentionUnavailable(
            f"attention={variant} needs a CUDA GPU and none is visible here "
            f"(torch {torch.__version__}); use attention=sdpa (runs everywhere)"
        )
    if device(cfg.trainer, cuda=True) != Device.cuda:
        raise AttentionUnavailable(
            f"attention={variant} needs a CUDA GPU, but trainer.use_cpu=true runs on the CPU; "
            "drop trainer.use_cpu, or use attention=sdpa (runs everywhere)"
        )


def require_half(cfg: Any, variant: str) -> None:
    """Flash kernels compute in fp16/bf16 only: either the weights or the autocast must be half."""
    from ..config import Dtype
    from ..plan import compute_dtype

    if compute_dtype(cfg.trainer.precision, cfg.model.dtype) == Dtype.float32:
        raise AttentionUnavailable(
            f"attention={variant} runs in fp16/bf16 only, but model.dtype={cfg.model.dtype.value} and "
            f"trainer.precision={cfg.trainer.precision.value}; set trainer.precision=bf16 "
            f"(or model.dtype=bfloat16), or use attention=sdpa for fp32"
        )


def register(name: str, attention_fn: Any) -> None:
    """Register a custom attention function and its mask function under `name` (idempotent).
    Without a mask function of its own, transformers would hand the function no mask at all."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(name, attention_fn)
    AttentionMaskInterface.register(name, right_padding_mask)


def right_padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Any = None,
    attention_mask: Any = None,
    **kwargs: Any,
) -> Any:
    """Mask function of the kernel variants: they compute padded batches as plain causal attention,
    which is exact for every real token only when padding is on the right. Returns None (pure
    causal, or a packed row whose boundaries come from position_ids / cu_seq_lens) or the 2D
    padding mask after checking it is right-aligned. Called once per forward, not per layer."""
    if attention_mask is None:
        return None
    if attention_mask.ndim != 2:
        raise ValueError(f"expected a 2D padding mask, got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        raise ValueError("the flash/xformers variants need right padding (a real token follows a pad token)")
    return None if bool(mask.all()) else mask


def packed_boundaries(query: Any, attention_mask: Any, kwargs: dict[str, Any]) -> tuple[Any, int] | None:
    """(cu_seqlens int32 [N+1], max_len) of a packed row, or None for an ordinary batch.
    From the collator's `cu_seq_lens_q` when present, else from restarts of `position_ids`."""
    import torch

    if attention_mask is not None:
        return None
    if query.shape[0] != 1:
        position_ids = kwargs.get("position_ids")
        if kwargs.get("cu_seq_lens_q") is not None or (
            position_ids is not None and bool((torch.diff(position_ids, dim=-1) != 1).any())
        ):
            raise NotImplementedError("packed sequences must come as one row (data.padding=packed does)")
        return None
    total = query.shape[2]
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None:
        cu = cu.to(device=query.device, dtype=torch.int32)
        if int(cu[-1]) != total:
            raise ValueError(f"cu_seq_lens_q ends at {int(cu[-1])} but the packed row has {total} tokens")
        max_len = kwargs.get("max_length_q")
        max_len = int(max_len) if max_len is not None else int((cu[1:] - cu[:-1]).max())
        return (cu, max_len) if len(cu) > 2 else None
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        return None
    pos = position_ids.reshape(-1)[-total:].to(query.device)
    starts = torch.nonzero(torch.diff(pos) != 1).flatten() + 1
    if starts.numel() == 0:
        return None
    zero, end = (
        torch.zeros(1, dtype=starts.dtype, device=pos.device),
        torch.tensor([total], device=pos.device),
    )
    cu = torch.cat([zero, starts, end]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def compute_dtype(query: Any, module: Any, allow_fp32: bool) -> Any:
    """fp16/bf16 for the kernel: the activations', else the autocast's, else the weights'.
    (Under autocast with fp32 weights RoPE leaves q/k in fp32 while v is half.)"""
    import torch

    half = (torch.float16, torch.bfloat16)
    if query.dtype in half:
        return query.dtype
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) in half:
        return torch.get_autocast_dtype(device_type)
    weight = getattr(getattr(module, "q_proj", None), "weight", None)
    if weight is not None and weight.dtype in half:
        return weight.dtype
    if allow_fp32:
        return query.dtype
    raise ValueError(f"flash kernels need fp16/bf16 activations, got {query.dtype}")


def same_length_or_raise(query: Any, key: Any, variant: str) -> None:
    if query.shape[2] != key.shape[2]:
        raise NotImplementedError(
            f"attention={variant} is a training kernel (queries == keys); generate with attention=sdpa"
        )


# --- attention features a kernel may not compute: sliding window, logit softcapping, sinks ------------


def active_window(sliding_window: int | None, length: int) -> int | None:
    """The sliding window (keys j with i - window < j <= i, transformers' `sliding_window_overlay`) when
    it can mask anything in a row of `length` tokens, else None (plain causal is then identical)."""
    if sliding_window is None or length <= int(sliding_window):
        return None
    return int(sliding_window)


def refuse_model_features(variant: str, model_config: Any, *, softcap: bool, sinks: bool) -> None:
    """Build-time refusal of a model whose attention `variant` cannot compute like eager does."""
    problems = []
    if softcap and getattr(model_config, "attn_logit_softcapping", None) is not None:
        problems.append(
            f"attention logit softcapping (attn_logit_softcapping={model_config.attn_logit_softcapping})"
        )
    if sinks and passes_attention_sinks(model_config):
        problems.append("learned attention sinks (s_aux)")
    if problems:
        model_type = getattr(model_config, "model_type", "?")
        raise AttentionUnavailable(
            f"attention={variant} cannot compute {' and '.join(problems)} of this {model_type} model: its results "
            f"would differ from the model's own attention; use attention=eager (or attention=sdpa where the "
            f"model supports it)"
        )


def refuse_unsupported(variant: str, softcap: Any = None, s_aux: Any = None) -> None:
    """Runtime guard: never drop a feature transformers asked for (the build-time check covers the
    models it knows; this covers the rest)."""
    if softcap is not None:
        raise NotImplementedError(f"attention={variant} does not support attention logit softcapping")
    if s_aux is not None:
        raise NotImplementedError(f"attention={variant} does not support attention sinks (s_aux)")
