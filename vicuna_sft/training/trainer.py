"""The Trainer every run uses: transformers' own, plus the CPU FSDP2 adaptation (fsdp_cpu.py),
which is a no-op on GPU machines and whenever FSDP is not asked for."""

from typing import Any

from transformers import Trainer as _HFTrainer

from . import fsdp_cpu


class Trainer(_HFTrainer):
    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        fsdp_cpu.enable(self)


def release(trainer: Any) -> None:
    """Forget process-wide accelerate state so the next job of a sweep starts as it would alone."""
    from accelerate.state import AcceleratorState

    trainer.accelerator.free_memory()
    AcceleratorState._reset_state(reset_partial_state=True)
