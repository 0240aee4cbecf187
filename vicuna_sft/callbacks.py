"""Trainer callbacks shared by every run."""

import os
import signal
import threading
import time

from transformers import TrainerCallback

from .checkpoint import AlreadyFinished, mark_complete, rotate, write_fingerprint

# test-only: SIGKILL rank 0 while it writes checkpoint-<step> (after the weights, before the rest)
KILL_IN_SAVE_ENV = "VICUNA_SFT_TEST_KILL_IN_SAVE"


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
            if self.fingerprint is not None:
                write_fingerprint(path, self.fingerprint)
            mark_complete(path, state.global_step)
            rotate(args.output_dir, self.save_total_limit)
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


class LayoutReport(TrainerCallback):
    """Test hook (`VICUNA_SFT_TEST_REPORT=<dir>`): each rank writes `layout_rank<R>.json` with how
    its parameters are held (DTensor placements, local vs global size) and, at the end, the loss
    of the in-memory (possibly sharded) model on a fixed text, for comparison with the saved one."""

    TEXT = "USER: What is the capital of France? ASSISTANT: The capital of France is Paris.</s>"

    def __init__(self, directory: str):
        self.directory = directory
        self.report: dict = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.distributed.tensor import DTensor

        params = {}
        for name, p in model.named_parameters():
            dt = isinstance(p, DTensor)
            params[name] = {
                "dtensor": dt,
                "placements": [repr(x) for x in p.placements] if dt else [],
                "local_numel": (p.to_local() if dt else p).numel(),
                "numel": p.numel(),
            }
        self.report = {"params": params, "model_class": type(model).__name__}
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        import json

        import torch

        batch = processing_class([self.TEXT], return_tensors="pt").to(args.device)
        with torch.no_grad():
            loss = model(**batch, labels=batch["input_ids"], use_cache=False).loss
        self.report["final_loss_fixed_text"] = loss.item()
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, f"layout_rank{args.process_index}.json"), "w") as f:
            json.dump(self.report, f, indent=2)
        return control


REPORT_ENV = "VICUNA_SFT_TEST_REPORT"


def default_callbacks(
    fingerprint: dict | None = None, save_total_limit: int | None = None
) -> list[TrainerCallback]:
    # the test hook first: its on_save must run before the checkpoint is marked complete
    hook = [KillDuringSave(int(os.environ[KILL_IN_SAVE_ENV]))] if os.environ.get(KILL_IN_SAVE_ENV) else []
    report = [LayoutReport(os.environ[REPORT_ENV])] if os.environ.get(REPORT_ENV) else []
    return [*hook, CheckpointCompleteCallback(fingerprint, save_total_limit), StopWhenFinished(), *report]
