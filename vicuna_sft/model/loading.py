"""Loading the tokenizer and the causal LM, through `from_pretrained` for every model (the tiny
one included), with the configured attention and loss variants applied to this instance."""

import logging
import math
import os
import re
from typing import Any

from .. import attention
from ..config import AdapterKind, Builtin, Config, ModelConfig, builtin_path
from ..errors import UserError
from . import adapters
from . import loss as losses

log = logging.getLogger(__name__)


class ModelLoadError(UserError, RuntimeError):
    pass


# "name" or "org/name"; anything else must be an existing local path
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_path(m: ModelConfig, path: str | None = None) -> str:
    """The local directory or hub id to load; creates a builtin model on first use."""
    path = os.path.expanduser(path or m.name_or_path)
    if m.builtin is not None and _same_path(path, builtin_path(m.builtin)):
        from .tiny import ensure_tiny

        ensure_tiny(path, Builtin(m.builtin).value)  # no-op when it is already there
    if not os.path.exists(path) and not _HUB_ID.match(path):
        raise ModelLoadError(f"model path does not exist: {path}")
    return path


def _same_path(a: str, b: str) -> bool:
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def _wrap_hub_errors(what: str, path: str, fn: Any, **kwargs: Any) -> Any:
    try:
        return fn(path, **kwargs)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load the {what} from {path!r}: {first}") from e


# what a saved tokenizer consists of: a directory with none of these holds none (transformers
# would answer with a long traceback ending in "install sentencepiece or tiktoken")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "tokenizer.tiktoken",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def check_tokenizer_files(m: ModelConfig) -> None:
    """A local directory the tokenizer would be loaded from holds tokenizer files (hub ids and a
    builtin model not created yet are left to loading)."""
    path = os.path.expanduser(m.tokenizer or m.name_or_path)
    if not os.path.isdir(path) or any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        return
    if m.tokenizer:
        raise ModelLoadError(
            f"model.tokenizer={m.tokenizer}: the directory has no tokenizer (none of "
            f"{', '.join(TOKENIZER_FILES[:3])}, ...): point model.tokenizer= at the directory or hub id of "
            "the model's tokenizer"
        )
    raise ModelLoadError(
        f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...): set "
        "model.tokenizer= to the directory or hub id of the model's tokenizer"
    )


def load_tokenizer(m: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    path = resolve_path(m, m.tokenizer) if m.tokenizer else resolve_path(m)
    check_tokenizer_files(m)
    # padding_side must be given here: set as an attribute later it is not saved
    tok = _wrap_hub_errors(
        "tokenizer",
        path,
        AutoTokenizer.from_pretrained,
        revision=m.revision,
        trust_remote_code=m.trust_remote_code,
        padding_side="right",
    )
    if not getattr(tok, "is_fast", False):
        raise ModelLoadError(f"{path}: a fast (tokenizers-backed) tokenizer is required")
    return tok


def set_inference_pad_token(tokenizer: Any) -> None:
    """Give a saved tokenizer the pad token batched `generate` needs (training never asks for one:
    the collator masks by length). An existing token is reused, `<unk>` as FastChat does, else EOS,
    so the vocabulary stays the size of the trained embeddings. Which side to pad is the caller's
    choice (left for generation)."""
    if tokenizer.pad_token is not None:
        return
    for token in (tokenizer.unk_token, tokenizer.eos_token):
        if token is not None:
            tokenizer.pad_token = token
            return
    log.warning("the tokenizer has no pad, unk or eos token: batched generation will need one")


def rope_scaling_factor(max_length: int, max_positions: int | None) -> int | None:
    """FastChat parity: linear RoPE scaling when training past the model's context."""
    if not max_positions or max_length <= max_positions:
        return None
    return math.ceil(max_length / max_positions)


def check_attention(cfg: Config) -> None:
    """The attention variant's own refusals (no CUDA, missing package, dtype, packing), up front."""
    attention.get(cfg.attention.implementation).check(cfg)


def check_loss(cfg: Config) -> None:
    """loss=liger without CUDA or without the package, up front."""
    losses.check(cfg)


def check_adapter(cfg: Config) -> None:
    """The adapter's refusals up front: bitsandbytes and its device, and target modules the
    architecture lacks (read from the model's config alone, before any data is encoded)."""
    adapters.check(cfg)
    adapters.check_targets(cfg, lambda: load_config(cfg))


def load_config(cfg: Config) -> Any:
    """The model's config as training loads it: linear RoPE scaling past its context, no KV cache."""
    from transformers import AutoConfig

    path = resolve_path(cfg.model)
    common = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    config = _wrap_hub_errors("model config", path, AutoConfig.from_pretrained, **common)
    factor = rope_scaling_factor(cfg.data.max_length, getattr(config, "max_position_embeddings", None))
    if factor:
        theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
        config.rope_parameters = {"rope_type": "linear", "factor": float(factor), "rope_theta": theta}
        log.info(
            "max_length %d > %d positions: linear RoPE scaling x%d",
            cfg.data.max_length,
            config.max_position_embeddings,
            factor,
        )
    # Training never uses the KV cache, and packed-sequence masking only engages without it.
    config.use_cache = False
    return config


def load_model(cfg: Config, vocab_size: int | None = None) -> Any:
    """The model for `cfg`; `vocab_size`: the tokenizer's length, when a template added tokens to
    it (the embeddings grow to it, new rows at the mean of the old ones)."""
    import torch
    from transformers import AutoModelForCausalLM

    variant = attention.get(cfg.attention.implementation)
    variant.check(cfg)  # fail before loading any weights
    losses.check(cfg)
    adapters.check(cfg)
    path = resolve_path(cfg.model)
    common = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    config = load_config(cfg)
    variant.check_model(cfg, config)  # e.g. softcapping or sinks the kernel lacks: still before weights
    losses.check_model_config(cfg.loss, config)  # e.g. logit softcapping, before the weights load
    adapters.check_targets(cfg, lambda: config)  # on a meta-device skeleton: still no weights read
    model = _wrap_hub_errors(
        "model",
        path,
        AutoModelForCausalLM.from_pretrained,
        config=config,
        dtype=getattr(torch, cfg.model.dtype.value),
        attn_implementation=variant.implementation(cfg),
        **adapters.load_kwargs(cfg),  # qlora: 4-bit quantization while loading
        **common,
    )
    if vocab_size is not None and vocab_size > model.get_input_embeddings().num_embeddings:
        if cfg.adapter.kind != AdapterKind.none:
            raise ModelLoadError(
                f"data.template={cfg.data.template} added tokens to the tokenizer; with adapter={cfg.adapter.kind.value} "
                "their new embedding rows would stay untrained: fine-tune in full, or use a template written "
                "with the tokenizer's own tokens"
            )
        model.resize_token_embeddings(vocab_size, mean_resizing=True)
    # the loss variant on this instance, then the adapter wrapping it (PEFT calls through to it;
    # the attention's and the loss's hooks stay on the inner model)
    return adapters.apply(losses.install(variant.prepare(model), cfg.loss), cfg)
