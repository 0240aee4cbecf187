"""Sweep summary: after a Hydra multirun, one row per job at the sweep root, `summary.png`, and the
best job; and the `hydra/sweeper=optuna` option (the objective each job returns: training/result.py).

Each job writes `result.json` into its own output directory (see run.py); the summary is
gathered from those files, so it works with any launcher (local, submitit, ...).
"""

import csv
import json
import os
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from ..process import rank
from ..training.result import COMPLETED, RESULT_FILE, objective

COLUMNS = [
    "job",
    "overrides",
    "status",
    "final_train_loss",
    "eval_loss",
    "objective",
    "best",
    "global_step",
    "output_dir",
    "error",
]
ERROR_FILE = "error.txt"  # a failed job's error on its first line (then a traceback, if any)


SUMMARY_PLOT = "summary.png"
LR_KEYS = ("lr", "learning_rate")  # swept keys drawn on a log axis


def parse_overrides(text: str) -> dict[str, str]:
    """`a=1 b.c=x` (a summary row's overrides) -> {"a": "1", "b.c": "x"}."""
    pairs = (item.split("=", 1) for item in text.split() if "=" in item)
    return {key.lstrip("+~"): value for key, value in pairs}


def swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The overrides whose value differs between jobs, in the order they were given."""
    parsed = [parse_overrides(row["overrides"]) for row in rows]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    return [k for k in keys if len({p.get(k) for p in parsed}) > 1]


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [row for row in rows if row.get("objective") is not None]
    return min(done, key=lambda row: row["objective"]) if done else None


def _numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return None


def sweep_figure(rows: list[dict[str, Any]]) -> Any:
    """Final eval loss and final train loss of each completed job against each swept value, one
    panel per swept key (log axis for learning rates and for positive values spanning >= 100x,
    categories for values that are not numbers), the best job starred."""
    from matplotlib.figure import Figure

    keys = swept_keys(rows) or ["job"]
    done = [row for row in rows if row.get("objective") is not None]
    best = best_row(rows)
    fig = Figure(figsize=(6 * len(keys), 4.5), layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        raw = [row["job"] if key == "job" else parse_overrides(row["overrides"]).get(key) for row in done]
        xs = _numbers(raw)
        if xs is None:
            categories = sorted({str(v) for v in raw})
            xs = [float(categories.index(str(v))) for v in raw]
            ax.set_xticks(range(len(categories)), categories)
        elif xs and min(xs) > 0 and (key.rsplit(".", 1)[-1] in LR_KEYS or max(xs) >= 100 * min(xs)):
            ax.set_xscale("log")
        order = sorted(range(len(done)), key=lambda j: xs[j])
        x = [xs[j] for j in order]
        ax.plot(x, [done[j]["eval_loss"] for j in order], "o-", label="eval loss")
        ax.plot(x, [done[j]["final_train_loss"] for j in order], "x--", label="final train loss")
        if best is not None:
            ax.plot([xs[done.index(best)]], [best["objective"]], "*", markersize=16, label="best")
        ax.set_xlabel(key)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def describe_best(best: dict[str, Any], keys: list[str]) -> str:
    values = parse_overrides(best["overrides"])
    swept = " ".join(f"{k}={values[k]}" for k in keys if k in values)
    metric = "eval_loss" if best.get("eval_loss") is not None else "final_train_loss"
    return f"best: job {best['job']} {swept} {metric} {best['objective']:.4f}".replace("  ", " ")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = config.hydra.sweep.dir
        if rank() != 0 or not os.path.isdir(sweep_dir):
            return
        rows = []
        for name in sorted(
            os.listdir(sweep_dir), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else n)
        ):
            job_dir = os.path.join(sweep_dir, name)
            overrides_file = os.path.join(job_dir, ".hydra", "overrides.yaml")
            if not os.path.isfile(overrides_file):
                continue
            with open(overrides_file) as f:
                overrides = [line[2:].strip() for line in f if line.startswith("- ")]
            result_file = os.path.join(job_dir, RESULT_FILE)
            result, error = {}, None
            if os.path.isfile(result_file):
                with open(result_file) as f:
                    result = json.load(f)
            elif os.path.isfile(error_file := os.path.join(job_dir, ERROR_FILE)):
                with open(error_file) as f:
                    error = f.readline().strip()  # written by __main__ for a job that failed
            rows.append(
                {
                    "job": name,
                    "overrides": " ".join(overrides),
                    # a job that wrote a result ended as it says (a diverged one as "diverged")
                    "status": result.get("status", COMPLETED) if result else "failed",
                    "final_train_loss": result.get("final_train_loss"),
                    "eval_loss": result.get("eval_loss"),
                    "objective": objective(result),
                    "best": False,
                    "global_step": result.get("global_step"),
                    "output_dir": result.get("output_dir", job_dir),
                    "error": result.get("error", error),
                }
            )
        best = best_row(rows)
        if best is not None:
            best["best"] = True
        with open(os.path.join(sweep_dir, "summary.json"), "w") as f:
            json.dump(rows, f, indent=2)
        with open(os.path.join(sweep_dir, "summary.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        from ..training.plots import save_figure

        plot = save_figure(sweep_figure(rows), os.path.join(sweep_dir, SUMMARY_PLOT))
        print(f"sweep summary ({len(rows)} jobs): {os.path.join(sweep_dir, 'summary.csv')}, {plot}")
        if best is not None:
            print(describe_best(best, swept_keys(rows)))
        failed = [row["job"] for row in rows if row["status"] != COMPLETED]
        if failed:  # the sweep ran to the end, but its exit status must still say it failed
            print(
                f"vicuna_sft: error: {len(failed)} of {len(rows)} sweep jobs failed: {failed}",
                file=sys.stderr,
            )
            sys.exit(1)


class SearchSurvivesFailedTrials:
    """Mixin for hydra-optuna-sweeper's `OptunaSweeper` (hydra_plugins/vicuna_sft_sweeper).

    A failed job returns no number, so the plugin marks its trial FAILED and goes on
    (max_failure_rate=1.0). Two of its own paths still end the whole sweep with a traceback before
    the summary is written: a study in which no trial completed ("No trials are completed yet"),
    and the grid sampler's `study.stop()` after a failed last grid point. Both are ends of the
    search, not errors: the sweep ends there, and the summary lists the failed jobs and sets the
    exit status. A database storage cannot work with this stack and is refused up front."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import logging

        logging.getLogger("alembic").setLevel(logging.WARNING)  # optuna's import logs its setup at INFO
        super().__init__(*args, **kwargs)

    def sweep(self, arguments: list[str]) -> None:
        storage = self.sweeper.storage
        if storage is not None:
            print(
                f"vicuna_sft: error: hydra.sweeper.storage={storage}: optuna 2.10 (what hydra-optuna-sweeper "
                "1.3 allows) cannot use a database under SQLAlchemy 2; leave it null (an in-memory study)",
                file=sys.stderr,
            )
            sys.exit(1)
        try:
            return super().sweep(arguments)
        except (ValueError, RuntimeError) as e:
            if "No trials are completed yet" not in str(e) and "`Study.stop`" not in str(e):
                raise
            print(f"vicuna_sft: the search ended early: {e}", file=sys.stderr)
            return None


