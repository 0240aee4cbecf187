"""The Trainer every run uses: transformers' own, plus the CPU FSDP2 adaptation (compat/accelerate.py),
which is a no-op on GPU machines and whenever FSDP is not asked for, and a checkpoint write that
fails (a full disk) stopping the run with one line, its partial checkpoint set aside; and `train`,
its train loop, resumed or not, that never steps past max_steps."""

import logging
import os
from typing import Any

from transformers import ProgressCallback
from transformers import Trainer as _HFTrainer
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir

from ..compat import accelerate as accelerate_compat
from ..compat.transformers import CheckpointWriteHook
from ..model.adapters import loraplus_optimizer
from . import checkpoint, optimizers
from .throughput import EtaProgress, Throughput

log = logging.getLogger(__name__)


class AlreadyFinished(Exception):
    """Raised at train begin (callbacks.StopWhenFinished) when the resumed checkpoint already
    reached max_steps."""


class Trainer(CheckpointWriteHook, _HFTrainer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.pop_callback(ProgressCallback) is not None:  # None: tqdm disabled
            self.add_callback(EtaProgress())  # the same bar, with the run's ETA
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
                # transformers picks <output_dir>/runs/<time>_<host> only at train begin: an
                # evaluate() before any training would write its events to ./runs instead
                callback.logging_dir = os.path.join(self.args.output_dir, default_logdir())

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Throughput's numbers join each training log before the Trainer records it (log_history)
        # and hands it to every logger (TensorBoard, ...): in on_log they would arrive too late.
        # Every rank logs, so the collective inside log_metrics is matched.
        if "loss" in logs:
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, Throughput):
                    logs.update(callback.log_metrics(self.args.world_size))
        super().log(logs, start_time)

    def on_checkpoint_write_failure(self, path: str, error: BaseException) -> BaseException:
        return checkpoint.write_failure(self.args.output_dir, path, error)  # the partial one set aside

    def create_optimizer(self, model: Any = None) -> Any:
        # the one optimizer hook: a LoRA+ model instance (adapter.lr_ratio) brings its parameter
        # groups; anything else gets transformers' optimizer from TrainingArguments.optim
        if self.optimizer is None:
            self.optimizer = loraplus_optimizer(self, self.model if model is None else model)
        return super().create_optimizer(model)

    def create_accelerator_and_postprocess(self) -> None:
        parallelism = accelerate_compat.defer_parallelism(self)
        super().create_accelerator_and_postprocess()
        accelerate_compat.enable(self, parallelism)


def release(trainer: Any) -> None:
    """Forget process-wide accelerate state so the next job of a sweep starts as it would alone."""
    trainer.accelerator.free_memory()
    accelerate_compat.reset_state()
    optimizers.reset_process_state()


def train(trainer: Any, resume: str | None) -> None:
    """`trainer.train`, except that a checkpoint already at max_steps trains no extra step: the
    Trainer would run one more before checking; `callbacks.StopWhenFinished` stops it first, after
    the checkpoint's weights and state are loaded."""
    try:
        trainer.train(resume_from_checkpoint=resume)
    except AlreadyFinished:
        log.info("%s is already at max_steps=%d: nothing left to train", resume, trainer.state.max_steps)
