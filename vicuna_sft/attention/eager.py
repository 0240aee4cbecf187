"""Plain PyTorch matmul-softmax attention (transformers' `eager`): the numerical reference."""

from typing import Any


def check(cfg: Any) -> None:
    """Runs everywhere."""


def implementation(cfg: Any) -> str:
    return "eager"


def prepare(model: Any) -> Any:
    return model