OWN_PLUGINS = ("hydra_plugins.vicuna_sft_launcher", "hydra_plugins.vicuna_sft_sweeper")


def register_own_plugins() -> None:
    """Hydra finds plugins by walking the `hydra_plugins` namespace's directories; under an
    editable install ours are importable (setuptools' import hook) but in no such directory, so
    outside the checkout `hydra/launcher=slurm` or `hydra/sweeper=optuna` failed with a raw
    `RuntimeError: Unknown plugin class`. Hydra's public `Plugins.register` adds them (after its
    scan: a class it found already is the same class object, registered once)."""
    import importlib
    import inspect

    from hydra.core.plugins import Plugins
    from hydra.plugins.plugin import Plugin

    for name in OWN_PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # the checkout's hydra_plugins/ is not installed: nothing of ours to add
            continue
        for obj in list(vars(module).values()):
            if (
                inspect.isclass(obj)
                and issubclass(obj, Plugin)
                and obj.__module__ == name
                and not inspect.isabstract(obj)
            ):
                Plugins.instance().register(obj)


def register_sweeper() -> None:
    """`hydra/sweeper=optuna`: the plugin's own config (its schema, samplers and search-space syntax)
    with this project's class and defaults. Registered in Python under the plugin's name: a YAML file
    of that name would be matched against the plugin's schema, which Hydra refuses (the schema has a
    defaults list). Hydra's plugin scan executes every plugin module, the plugin's config (which
    stores its own node) included, even when already imported: the scan runs first (it runs once
    per process), so this node is the one stored last."""
    from dataclasses import dataclass

    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    Plugins.instance()  # the scan
    register_own_plugins()
    try:
        from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf
    except ImportError:  # an environment installed without it (the GPU check's): no optuna option
        return

    @dataclass
    class OptunaSearchConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.vicuna_sft_sweeper.OptunaSearch"
        study_name: str | None = "vicuna_sft"
        # one trial at a time, each proposed knowing every earlier result (jobs run in turn anyway)
        n_jobs: int = 1
        # a failed job is a FAILED trial and the search goes on; the summary lists it, and the
        # sweep's exit status says a job failed
        max_failure_rate: float = 1.0

    ConfigStore.instance().store(
        group="hydra/sweeper", name="optuna", node=OptunaSearchConf, provider="vicuna_sft"
    )
