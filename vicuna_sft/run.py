"""One training run: compose -> build -> train -> save. The same code for every attention and
FSDP variant: the variants live in the config and in model.py / arguments.py, never here."""

import copy
import json
import logging
import os
import shutil
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .arguments import to_training_arguments, validate
from .checkpoint import resolve_resume, run_fingerprint, train
from .config import Config, Dtype, Precision, to_config
from .data.conversation import CHAT_TEMPLATE
from .data.dataset import build_datasets
from .model import load_model, load_tokenizer
from .ranks import enter_worker, rank, world_size
from .summary import RESULT_FILE

log = logging.getLogger("vicuna_sft")


def run(dcfg: DictConfig) -> dict[str, Any]:
    cfg = to_config(dcfg)
    validate(cfg)
    enter_worker(dcfg)  # several ranks: all must have resolved the same config
    out = cfg.trainer.output_dir
    fingerprint = run_fingerprint(cfg, world_size())
    resume = resolve_resume(cfg.trainer.resume, out, fingerprint, cfg.trainer.resume_on_config_change)
    save_resolved_config(dcfg, out)

    tokenizer = load_tokenizer(cfg.model)
    data = build_datasets(cfg.data, tokenizer, seed=cfg.trainer.seed)
    report_data(data.stats, out)
    model = load_model(cfg)
    args = to_training_arguments(cfg, world_size(), wrap_classes=list(model._no_split_modules or []))

    from .callbacks import default_callbacks
    from .trainer import Trainer

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=default_callbacks(fingerprint, cfg.trainer.save_total_limit),
    )
    if resume:
        log.info("resuming from %s", resume)
    train(trainer, resume)
    trainer.save_state()
    eval_metrics = final_eval(trainer) if data.eval is not None else {}
    final_dir = save_final(trainer, tokenizer, cfg)
    result = {**summarize(trainer, eval_metrics, final_dir, resume), **data.seen_stats()}
    if trainer.is_world_process_zero():
        with open(os.path.join(out, RESULT_FILE), "w") as f:
            json.dump(result, f, indent=2)
        print_result(result)
    release(trainer)
    return result


def save_resolved_config(dcfg: DictConfig, out: str) -> None:
    os.makedirs(out, exist_ok=True)
    body = {k: v for k, v in OmegaConf.to_container(dcfg, resolve=True).items() if k != "hydra"}
    if rank() == 0:
        OmegaConf.save(OmegaConf.create(body), os.path.join(out, "config.yaml"))


def report_data(stats: dict[str, Any], out: str) -> None:
    for path, s in stats["records"].items():
        msg = f"data {path}: {s['read']} records read, {s['kept']} kept"
        if s["dropped"]:
            msg += f", dropped {s['dropped']}"
        if s["adjusted"]:
            msg += f", adjusted {s['adjusted']}"
        log.info(msg)
    for split in ("train", "eval"):
        if split in stats:
            log.info("%s samples: %s", split, stats[split])
    if rank() == 0:
        with open(os.path.join(out, "data_stats.json"), "w") as f:
            json.dump(stats, f, indent=2)


def save_dtype(cfg: Config) -> Dtype:
    if cfg.model.save_dtype is not None:
        return cfg.model.save_dtype
    return {Precision.bf16: Dtype.bfloat16, Precision.fp16: Dtype.float16}.get(
        Precision(cfg.trainer.precision), cfg.model.dtype
    )


def save_final(trainer: Any, tokenizer: Any, cfg: Config) -> str:
    """A plain HF directory: safetensors in `save_dtype`, use_cache on, the Vicuna chat template.
    Written next to its final place and renamed, so `final/` is never half-written."""
    import torch

    final = os.path.join(trainer.args.output_dir, "final")
    dtype = getattr(torch, save_dtype(cfg).value)
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # full; gathered on rank 0 under FSDP
    if trainer.args.should_save:
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)
        model = trainer.accelerator.unwrap_model(trainer.model)
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        model.save_pretrained(partial, state_dict=state_dict)
        # save_pretrained records the in-memory dtype; the files hold `dtype`, and inference wants the cache
        config = copy.deepcopy(model.config)
        config.dtype, config.use_cache = dtype, True
        config.save_pretrained(partial)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(partial)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    trainer.accelerator.wait_for_everyone()
    return final


def final_eval(trainer: Any) -> dict[str, Any]:
    """The eval of the final weights: the one the run just logged at its last step, else a new one."""
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals and evals[-1].get("step") == trainer.state.global_step:
        return evals[-1]
    return trainer.evaluate()


def summarize(trainer: Any, eval_metrics: dict, final_dir: str, resumed_from: str | None) -> dict[str, Any]:
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    speed = [e for e in trainer.state.log_history if "train_tokens_per_second" in e]
    return {
        "output_dir": trainer.args.output_dir,
        "final_dir": final_dir,
        "global_step": trainer.state.global_step,
        "first_train_loss": losses[0][1] if losses else None,
        "final_train_loss": losses[-1][1] if losses else None,
        "eval_loss": eval_metrics.get("eval_loss"),
        "train_tokens_per_second": speed[-1]["train_tokens_per_second"] if speed else None,
        "resumed_from": resumed_from,
    }


def print_result(r: dict[str, Any]) -> None:
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else str(x)

    print(
        f"\nvicuna_sft: {r['global_step']} steps"
        + (f" (resumed from {r['resumed_from']})" if r["resumed_from"] else "")
        + f"\n  train loss  first {fmt(r['first_train_loss'])}  last {fmt(r['final_train_loss'])}"
        + f"\n  eval loss   {fmt(r['eval_loss'])}"
        + f"\n  outputs     {r['output_dir']}  (config.yaml, data_stats.json, checkpoint-*/, {RESULT_FILE})"
        + f"\n  model       {r['final_dir']}  (AutoModelForCausalLM.from_pretrained)\n",
        flush=True,
    )


def release(trainer: Any) -> None:
    """Forget process-wide accelerate state so the next job of a sweep starts as it would alone."""
    from accelerate.state import AcceleratorState

    trainer.accelerator.free_memory()
    AcceleratorState._reset_state(reset_partial_state=True)
