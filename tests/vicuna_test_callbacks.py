"""Test-only Trainer callbacks, reached by runs (and self-launched workers) through their config:
`trainer.callbacks=[{_target_: vicuna_test_callbacks.KillDuringSave, step: 2}]` (tests/ is on the
PYTHONPATH of every process the tests start)."""

import json
import os
import signal
import threading
import time

from transformers import TrainerCallback


class KillDuringSave(TrainerCallback):
    """On rank 0, SIGKILL this process as soon
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
    """Each rank writes `layout_rank<R>.json` with how
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
            owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            params[name] = {
                "dtensor": dt,
                "placements": [repr(x) for x in p.placements] if dt else [],
                "local_numel": (p.to_local() if dt else p).numel(),
                "numel": p.numel(),
                "dtype": str(p.dtype),
                # the layer holding it, and (a linear layer) how many weights that stands for
                "module": type(owner).__name__,
                "weights": getattr(owner, "in_features", 0) * getattr(owner, "out_features", 0),
            }
        self.report = {"params": params, "model_class": type(model).__name__}
        return control

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        import torch

        batch = processing_class([self.TEXT], return_tensors="pt").to(args.device)
        with torch.no_grad():
            loss = model(**batch, labels=batch["input_ids"], use_cache=False).loss
        self.report["final_loss_fixed_text"] = loss.item()
        self.report["modules_at_end"] = sorted({type(m).__name__ for m in model.modules()})
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, f"layout_rank{args.process_index}.json"), "w") as f:
            json.dump(self.report, f, indent=2)
        return control


class PoisonWeights(TrainerCallback):
    """At the end of optimizer step `step`, every weight of the model becomes nan: what a diverged
    update leaves (a valid config cannot be made to diverge on cue)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        import torch

        if state.global_step == self.step:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        return control


def override(name: str, **kwargs) -> str:
    """The `trainer.callbacks=[...]` command-line override that adds the callback `name` of this module."""
    args = "".join(f", {k}: {v!r}" if isinstance(v, str) else f", {k}: {v}" for k, v in kwargs.items())
    return f"trainer.callbacks=[{{_target_: {__name__}.{name}{args}}}]"
