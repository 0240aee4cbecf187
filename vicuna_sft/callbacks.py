"""Trainer callbacks shared by every run."""

import os
import signal
import threading
import time

from transformers import TrainerCallback

from .checkpoint import AlreadyFinished, mark_complete, write_fingerprint

# test-only: SIGKILL rank 0 while it writes checkpoint-<step> (after the weights, before the rest)
KILL_IN_SAVE_ENV = "VICUNA_SFT_TEST_KILL_IN_SAVE"


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-N` complete once every rank has returned from writing it, after recording
    the run's math-relevant config (checkpoint.run_fingerprint) in it."""

    def __init__(self, fingerprint: dict | None = None):
        self.fingerprint = fingerprint

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(path):
            if self.fingerprint is not None:
                write_fingerprint(path, self.fingerprint)
            mark_complete(path, state.global_step)
        return control


class StopWhenFinished(TrainerCallback):
    """Resumed from a checkpoint already at max_steps: stop before the Trainer runs another step."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            raise AlreadyFinished(state.global_step)
        return control


class KillDuringSave(TrainerCallback):
    """Test hook (`VICUNA_SFT_TEST_KILL_IN_SAVE=<step>`): on rank 0, SIGKILL this process as soon
    as the weights of checkpoint-<step> appear on disk, i.e. in the middle of writing it."""

    WEIGHTS = ("model.safetensors", "pytorch_model_fsdp_0", "pytorch_model_fsdp.bin")

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and state.is_world_process_zero:
            path = os.path.join(args.output_dir, f"checkpoint-{self.step}")
            threading.Thread(target=self._watch, args=(path,), daemon=True).start()
        return control

    def _watch(self, path: str) -> None:
        while not any(os.path.exists(os.path.join(path, w)) for w in self.WEIGHTS):
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGKILL)

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step and state.is_world_process_zero:
            os.kill(os.getpid(), signal.SIGKILL)  # the watcher was too slow: still before COMPLETE
        return control


def default_callbacks(fingerprint: dict | None = None) -> list[TrainerCallback]:
    # the test hook first: its on_save must run before the checkpoint is marked complete
    hook = [KillDuringSave(int(os.environ[KILL_IN_SAVE_ENV]))] if os.environ.get(KILL_IN_SAVE_ENV) else []
    return [*hook, CheckpointCompleteCallback(fingerprint), StopWhenFinished()]
