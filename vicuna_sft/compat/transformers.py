"""transformers: the names and internals that differ across the supported releases.

- TrainingArguments' activation checkpointing flag: `gradient_checkpointing` up to 5.23,
  `activation_checkpointing` from 5.24 (the old name then warns as deprecated).
- `apply_chat_template(sanitize_control_tokens=True)` (5.20+) keeps a special token's text typed in
  a message (a literal "</s>") as text. Older releases swallow the keyword silently, so the text
  would become the token itself: refused there rather than silently wrong.
- A chat template compiled in transformers' own Jinja environment (`_compile_jinja_template`,
  cached): the data encoder renders through it, so training text is what `apply_chat_template`
  renders, without its per-call overhead.
- The internals the package leans on: a model's `_no_split_modules` (its decoder layer class,
  what FSDP wraps); the Trainer's `_save_checkpoint` (the one place a checkpoint is written, so a
  failed write can be turned into one line); which modeling modules pass learned attention sinks
  (`s_aux=`) to the attention function; and the Trainer's log message for the non-padding token
  count it cannot compute on packed rows (exact anyway: a packed row has no padding).
"""

import functools
import inspect
import logging
import os
import sys
from typing import Any

from ..errors import UserError

TESTED = ((5, 17), (5, 26))  # [min, max): the releases CI runs (requirements/*.lock)


@functools.cache
def checkpointing_argument() -> str:
    """The TrainingArguments field that turns on activation (gradient) checkpointing."""
    from transformers import TrainingArguments

    names = inspect.signature(TrainingArguments).parameters  # 5.17: not a dataclass
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def checkpointing_enabled(args: Any) -> bool:
    return bool(getattr(args, checkpointing_argument()))


def keeps_control_token_text(tokenizer: Any) -> bool:
    return "sanitize_control_tokens" in inspect.signature(tokenizer.apply_chat_template).parameters


def chat_template_ids(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template, special-token text typed in a
    message kept as text."""
    if keeps_control_token_text(tokenizer):
        kwargs["sanitize_control_tokens"] = True
    else:
        specials = [t for t in tokenizer.all_special_tokens if t]
        for m in messages:
            content = m.get("content")
            typed = [t for t in specials if isinstance(content, str) and t in content]
            if typed:
                import transformers

                raise UserError(
                    f"a {m.get('role', '?')} message contains the special token text {typed[0]!r}: transformers "
                    f"{transformers.__version__} cannot keep it as text (sanitize_control_tokens needs >= 5.20)"
                )
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
    return list(out["input_ids"])


def compiled_chat_template(source: str) -> Any:
    """The Jinja template object `apply_chat_template` renders `source` with (same sandbox, filters
    and globals: `raise_exception`, `tojson`, `strftime_now`, trim_blocks/lstrip_blocks)."""
    from transformers.utils.chat_template_utils import _compile_jinja_template

    return _compile_jinja_template(source)


def no_split_modules(model: Any) -> list[str]:
    """The class names of the model's layers that must stay whole (FSDP's wrap unit)."""
    return list(getattr(model, "_no_split_modules", None) or [])


class CheckpointWriteHook:
    """Mixed into the Trainer: `on_checkpoint_write_failure(path, error)` gets a checkpoint write
    that raised (a full disk: torch.save reports it as a RuntimeError) and returns what to raise."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        try:
            super()._save_checkpoint(model, trial)  # type: ignore[misc]
        except (OSError, RuntimeError) as e:
            path = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")  # type: ignore[attr-defined]
            raise self.on_checkpoint_write_failure(path, e) from e

    def on_checkpoint_write_failure(self, path: str, error: BaseException) -> BaseException:
        return error


def passes_attention_sinks(model_config: Any) -> bool:
    """True for models whose transformers code hands the attention function learned sinks (`s_aux=`,
    e.g. gpt_oss), read from the model's own modeling module; models transformers does not know
    (remote code) are not covered here and rely on the runtime refusal of the attention variants."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(model_config)]
    except (KeyError, ValueError):
        return False
    return "s_aux=" in inspect.getsource(sys.modules[model_class.__module__])


class _DropTokenCountFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Could not determine method to count non-padding tokens" not in record.getMessage()


def quiet_token_count_fallback() -> None:
    """Packed rows carry no attention_mask, so the Trainer's non-padding token count falls back to
    counting every token, which for a row without padding is exact; it would still warn every step."""
    logger = logging.getLogger("transformers.trainer")
    if not any(isinstance(f, _DropTokenCountFallback) for f in logger.filters):
        logger.addFilter(_DropTokenCountFallback())
