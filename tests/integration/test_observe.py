"""Seeing a run end to end on the tiny model: plots/loss.png, TensorBoard event files, throughput
in the logs, and sweeps that search (Optuna) with summary.png naming the best learning rate."""

import glob
import json
import math

import matplotlib.image
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

SMOKE = ["experiment=smoke"]
SHORT = ["trainer.max_steps=8", "trainer.logging_steps=2", "trainer.save_steps=4", "trainer.eval_steps=4"]


def png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    return matplotlib.image.imread(path)


def test_run_writes_loss_plot_tensorboard_and_throughput(tmp_path, run_module):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vicuna_sft.training.plots import write_loss_plot

    out = tmp_path / "run"
    r = run_module("vicuna_sft", *SMOKE, *SHORT, f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    train = [(e["step"], e["loss"]) for e in history if "loss" in e]
    evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
    assert [s for s, _ in train] == [1, 2, 4, 6, 8] and [s for s, _ in evals] == [4, 8]

    # loss.png shows exactly the logged series (its lr curve is drawn from every step's lr, which
    # trainer_state.json does not hold: compared by the curves' data, not the pixels)
    from vicuna_sft.training.plots import loss_figure

    written = png(out / "plots" / "loss.png")
    (ax, *_) = loss_figure(history, "run").axes
    curves = {line.get_label(): line for line in ax.get_lines()}
    assert [float(y) for y in curves["train loss"].get_ydata()] == [loss for _, loss in train]
    assert [float(y) for y in curves["eval loss"].get_ydata()] == [loss for _, loss in evals]
    assert written.shape == png(write_loss_plot(history, str(tmp_path / "again" / "run"))).shape
    # ... and not what another history would draw
    other = [{**e, "loss": e["loss"] * 0.5} if "loss" in e else e for e in history]
    assert not np.array_equal(written, png(write_loss_plot(other, str(tmp_path / "other" / "run"))))

    # TensorBoard event files in the run directory hold the logged losses
    (logdir,) = glob.glob(str(out / "runs" / "*"))
    events = EventAccumulator(logdir)
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert [s for s, _ in scalars["train/loss"]] == [s for s, _ in train]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([v for _, v in train], rel=1e-6)
    assert scalars["eval/loss"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in evals]
    assert len(scalars["train/nonpad_tokens_per_second"]) == len(train)

    # throughput at every training log (packed rows: no padding); no MFU claimed on CPU
    logs = [e for e in history if "loss" in e]
    for e in logs:
        assert 0 < e["trained_tokens_per_second"] < e["nonpad_tokens_per_second"], e
        assert e["padding_fraction"] == 0.0 and "mfu" not in e
    assert "eta 0:" in r.stderr  # the progress bar's remaining time
    assert "MFU not claimed: no peak FLOP/s for cpu" in r.stdout + r.stderr


def test_optuna_sweep_of_distributed_jobs_finds_and_names_the_best_lr(tmp_path, run_module):
    """3 trials, each a 2-rank job (self-launched workers); rows padded to max_length, so the
    logged padding fraction can be checked against the Trainer's own count over both ranks."""
    from vicuna_sft.launch.sweep import sweep_figure

    sweep = tmp_path / "sweep"
    r = run_module(
        "vicuna_sft",
        "-m",
        "hydra/sweeper=optuna",
        "optimizer.lr=tag(log, interval(1e-5, 1e-2))",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=0",
        *SMOKE,
        "distributed.nproc_per_node=2",
        "data.padding=max_length",
        "data.max_length=256",
        "trainer.max_steps=3",
        "trainer.eval_steps=3",
        "trainer.save_steps=3",
        "trainer.logging_steps=1",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads((sweep / "summary.json").read_text())
    assert [row["status"] for row in rows] == ["completed"] * 3
    lrs = [float(row["overrides"].split("optimizer.lr=")[1].split()[0]) for row in rows]
    assert len(set(lrs)) == 3 and all(1e-5 <= lr <= 1e-2 for lr in lrs)
    for row in rows:  # the objective of each trial: its final eval loss, a finite number
        assert math.isfinite(row["objective"]) and row["objective"] == row["eval_loss"]
        # each job (rank 0 of its workers) drew its own loss plot and wrote its TensorBoard events
        png(sweep / row["job"] / "plots" / "loss.png")
        assert glob.glob(str(sweep / row["job"] / "runs" / "*" / "events.out.tfevents.*"))
    # Optuna's study saw the same numbers the jobs reported
    study = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best = min(rows, key=lambda row: row["objective"])
    assert study["best_value"] == pytest.approx(best["objective"], rel=1e-12)
    assert study["best_params"]["optimizer.lr"] == pytest.approx(lrs[rows.index(best)], rel=1e-12)
    assert [row["best"] for row in rows] == [row is best for row in rows]
    best_lr = lrs[rows.index(best)]
    lr_text = best["overrides"].split("optimizer.lr=")[1].split()[0]
    assert f"best: job {best['job']} optimizer.lr={lr_text} eval_loss {best['objective']:.4f}" in r.stdout

    # throughput over both ranks: 2 ranks x 4 rows x 256 positions per step, real tokens as counted
    # by the Trainer (gathered over the ranks); rank 0's own share would give another fraction
    history = json.loads((sweep / best["job"] / "trainer_state.json").read_text())["log_history"]
    logs = [e for e in history if "loss" in e]
    seen = [0] + [e["num_input_tokens_seen"] for e in logs]
    assert [e["step"] for e in logs] == [1, 2, 3]
    for e, before, after in zip(logs, seen, seen[1:]):
        assert e["padding_fraction"] == pytest.approx(1 - (after - before) / (2 * 4 * 256), abs=1e-4), e

    # summary.png: eval and train loss against the learning rate, on a log axis
    fig = sweep_figure(rows)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "optimizer.lr"
    lines = {line.get_label(): line for line in ax.get_lines()}
    order = np.argsort(lrs)
    assert list(lines["eval loss"].get_xdata()) == [lrs[i] for i in order]
    assert list(lines["eval loss"].get_ydata()) == [rows[i]["eval_loss"] for i in order]
    assert list(lines["final train loss"].get_ydata()) == [rows[i]["final_train_loss"] for i in order]
    assert list(lines["best"].get_xdata()) == [best_lr]
    written = png(sweep / "summary.png")
    from vicuna_sft.training.plots import save_figure

    assert np.array_equal(written, png(save_figure(fig, str(tmp_path / "again.png"))))


def test_a_failed_optuna_trial_is_marked_and_the_search_goes_on(tmp_path, run_module):
    """Two trials over two values, one invalid (the seeded random sampler proposes 1e-3, then -1):
    that job fails with its one-line error, Optuna marks the trial FAILED instead of stopping, the
    other completes; without eval data its objective is the final train loss. The sweep's exit
    status says a job failed."""
    sweep = tmp_path / "sweep"
    r = run_module(
        "vicuna_sft",
        "-m",
        "hydra/sweeper=optuna",
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.n_trials=2",
        "optimizer.lr=choice(-1, 1e-3)",
        *SMOKE,
        "trainer.max_steps=2",
        "trainer.save_steps=2",
        "trainer.eval_strategy=no",
        "data.eval_fraction=0",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "optimizer.lr must be > 0" in r.stderr and "1 of 2 sweep jobs failed" in r.stderr
    assert "Failed experiment" in r.stdout + r.stderr  # Optuna's record of the FAILED trial
    rows = {row["overrides"].split()[0]: row for row in json.loads((sweep / "summary.json").read_text())}
    assert rows.keys() == {"optimizer.lr=-1", "optimizer.lr=0.001"}
    failed, done = rows["optimizer.lr=-1"], rows["optimizer.lr=0.001"]
    assert failed["status"] == "failed" and failed["objective"] is None and not failed["best"]
    assert done["status"] == "completed" and done["best"] and done["eval_loss"] is None
    assert done["objective"] == done["final_train_loss"] and math.isfinite(done["objective"])
    study = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert study["best_params"] == {"optimizer.lr": 0.001} and study["best_value"] == done["objective"]
    assert f"best: job {done['job']} optimizer.lr=0.001 final_train_loss {done['objective']:.4f}" in r.stdout
    assert png(sweep / "summary.png").shape[2] == 4


def test_a_search_in_which_every_trial_fails_still_ends_with_its_summary(tmp_path, run_module):
    sweep = tmp_path / "sweep"
    r = run_module(
        "vicuna_sft",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=2",
        "optimizer.lr=choice(-1, -2)",
        *SMOKE,
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "the search ended early: No trials are completed yet" in r.stderr
    assert "2 of 2 sweep jobs failed" in r.stderr
    rows = json.loads((sweep / "summary.json").read_text())
    assert [row["status"] for row in rows] == ["failed", "failed"] and not any(row["best"] for row in rows)
    assert "best:" not in r.stdout


def test_tensorboard_events_stay_in_the_output_dir_even_for_an_eval_before_training(
    tmp_path, monkeypatch, tiny_dir, bpe_tokenizer
):
    """transformers sets the event directory at train begin; our Trainer sets it at construction,
    so an evaluate() first does not write to ./runs."""
    from transformers import LlamaForCausalLM, TrainingArguments

    from vicuna_sft.data.collate import Collator
    from vicuna_sft.training.trainer import Trainer

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    args = TrainingArguments(output_dir=str(out), report_to=["tensorboard"], use_cpu=True)
    samples = [{"input_ids": [1, 5, 6, 7], "labels": [-100, 5, 6, 7]}] * 2
    trainer = Trainer(
        model=LlamaForCausalLM.from_pretrained(tiny_dir),
        args=args,
        eval_dataset=samples,
        data_collator=Collator(pad_id=0),
    )
    trainer.evaluate()
    assert not (tmp_path / "runs").exists()
    assert glob.glob(str(out / "runs" / "*" / "events.out.tfevents.*"))
