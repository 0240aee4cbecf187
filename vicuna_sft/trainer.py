"""The Trainer every run uses: transformers' own, plus the CPU FSDP2 adaptation (fsdp_cpu.py),
which is a no-op on GPU machines and whenever FSDP is not asked for."""

from transformers import Trainer as _HFTrainer

from . import fsdp_cpu


class Trainer(_HFTrainer):
    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        fsdp_cpu.enable(self)
