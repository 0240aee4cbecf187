"""`plots/loss.png` of a run: train loss per logged step, eval loss points, learning rate on a
second axis. Drawn from the Trainer's `log_history` (what `trainer_state.json` holds) at every
save and at the end, on rank 0; the learning rate of every step this process trained (read from
the scheduler after each optimizer step: joining only the logged points would draw a 2-step
warmup as one as long as the logging interval), the logged points before a resume. matplotlib's object API with the Agg canvas: no display, no
pyplot global state, the same on a headless node as on a laptop."""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)

PLOTS_DIR = "plots"
LOSS_PLOT = "loss.png"

# Line2D labels: tests read the plotted data back by these
TRAIN_LOSS, EVAL_LOSS, LEARNING_RATE = "train loss", "eval loss", "learning rate"


def plotting_available() -> bool:
    """matplotlib is a dependency, but an environment installed without it (the GPU check's minimal
    wheelhouse) still trains: the run then draws no plots, and says so once."""
    if importlib.util.find_spec("matplotlib") is not None:
        return True
    log.warning("matplotlib is not installed: no plots/loss.png for this run")
    return False


def series(log_history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
    return [s for s, _ in points], [v for _, v in points]


def lr_series(
    log_history: list[dict[str, Any]], per_step: dict[int, float] | None
) -> tuple[list[int], list[float]]:
    """The learning rate of each step in `per_step`, after the logged ones of earlier steps (those
    trained before this process resumed the run)."""
    steps, lrs = series(log_history, "learning_rate")
    if not per_step:
        return steps, lrs
    first = min(per_step)
    earlier = [(s, v) for s, v in zip(steps, lrs) if s < first]
    points = earlier + sorted(per_step.items())
    return [s for s, _ in points], [v for _, v in points]


def loss_figure(
    log_history: list[dict[str, Any]], title: str = "", lr_per_step: dict[int, float] | None = None
) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(*series(log_history, "loss"), color="tab:blue", linewidth=1.5, label=TRAIN_LOSS)
    ax.plot(*series(log_history, "eval_loss"), "o", color="tab:orange", markersize=6, label=EVAL_LOSS)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(
        *lr_series(log_history, lr_per_step),
        "--",
        color="tab:gray",
        linewidth=1,
        label=LEARNING_RATE,
    )
    lr_ax.set_ylabel("learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    handles = ax.get_lines() + lr_ax.get_lines()
    ax.legend(handles, [h.get_label() for h in handles], loc="upper right")
    if title:
        ax.set_title(title)
    return fig


def save_figure(fig: Any, path: str) -> str:
    """PNG written next to its place and renamed: a reader never sees half a file."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from ..files import replacing

    FigureCanvasAgg(fig)
    with replacing(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def write_loss_plot(
    log_history: list[dict[str, Any]], output_dir: str, lr_per_step: dict[int, float] | None = None
) -> str:
    title = os.path.basename(os.path.normpath(output_dir))
    figure = loss_figure(log_history, title, lr_per_step)
    return save_figure(figure, os.path.join(output_dir, PLOTS_DIR, LOSS_PLOT))


class LossPlot(TrainerCallback):
    """Redraws `plots/loss.png` at each save, at the end of training, and after an eval that
    follows the end (the run's final eval)."""

    def __init__(self) -> None:
        self.ended = False
        self.lr: dict[int, float] = {}  # step -> the learning rate it trained at, this process

    def _draw(self, args, state) -> None:
        if state.is_world_process_zero:
            write_loss_plot(state.log_history, args.output_dir, self.lr)

    def on_train_begin(self, args, state, control, **kwargs):
        self.ended = False
        self.lr = {}
        return control

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        # after the optimizer step and the scheduler's: the lr the Trainer logs for this step
        if state.is_world_process_zero and lr_scheduler is not None:
            self.lr[state.global_step] = float(lr_scheduler.get_last_lr()[0])
        return control

    def on_save(self, args, state, control, **kwargs):
        self._draw(args, state)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = True
        self._draw(args, state)
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        if self.ended:
            self._draw(args, state)
        return control
