"""`torch.nn.functional.scaled_dot_product_attention` (transformers' `sdpa`): PyTorch picks the
fastest kernel available for the device and dtype (flash / memory-efficient / math)."""

from typing import Any


def check(cfg: Any) -> None:
    """Runs everywhere."""


def implementation(cfg: Any) -> str:
    return "sdpa"


def prepare(model: Any) -> Any:
    return model
