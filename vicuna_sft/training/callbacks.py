"""Trainer callbacks: the built-in ones every run has, and the user's `trainer.callbacks`."""

import os

from transformers import TrainerCallback

from ..config import Config
from ..errors import UserError, to_log_files
from . import manifest
from .checkpoint import (
    COMPLETE,
    MARKER_TMP,
    apply_umask,
    mark_complete,
    rotate,
    write_failure,
    write_fingerprint,
)
from .divergence import StopOnDivergence
from .optimizers import OptimizerStateLog
from .plots import LossPlot, plotting_available
from .preemption import StopOnSignal
from .throughput import Throughput
from .trainer import AlreadyFinished


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-N` complete once every rank has returned from writing it, after recording
    the run's math-relevant config (checkpoint.run_fingerprint) in it. The marker holds the
    manifest (manifest.py): every rank hashes a share of the files, rank 0 writes it. Every rank
    leaves only once the marker is written, so a rank that then exits (preemption) never leaves
    the checkpoint unmarked."""

    def __init__(self, fingerprint: dict | None = None, save_total_limit: int | None = None):
        self.fingerprint = fingerprint
        self.save_total_limit = save_total_limit

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(path) and self.fingerprint is not None:
            write_fingerprint(path, self.fingerprint)
        if distributed:
            dist.barrier()  # every rank's files are written
        if state.is_world_process_zero and os.path.isdir(path):
            apply_umask(path)
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        share = {}
        if os.path.isdir(path):
            files = manifest.list_files(path, exclude=(COMPLETE, MARKER_TMP))
            share = manifest.hash_share(path, files, rank, world)
        shares = [share]
        if distributed:
            shares = [{} for _ in range(world)] if rank == 0 else None
            dist.gather_object(share, shares, dst=0)
        if state.is_world_process_zero and os.path.isdir(path):
            try:
                mark_complete(path, state.global_step, {k: v for s in shares for k, v in sorted(s.items())})
            except OSError as e:
                raise write_failure(args.output_dir, path, e) from e
            rotate(args.output_dir, self.save_total_limit, protect=state.best_model_checkpoint)
        if distributed:
            dist.barrier()
        return control


class LogToFile(TrainerCallback):
    """Every log the Trainer prints on the console (loss, lr, grad norm, eval loss, throughput)
    also in the run's log file, once (rank 0; the values are the same on every rank)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            to_log_files(f"step {state.global_step}: {logs}")
        return control


class StopWhenFinished(TrainerCallback):
    """Resumed from a checkpoint already at max_steps: stop before the Trainer runs another step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise AlreadyFinished(state.global_step)
        return control


class LogLastStep(TrainerCallback):
    """Log at the last step too: otherwise the final train loss in result.json is that of the last
    multiple of logging_steps (with max_steps=8 and logging_steps=10: step 1)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_log = True
        return control


def build_callbacks(
    cfg: Config,
    fingerprint: dict | None = None,
    save_total_limit: int | None = None,
    stop: StopOnSignal | None = None,
    divergence: StopOnDivergence | None = None,
) -> list[TrainerCallback]:
    """The user's `trainer.callbacks` (Hydra `_target_` nodes, instantiated here), then the
    built-in ones. Within each event the Trainer calls them in this order, so a user callback's
    `on_save` sees a checkpoint before it is marked complete, and `on_train_begin` runs before the
    resumed-at-max_steps check. Throughput (tokens/s, MFU: training/throughput.py), OptimizerStateLog
    (state bytes per trained parameter: training/optimizers.py) and LossPlot (plots/loss.png:
    training/plots.py) only observe. StopOnDivergence comes last: it makes a step
    that any earlier callback decided to save (StopOnSignal included) log first, to be checked."""
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
        OptimizerStateLog(cfg.optimizer.name),
        *([LossPlot()] if plotting_available() else []),
        LogLastStep(),
        LogToFile(),
        *([stop] if stop else []),
        *([divergence] if divergence else []),
    ]
