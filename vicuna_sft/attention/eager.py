"""Plain PyTorch matmul-softmax attention (transformers' `eager`): the numerical reference.

Packed batches: transformers builds a block-diagonal causal mask from the restarting
position_ids (`guard_packed` keeps the KV cache, which would disable that, off)."""

from typing import Any

from . import check_packing, guard_packed


def check(cfg: Any) -> None:
    """Runs everywhere."""
    check_packing(cfg)


def check_model(cfg: Any, model_config: Any) -> None:
    """Computes every attention feature the model's own code asks for."""


def implementation(cfg: Any) -> str:
    return "eager"


def prepare(model: Any) -> Any:
    return guard_packed(model)
