"""Attention variants, one module per `AttentionImpl` member (and per conf/attention/*.yaml).

Each module exposes:
    check(cfg)           raise a clear error early (before any weights load) if it cannot run here
    implementation(cfg)  the `attn_implementation` the model is loaded with
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
