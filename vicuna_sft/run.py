"""One training run: build -> train -> save, for a composed and validated `Config`.

The same code for every attention, FSDP and launch variant: the variants live in the config and
are applied where the model is built (model/) and the TrainingArguments are made (training/);
this module never branches on one (a test enforces it).
"""

import logging
from typing import Any

from .compat.transformers import no_split_modules
from .config import Config, save_config
from .data.dataset import build_datasets, report_data
from .data.sources import data_digests
from .errors import PREEMPTED_EXIT, Diverged, Preempted
from .model.identity import model_digests
from .model.loading import load_model, load_tokenizer
from .process import world_size
from .training.arguments import to_training_arguments
from .training.checkpoint import resolve_resume, run_fingerprint, set_aside_previous_outputs
from .training.final import save_final
from .training.result import (
    DIVERGED,
    PREEMPTED,
    final_eval,
    print_result,
    run_result,
    stopped_result,
    write_result,
)
from .training.train import train
from .validation import check_batch_fits

log = logging.getLogger("vicuna_sft")


def run(cfg: Config) -> dict[str, Any]:
    out = cfg.trainer.output_dir
    # the data files' and the model's content are part of the math: hashed here (memoized on disk),
    # the data digests reused by the data cache
    fingerprint = run_fingerprint(cfg, world_size(), data_digests(cfg.data), model_digests(cfg.model))
    end = (cfg.trainer.max_steps, cfg.trainer.num_train_epochs)
    resume = resolve_resume(cfg.trainer.resume, out, fingerprint, cfg.trainer.resume_on_config_change, end)
    set_aside_previous_outputs(out)
    save_config(cfg, out)

    tokenizer = load_tokenizer(cfg.model)
    data = build_datasets(cfg.data, tokenizer, seed=cfg.trainer.seed)
    report_data(data.stats, out)
    check_batch_fits(cfg.trainer, len(data.train), world_size())  # before the model loads
    model = load_model(cfg, vocab_size=len(tokenizer))
    args = to_training_arguments(cfg, wrap_classes=no_split_modules(model))

    from .training.callbacks import build_callbacks
    from .training.divergence import StopOnDivergence
    from .training.preemption import StopOnSignal
    from .training.trainer import Trainer, release

    stop, divergence = StopOnSignal(), StopOnDivergence()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=data.collator,
        processing_class=tokenizer,
        callbacks=build_callbacks(cfg, fingerprint, cfg.trainer.save_total_limit, stop, divergence),
    )
    if resume:
        log.info("resuming from %s", resume)
    with stop.handling():
        train(trainer, resume)
    if divergence.diverged_at is not None:  # checked first: a diverged step is never saved
        if trainer.is_world_process_zero():
            details = {"diverged_at_step": divergence.diverged_at, "error": divergence.message}
            write_result(stopped_result(trainer, resume, DIVERGED, **details), out)
        release(trainer)
        raise Diverged(divergence.message)
    if stop.stopped_at is not None:
        if trainer.is_world_process_zero():  # the signal's name, for a launcher that did not see it
            write_result(stopped_result(trainer, resume, PREEMPTED, stopped_by=stop.stopped_by), out)
        release(trainer)
        raise Preempted(
            f"stopped by {stop.stopped_by} at step {stop.stopped_at}: {out}/checkpoint-{stop.stopped_at} is "
            f"complete; run the same command to resume (exit code {PREEMPTED_EXIT})"
        )
    trainer.save_state()
    eval_metrics = final_eval(trainer) if data.eval is not None else {}
    saved = save_final(trainer, tokenizer, cfg)
    result = {**run_result(trainer, eval_metrics, saved, resume), **data.seen_stats()}
    if trainer.is_world_process_zero():
        write_result(result, out)
        print_result(result)
    release(trainer)
    return result
