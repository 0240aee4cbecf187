"""Trainer callbacks: the built-in ones every run has, and the user's `trainer.callbacks`."""

import os

from transformers import TrainerCallback

from ..config import Config
from ..errors import UserError
from .checkpoint import mark_complete, rotate, write_failure, write_fingerprint
from .plots import LossPlot
from .throughput import Throughput
from .train import AlreadyFinished


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-N` complete once every rank has returned from writing it, after recording
    the run's math-relevant config (checkpoint.run_fingerprint) in it."""

    def __init__(self, fingerprint: dict | None = None, save_total_limit: int | None = None):
        self.fingerprint = fingerprint
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(path):
            try:
                if self.fingerprint is not None:
                    write_fingerprint(path, self.fingerprint)
                mark_complete(path, state.global_step)
            except OSError as e:
                raise write_failure(args.output_dir, path, e) from e
            rotate(args.output_dir, self.save_total_limit)
        return control


class StopWhenFinished(TrainerCallback):
    """Resumed from a checkpoint already at max_steps: stop before the Trainer runs another step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise AlreadyFinished(state.global_step)
        return control


def build_callbacks(
    cfg: Config, fingerprint: dict | None = None, save_total_limit: int | None = None
) -> list[TrainerCallback]:
    """The user's `trainer.callbacks` (Hydra `_target_` nodes, instantiated here), then the
    built-in ones. Within each event the Trainer calls them in this order, so a user callback's
    `on_save` sees a checkpoint before it is marked complete, and `on_train_begin` runs before the
    resumed-at-max_steps check. Throughput (tokens/s, MFU: training/throughput.py) and LossPlot
    (plots/loss.png: training/plots.py) only observe."""
    from hydra.utils import instantiate

    user = []
    for i, node in enumerate(cfg.trainer.callbacks):
        if not isinstance(node, dict) or "_target_" not in node:
            raise UserError(
                f"trainer.callbacks[{i}] needs a _target_ (a TrainerCallback class), got {node!r}"
            )
        try:
            callback = instantiate(node)
        except Exception as e:  # Hydra wraps import and constructor errors alike
            raise UserError(f"trainer.callbacks[{i}]: cannot instantiate {node['_target_']}: {e}") from None
        if not isinstance(callback, TrainerCallback):
            raise UserError(
                f"trainer.callbacks[{i}]: {node['_target_']} is not a transformers.TrainerCallback"
            )
        user.append(callback)
    return [
        *user,
        CheckpointCompleteCallback(fingerprint, save_total_limit),
        StopWhenFinished(),
        Throughput(),
        LossPlot(),
    ]
