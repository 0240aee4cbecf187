"""`torch.nn.functional.scaled_dot_product_attention` (transformers' `sdpa`): PyTorch picks the
fastest kernel available for the device and dtype (flash / memory-efficient / math).

Packed batches: transformers builds a block-diagonal causal mask from the restarting
position_ids (`guard_packed` keeps the KV cache, which would disable that, off)."""

from typing import Any

from . import check_packing, guard_packed


def check(cfg: Any) -> None:
    """Runs everywhere."""
    check_packing(cfg)


def check_model(cfg: Any, model_config: Any) -> None:
    """transformers' own sdpa integration: it refuses the models it cannot run (e.g. softcapping)."""


def implementation(cfg: Any) -> str:
    return "sdpa"


def prepare(model: Any) -> Any:
    return guard_packed(model)
