"""The old name of `vicuna_sft.model.builtin` (it builds `small` too): kept so that imports work."""

from .builtin import *  # noqa: F403
from .builtin import __all__ as __all__
