"""The sweep summary's figure and best job, from summary rows (no runs)."""

import math

from vicuna_sft.launch.sweep import best_row, describe_best, parse_overrides, sweep_figure, swept_keys
from vicuna_sft.training.result import objective


def row(job, overrides, eval_loss, train_loss, status="completed"):
    result = {"eval_loss": eval_loss, "final_train_loss": train_loss} if status == "completed" else {}
    return {
        "job": job,
        "overrides": overrides,
        "status": status,
        "eval_loss": result.get("eval_loss"),
        "final_train_loss": result.get("final_train_loss"),
        "objective": objective(result),
    }


def lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_objective_is_eval_loss_else_train_loss():
    assert objective({"eval_loss": 2.5, "final_train_loss": 3.0}) == 2.5
    assert objective({"eval_loss": None, "final_train_loss": 3.0}) == 3.0
    assert objective({}) is None
    # a diverged run has no objective (never best; a FAILED trial for Optuna, which a NaN would stop)
    assert objective({"eval_loss": math.nan, "final_train_loss": 3.0}) is None
    assert objective({"eval_loss": None, "final_train_loss": math.inf}) is None


def test_lr_sweep_on_a_log_axis_with_the_best_starred_and_failures_left_out():
    rows = [
        row("0", "optimizer.lr=0.001 experiment=smoke", 4.0, 4.5),
        row("1", "optimizer.lr=1e-05 experiment=smoke", 6.0, 6.2),
        row("2", "optimizer.lr=-1 experiment=smoke", None, None, status="failed"),
        row("3", "optimizer.lr=0.0001 experiment=smoke", 5.0, 5.1),
    ]
    assert parse_overrides(rows[0]["overrides"]) == {"optimizer.lr": "0.001", "experiment": "smoke"}
    assert swept_keys(rows) == ["optimizer.lr"]
    assert best_row(rows) is rows[0]
    (ax,) = sweep_figure(rows).axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "optimizer.lr"
    drawn = lines(ax)
    assert list(drawn["eval loss"].get_xdata()) == [1e-5, 1e-4, 1e-3]  # sorted by the swept value
    assert list(drawn["eval loss"].get_ydata()) == [6.0, 5.0, 4.0]
    assert list(drawn["final train loss"].get_ydata()) == [6.2, 5.1, 4.5]
    assert list(drawn["best"].get_xdata()) == [1e-3] and list(drawn["best"].get_ydata()) == [4.0]
    assert describe_best(rows[0], swept_keys(rows)) == "best: job 0 optimizer.lr=0.001 eval_loss 4.0000"


def test_linear_axis_for_a_narrow_numeric_sweep_and_categories_for_names():
    rows = [
        row("0", "optimizer.weight_decay=0.0 attention=eager", 4.0, 4.1),
        row("1", "optimizer.weight_decay=0.1 attention=sdpa", 3.0, None),  # no train loss logged
    ]
    wd, attention = sweep_figure(rows).axes  # one panel per swept key
    assert wd.get_xscale() == "linear" and list(lines(wd)["eval loss"].get_xdata()) == [0.0, 0.1]
    assert [t.get_text() for t in attention.get_xticklabels()] == ["eager", "sdpa"]
    assert list(lines(attention)["eval loss"].get_xdata()) == [0.0, 1.0]
    assert list(lines(attention)["eval loss"].get_ydata()) == [4.0, 3.0]


def test_train_loss_objective_named_in_the_best_line():
    rows = [row("0", "optimizer.lr=0.1", None, 2.0), row("1", "optimizer.lr=0.2", None, 1.5)]
    best = best_row(rows)
    assert best is rows[1] and math.isclose(best["objective"], 1.5)
    assert describe_best(best, swept_keys(rows)) == "best: job 1 optimizer.lr=0.2 final_train_loss 1.5000"


def test_no_completed_job_no_best():
    rows = [
        row("0", "optimizer.lr=-1", None, None, "failed"),
        row("1", "optimizer.lr=-2", None, None, "failed"),
    ]
    assert best_row(rows) is None
    (ax,) = sweep_figure(rows).axes
    assert len(lines(ax)["eval loss"].get_xdata()) == 0


def test_the_optuna_option_is_the_projects(tmp_path, run_module):
    """`hydra/sweeper=optuna` composes to this project's sweeper class and defaults, not the
    plugin's own node (which Hydra's plugin scan stores again when it runs)."""
    import yaml

    r = run_module("vicuna_sft", "hydra/sweeper=optuna", "--cfg", "hydra", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    sweeper = yaml.safe_load(r.stdout)["hydra"]["sweeper"]
    assert sweeper["_target_"] == "hydra_plugins.vicuna_sft_sweeper.OptunaSearch"
    assert (sweeper["study_name"], sweeper["n_jobs"], sweeper["max_failure_rate"]) == ("vicuna_sft", 1, 1.0)
    assert sweeper["direction"] == "minimize" and sweeper["storage"] is None
    assert sweeper["sampler"]["_target_"] == "optuna.samplers.TPESampler"
