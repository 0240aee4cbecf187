"""Attention variants, one module per `AttentionImpl` member (and per conf/attention/*.yaml).

Each module exposes:
    check(cfg)           raise a clear error early (before any weights load) if it cannot run here
    implementation(cfg)  the `attn_implementation` the model is loaded with
    prepare(model)       configure this model instance; never patch a class, never at import time

Only `vicuna_sft.model` uses this package: the Trainer flow never sees which variant runs.
"""

import importlib
from types import ModuleType

from ..config import AttentionImpl


def get(impl: AttentionImpl) -> ModuleType:
    return importlib.import_module(f"{__name__}.{AttentionImpl(impl).value}")
