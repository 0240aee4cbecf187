"""A diverged run stops at the check that sees it (training/divergence.py), without saving that
step, and a sweep never names it best (issue 19). End to end through the CLI: tests/integration/
test_train.py::test_a_diverged_run_stops_and_is_never_best."""

import json
import math
from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from vicuna_sft.launch.sweep import SweepSummary
from vicuna_sft.training.divergence import StopOnDivergence
from vicuna_sft.training.result import objective


def state(step):
    return SimpleNamespace(global_step=step)


def test_a_nan_grad_norm_stops_at_its_step_without_saving_or_evaluating():
    guard, control = StopOnDivergence(), TrainerControl()
    guard.on_log(None, state(2), control, logs={"loss": 3.2, "grad_norm": 1.5, "learning_rate": 1e-3})
    assert guard.diverged_at is None and not control.should_training_stop
    control.should_save = control.should_evaluate = True  # step 4 is a save and eval step
    guard.on_step_end(None, state(4), control)
    assert control.should_log  # so it is checked before it is saved
    # with nan weights transformers logs a loss of 0.0 (its nan filter), but the norm is nan
    guard.on_log(None, state(4), control, logs={"loss": 0.0, "grad_norm": math.nan})
    assert guard.diverged_at == 4
    assert control.should_training_stop and not control.should_save and not control.should_evaluate
    assert guard.message == (
        "training diverged at step 4: grad_norm is nan (finite at step 2, the last check); stopped without "
        "saving it: lower optimizer.lr or raise optimizer.warmup_ratio"
    )
    guard.on_epoch_end(None, state(4), control)  # save_strategy=epoch saves there
    assert not control.should_save


def test_an_infinite_loss_is_divergence_too():
    guard, control = StopOnDivergence(), TrainerControl()
    guard.on_log(None, state(1), control, logs={"loss": math.inf, "grad_norm": 2.0})
    assert guard.diverged_at == 1 and "loss is inf" in guard.message and "grad_norm" not in guard.message


def test_an_fp16_step_skipped_on_overflow_is_not_divergence():
    guard, control = StopOnDivergence(), TrainerControl()
    skipped = SimpleNamespace(step_was_skipped=True)  # accelerate's AcceleratedOptimizer under fp16
    guard.on_log(None, state(5), control, logs={"loss": 4.0, "grad_norm": math.inf}, optimizer=skipped)
    assert guard.diverged_at is None and not control.should_training_stop and guard.checked_at == 5
    applied = SimpleNamespace(step_was_skipped=False)
    guard.on_log(None, state(6), control, logs={"loss": 4.0, "grad_norm": math.inf}, optimizer=applied)
    assert guard.diverged_at == 6


def test_eval_logs_and_steps_without_a_save_are_left_alone():
    guard, control = StopOnDivergence(), TrainerControl()
    guard.on_step_end(None, state(3), control)
    assert not control.should_log
    guard.on_log(None, state(3), control, logs={"eval_loss": 2.0})
    assert guard.diverged_at is None and guard.checked_at == 0


def write_job(root, job, overrides, result=None, error=None):
    d = root / job
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if result is not None:
        (d / "result.json").write_text(json.dumps({"output_dir": str(d), **result}))
    if error is not None:
        (d / "error.txt").write_text(error + "\n")


def test_the_summary_never_names_a_diverged_job_best(tmp_path, capsys):
    """Before: a diverged job's result said final_train_loss 0.0 (transformers' nan filter) and the
    summary named it best. Its result says status diverged now, and even a 0.0 in it is no objective."""
    good = {"status": "completed", "final_train_loss": 2.5, "eval_loss": None, "global_step": 8}
    diverged = {
        "status": "diverged",
        "final_train_loss": 0.0,
        "eval_loss": None,
        "global_step": 4,
        "error": "training diverged at step 4: grad_norm is nan",
    }
    assert objective(diverged) is None and objective({**diverged, "status": "completed"}) == 0.0
    write_job(tmp_path, "0", ["optimizer.lr=0.001"], good)
    write_job(tmp_path, "1", ["optimizer.lr=0.5"], diverged)
    config = SimpleNamespace(hydra=SimpleNamespace(sweep=SimpleNamespace(dir=str(tmp_path))))
    with pytest.raises(SystemExit) as e:
        SweepSummary().on_multirun_end(config)
    assert e.value.code == 1
    rows = json.loads((tmp_path / "summary.json").read_text())
    assert [(r["job"], r["status"], r["best"], r["objective"]) for r in rows] == [
        ("0", "completed", True, 2.5),
        ("1", "diverged", False, None),
    ]
    assert rows[1]["error"] == "training diverged at step 4: grad_norm is nan"
    out = capsys.readouterr()
    assert "best: job 0 optimizer.lr=0.001 final_train_loss 2.5000" in out.out
    assert "1 of 2 sweep jobs failed: ['1']" in out.err
