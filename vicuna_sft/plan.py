"""The run plan: where and in what a run computes, decided once from the validated config and this
machine (is CUDA visible, the launcher's layout), then handed to what needs it (the TrainingArguments
mapping, the model build and its adapters, the final save, the check).

The only module that asks torch whether CUDA is there and that maps a precision to a dtype
(tests/unit/test_layout.py): two copies of such a rule once disagreed (the check chose CUDA under
`trainer.use_cpu=false` on a CPU machine, where training computes on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from .config import Config, Dtype, Precision, TrainerConfig
from .process import layout
from .validation import gradient_accumulation


class Device(str, Enum):
    cpu = "cpu"
    cuda = "cuda"


@dataclass(frozen=True)
class RunPlan:
    device: Device
    world_size: int
    nnodes: int
    gradient_accumulation: int
    weight_dtype: Dtype  # model.dtype: the weights as loaded
    autocast: Dtype | None  # mixed precision's dtype (trainer.precision bf16/fp16); None: fp32, no autocast
    compute_dtype: Dtype  # what the matmuls run in: the autocast's, else the weights'
    save_dtype: Dtype  # final/: model.save_dtype, else the compute dtype
    tf32: bool  # fp32 matmuls in tf32 (trainer.tf32 on CUDA)

    @property
    def on_cpu(self) -> bool:
        return self.device == Device.cpu

    @property
    def compute_precision(self) -> str:
        """The precision the matmuls round to: the compute dtype's name, or tf32."""
        if self.compute_dtype == Dtype.float32 and self.tf32:
            return "tf32"
        return self.compute_dtype.value


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def torch_dtype(dtype: Dtype | str) -> Any:
    import torch

    return getattr(torch, Dtype(dtype).value)


AUTOCAST = {Precision.bf16: Dtype.bfloat16, Precision.fp16: Dtype.float16}


def device(trainer: TrainerConfig, cuda: bool | None = None) -> Device:
    """CPU under `trainer.use_cpu=true` and whenever no CUDA device is visible (the Trainer falls
    back to it under use_cpu=false too), else CUDA; `cuda`: whether one is visible (None: ask torch)."""
    on_cuda = (cuda_available() if cuda is None else cuda) and not trainer.use_cpu
    return Device.cuda if on_cuda else Device.cpu


def compute_dtype(precision: Precision, weights: Dtype) -> Dtype:
    """What the matmuls run in: the autocast's under bf16/fp16 mixed precision, else the weights'."""
    return AUTOCAST.get(Precision(precision), Dtype(weights))


def make_plan(cfg: Config, cuda: bool | None = None) -> RunPlan:
    """The plan of a value-checked config (`validation.checked`); `cuda`: whether a CUDA device is
    visible (None: ask torch)."""
    t = cfg.trainer
    where = device(t, cuda)
    on_cuda = where == Device.cuda
    world_size, nnodes = layout(cfg)
    autocast = AUTOCAST.get(Precision(t.precision))
    compute = compute_dtype(t.precision, cfg.model.dtype)
    return RunPlan(
        device=where,
        world_size=world_size,
        nnodes=nnodes,
        gradient_accumulation=gradient_accumulation(t, world_size),
        weight_dtype=Dtype(cfg.model.dtype),
        autocast=autocast,
        compute_dtype=compute,
        save_dtype=Dtype(cfg.model.save_dtype) if cfg.model.save_dtype is not None else compute,
        tf32=bool(t.tf32) and on_cuda,
    )
