"""The final model: a plain Hugging Face directory that `AutoModelForCausalLM.from_pretrained` loads."""

import copy
import os
import shutil
from typing import Any

from ..config import Config, Dtype
from ..errors import UserError
from ..files import replace_dir
from ..model import adapters
from ..model.loading import set_inference_pad_token
from .checkpoint import apply_umask, write_error_reason


def save_dtype(cfg: Config) -> Dtype:
    if cfg.model.save_dtype is not None:
        return cfg.model.save_dtype
    return cfg.autocast_dtype()


def stop_ids(eos: int | list[int] | None, eot: int) -> int | list[int]:
    """generation_config.eos_token_id: the ids it stops at already, and the template's end of turn."""
    ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    ids = [*ids, eot] if eot not in ids else ids
    return ids[0] if len(ids) == 1 else ids


def save_final(trainer: Any, tokenizer: Any, cfg: Config) -> dict[str, str | None]:
    """`final/`: safetensors in `save_dtype`, use_cache on, the training chat template, generation
    stopping at its end-of-turn token.
    Written next to its final place and renamed, so `final/` is never half-written.
    An adapter run first writes the adapter alone beside it (`final_adapter/`, model/adapters.py),
    and `final/` gets the adapter merged into the base, or is not written (adapter.merge=false).
    Returns {"final_dir", "adapter_dir"}: the paths written (None: not written)."""
    import torch

    final = os.path.join(trainer.args.output_dir, "final")
    dtype = getattr(torch, save_dtype(cfg).value)
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # full; gathered on rank 0 under FSDP
    if trainer.args.should_save:
        try:
            _write(trainer, tokenizer, state_dict, dtype, final, cfg)
        except (OSError, RuntimeError) as e:
            shutil.rmtree(final + ".partial", ignore_errors=True)  # ours, rewritten by every run
            raise UserError(
                f"could not write the final model {final}: {write_error_reason(e, trainer.args.output_dir)}; "
                "free some space and run the same command (it resumes from the last complete checkpoint)"
            ) from e
    trainer.accelerator.wait_for_everyone()
    return {
        "final_dir": final if adapters.writes_final(cfg) else None,
        "adapter_dir": adapters.adapter_dir(cfg),
    }


def _write(trainer: Any, tokenizer: Any, state_dict: dict, dtype: Any, final: str, cfg: Config) -> None:
    from ..data.encode import Encoder

    set_inference_pad_token(tokenizer)  # batched generate pads; training never needed one
    # serving renders with the very template training rendered with, and stops at its end of turn
    encoder = Encoder.for_data(cfg.data, tokenizer)
    tokenizer.chat_template = encoder.template.source
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    exported = adapters.export(unwrapped, state_dict, cfg, tokenizer, trainer.args.output_dir)
    if adapters.adapter_dir(cfg):
        apply_umask(adapters.adapter_dir(cfg))
    if exported is None:  # adapter.merge=false: the adapter alone
        return
    model, state_dict = exported
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = stop_ids(model.generation_config.eos_token_id, encoder.eot_id)
    model.save_pretrained(partial, state_dict=state_dict)
    # save_pretrained records the in-memory dtype; the files hold `dtype`, and inference wants the cache
    config = copy.deepcopy(model.config)
    config.dtype, config.use_cache, config.pad_token_id = dtype, True, tokenizer.pad_token_id
    config.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    apply_umask(partial)
    replace_dir(partial, final)  # the old final/ whole until the new one is in
