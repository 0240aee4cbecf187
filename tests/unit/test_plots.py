"""plots/loss.png: the figure holds exactly the logged series, and the file is a real PNG."""

import matplotlib.image
import numpy as np

from vicuna_sft.training.plots import (
    EVAL_LOSS,
    LEARNING_RATE,
    LOSS_PLOT,
    PLOTS_DIR,
    TRAIN_LOSS,
    loss_figure,
    write_loss_plot,
)

# the shape of a Trainer log_history: train logs, eval logs, and the final train summary
HISTORY = [
    {"loss": 6.2, "grad_norm": 1.5, "learning_rate": 0.0, "epoch": 0.01, "step": 1},
    {"loss": 5.9, "grad_norm": 1.8, "learning_rate": 3e-3, "epoch": 0.07, "step": 5},
    {"loss": 5.1, "grad_norm": 1.1, "learning_rate": 2.5e-3, "epoch": 0.15, "step": 10},
    {"eval_loss": 4.9, "eval_runtime": 1.0, "epoch": 0.15, "step": 10},
    {"loss": 4.4, "grad_norm": 1.2, "learning_rate": 1e-3, "epoch": 0.22, "step": 15},
    {"loss": 4.0, "grad_norm": 0.9, "learning_rate": 1e-4, "epoch": 0.29, "step": 20},
    {"eval_loss": 4.2, "eval_runtime": 1.0, "epoch": 0.29, "step": 20},
    {"train_runtime": 30.0, "train_loss": 5.0, "epoch": 0.29, "step": 20},
]


def lines_by_label(fig):
    return {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}


def test_figure_holds_the_logged_series():
    fig = loss_figure(HISTORY, "run")
    lines = lines_by_label(fig)
    assert list(lines[TRAIN_LOSS].get_xdata()) == [1, 5, 10, 15, 20]
    assert list(lines[TRAIN_LOSS].get_ydata()) == [6.2, 5.9, 5.1, 4.4, 4.0]  # not train_loss (the mean)
    assert list(lines[EVAL_LOSS].get_xdata()) == [10, 20]
    assert list(lines[EVAL_LOSS].get_ydata()) == [4.9, 4.2]
    assert lines[EVAL_LOSS].get_linestyle() == "None" and lines[EVAL_LOSS].get_marker() == "o"  # points
    assert list(lines[LEARNING_RATE].get_ydata()) == [0.0, 3e-3, 2.5e-3, 1e-3, 1e-4]
    # learning rate on its own (second) y axis, sharing the step axis
    loss_ax, lr_ax = lines[TRAIN_LOSS].axes, lines[LEARNING_RATE].axes
    assert loss_ax is not lr_ax and lr_ax.get_shared_x_axes().joined(loss_ax, lr_ax)
    assert loss_ax.get_ylabel() == "loss" and lr_ax.get_ylabel() == "learning rate"
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [TRAIN_LOSS, EVAL_LOSS, LEARNING_RATE]


def test_no_eval_no_points():
    lines = lines_by_label(loss_figure([e for e in HISTORY if "eval_loss" not in e]))
    assert len(lines[EVAL_LOSS].get_xdata()) == 0 and len(lines[TRAIN_LOSS].get_xdata()) == 5


def test_written_png_is_valid_and_drawn(tmp_path):
    path = write_loss_plot(HISTORY, str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / PLOTS_DIR / LOSS_PLOT)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape == (450, 800, 4)  # 8 x 4.5 inches at 100 dpi, RGBA
    assert np.unique(image.reshape(-1, 4), axis=0).shape[0] > 50  # lines, text and fills, not blank
    assert list(tmp_path.joinpath("run", PLOTS_DIR).iterdir()) == [tmp_path / "run" / PLOTS_DIR / LOSS_PLOT]


def test_callback_draws_at_save_at_the_end_and_after_the_final_eval_on_rank_0_only(tmp_path):
    from types import SimpleNamespace

    from vicuna_sft.training.plots import LossPlot

    plot = tmp_path / PLOTS_DIR / LOSS_PLOT
    args = SimpleNamespace(output_dir=str(tmp_path))
    history = [dict(e) for e in HISTORY[:3]]
    rank1 = SimpleNamespace(is_world_process_zero=False, log_history=history)
    rank0 = SimpleNamespace(is_world_process_zero=True, log_history=history)
    cb = LossPlot()
    cb.on_train_begin(args, rank0, None)
    cb.on_save(args, rank1, None)
    assert not plot.exists()  # other ranks never draw
    cb.on_save(args, rank0, None)
    drawn = lines_by_label(loss_figure(history))  # what the file shows at this save
    assert plot.is_file() and len(drawn[TRAIN_LOSS].get_xdata()) == 3
    saved = matplotlib.image.imread(plot)
    history.append(dict(HISTORY[3]))  # an eval during training: not drawn until the next save
    cb.on_evaluate(args, rank0, None)
    assert np.array_equal(matplotlib.image.imread(plot), saved)
    cb.on_train_end(args, rank0, None)
    at_end = matplotlib.image.imread(plot)
    assert not np.array_equal(at_end, saved)  # the eval point is in now
    history.append({"eval_loss": 3.9, "step": 12})  # the run's final eval, after training
    cb.on_evaluate(args, rank0, None)
    assert not np.array_equal(matplotlib.image.imread(plot), at_end)


def test_the_lr_curve_has_every_step_not_only_the_logged_ones(tmp_path):
    """Issue 21, item 9: a 2-step warmup logged every 5 steps was drawn as a 5-step ramp."""
    from types import SimpleNamespace

    import torch

    from vicuna_sft.training.plots import LossPlot

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, s / 2))  # 2 warmup steps
    history = [{"loss": 3.0, "learning_rate": 0.0, "step": 0}]
    state = SimpleNamespace(is_world_process_zero=True, log_history=history, global_step=0)
    args = SimpleNamespace(output_dir=str(tmp_path))
    cb = LossPlot()
    cb.on_train_begin(args, state, None)
    for step in range(1, 11):
        opt.step()
        sched.step()
        state.global_step = step
        cb.on_step_end(args, state, None, lr_scheduler=sched)
        if step % 5 == 0:
            history.append({"loss": 3.0 - step / 10, "learning_rate": sched.get_last_lr()[0], "step": step})
    lr = lines_by_label(loss_figure(history, lr_per_step=cb.lr))[LEARNING_RATE]
    assert list(lr.get_xdata()) == list(range(0, 11))  # the logged step 0, then every step
    assert list(lr.get_ydata())[:4] == [0.0, 5e-3, 1e-2, 1e-2]  # the ramp ends at step 2, not 5
    # resumed at step 10: the steps before come from the log, the later ones from the scheduler
    x = lines_by_label(loss_figure(history, lr_per_step={11: 1e-2, 12: 1e-2}))[LEARNING_RATE].get_xdata()
    assert list(x) == [0, 5, 10, 11, 12]
