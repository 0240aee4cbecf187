"""Trainer callbacks shared by every run."""

import os

from transformers import TrainerCallback

from .checkpoint import mark_complete


class CheckpointCompleteCallback(TrainerCallback):
    """Marks `checkpoint-N` complete once every rank has returned from writing it."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        path = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(path):
            mark_complete(path, state.global_step)
        return control
