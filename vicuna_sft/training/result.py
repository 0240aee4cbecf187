"""`result.json`: what a run reports when it ends (read by the sweep summary, launch/sweep.py)."""

import json
import math
import os
from typing import Any

from ..errors import to_log_files
from .checkpoint import step_of

RESULT_FILE = "result.json"
# result["status"]: how the run ended. Only a completed run has a final model and an objective;
# a diverged one stopped on non-finite training (training/divergence.py), a preempted one on a
# signal after a complete checkpoint (training/preemption.py). A result without one is completed.
COMPLETED, DIVERGED, PREEMPTED = "completed", "diverged", "preempted"


def objective(result: dict[str, Any]) -> float | None:
    """What a sweep minimizes (and what each job returns to a searching sweeper such as Optuna):
    the final eval loss, else the final train loss (a run without eval data). None for a run
    without one or with a non-finite one (diverged): Optuna then marks the trial FAILED (a NaN
    would stop its study), and the summary never names it best. None as well for a run that did not
    complete (diverged, preempted): its losses are not those of a finished run."""
    if result.get("status", COMPLETED) != COMPLETED:
        return None
    value = result.get("eval_loss")
    if value is None:
        value = result.get("final_train_loss")
    return value if value is not None and math.isfinite(value) else None


def final_eval(trainer: Any) -> dict[str, Any]:
    """The eval of the final weights: the one the run just logged at its last step, else a new one."""
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if evals and evals[-1].get("step") == trainer.state.global_step:
        return evals[-1]
    return trainer.evaluate()


def run_result(
    trainer: Any, eval_metrics: dict, saved: dict[str, str | None], resumed_from: str | None
) -> dict[str, Any]:
    """`saved`: the directories `training.final.save_final` wrote (final_dir, adapter_dir)."""
    losses = [(e["step"], e["loss"]) for e in trainer.state.log_history if "loss" in e]
    speed = [e for e in trainer.state.log_history if "train_tokens_per_second" in e]
    # the Trainer logs the mean loss of the steps since its previous log, and logs at the last step
    # (callbacks.LogLastStep): final_train_loss is the mean over steps final_train_loss_steps[0..1]
    window = None
    if losses:
        start = losses[-2][0] + 1 if len(losses) > 1 else 1
        if resumed_from and start <= step_of(resumed_from) < losses[-1][0]:
            start = step_of(resumed_from) + 1  # the Trainer's running loss restarts at the resumed step
        window = [start, losses[-1][0]]
    return {
        "status": COMPLETED,
        "output_dir": trainer.args.output_dir,
        "final_dir": saved["final_dir"],  # None: an adapter run with adapter.merge=false
        "adapter_dir": saved["adapter_dir"],  # None: full fine-tuning
        "global_step": trainer.state.global_step,
        "first_train_loss": losses[0][1] if losses else None,
        "final_train_loss": losses[-1][1] if losses else None,
        "final_train_loss_steps": window,
        "eval_loss": eval_metrics.get("eval_loss"),
        "train_tokens_per_second": speed[-1]["train_tokens_per_second"] if speed else None,
        "resumed_from": resumed_from,
    }


def stopped_result(trainer: Any, resumed_from: str | None, status: str, **details: Any) -> dict[str, Any]:
    """The result of a run that stopped before the end: no final model, no final eval. A diverged
    run's last logged loss is not a loss of its model (transformers' nan filter logs an average of
    the earlier ones in place of a nan), so it reports none."""
    result = run_result(trainer, {}, {"final_dir": None, "adapter_dir": None}, resumed_from)
    if status == DIVERGED:
        result.update(final_train_loss=None, final_train_loss_steps=None)
    return {**result, "status": status, **details}


def write_result(result: dict[str, Any], output_dir: str) -> None:
    # strict JSON: a non-finite number (a diverged run's) is written as null, which every reader parses
    clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in result.items()}
    with open(os.path.join(output_dir, RESULT_FILE), "w") as f:
        json.dump(clean, f, indent=2, allow_nan=False)


def print_result(r: dict[str, Any]) -> None:
    def fmt(x: Any) -> str:
        return f"{x:.4f}" if isinstance(x, float) else str(x)

    text = (
        f"\nvicuna_sft: {r['global_step']} steps"
        + (f" (resumed from {r['resumed_from']})" if r["resumed_from"] else "")
        + f"\n  train loss  first {fmt(r['first_train_loss'])}  last {fmt(r['final_train_loss'])}"
        + f"\n  eval loss   {fmt(r['eval_loss'])}"
        + f"\n  outputs     {r['output_dir']}  (config.yaml, data_stats.json, checkpoint-*/, {RESULT_FILE})"
        + (
            f"\n  model       {r['final_dir']}  (AutoModelForCausalLM.from_pretrained)"
            if r["final_dir"]
            else ""
        )
        + (
            f"\n  adapter     {r['adapter_dir']}  (AutoPeftModelForCausalLM.from_pretrained)"
            if r["adapter_dir"]
            else ""
        )
        + "\n"
    )
    print(text, flush=True)
    to_log_files(text.strip())  # the result in the run's log too
