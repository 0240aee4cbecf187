"""The `optimizer` group beyond its name: what each choice needs to run here (refused at preflight,
before workers start or data is encoded), and how much state it keeps per trained parameter
(measured from the optimizer itself after the first step, and logged).

The optimizer is built by transformers' Trainer from `TrainingArguments.optim` (training/arguments.py);
the Trainer flow never branches on the choice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from ..config import Config, Optim
from ..errors import UserError
from ..plan import RunPlan

log = logging.getLogger(__name__)


class OptimizerUnavailable(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class Requirement:
    module: str | None = None  # importable module the optimizer lives in
    package: str | None = None  # what to pip install for it
    # bitsandbytes' paged optimizers allocate their state in CUDA unified memory; on CPU
    # bitsandbytes 0.50 silently falls back to unpaged state (a warning), which is not what was asked
    cuda: str | None = None  # why it needs CUDA, None: runs on CPU too


BNB = ("bitsandbytes", "'vicuna_sft[qlora]' (bitsandbytes)")
PAGED = "pages its state between GPU and CPU memory through CUDA unified memory"

REQUIREMENTS: dict[Optim, Requirement] = {
    Optim.adamw_torch: Requirement(),
    Optim.adamw_torch_fused: Requirement(),
    Optim.adamw_8bit: Requirement(*BNB),
    Optim.paged_adamw_8bit: Requirement(*BNB, cuda=PAGED),
    Optim.paged_adamw_32bit: Requirement(*BNB, cuda=PAGED),
    Optim.adafactor: Requirement(),
    Optim.lion_8bit: Requirement(*BNB),
}


def check(cfg: Config, plan: RunPlan) -> None:
    """The optimizer's refusals that depend on this machine (the run plan's device), each one line
    naming what it needs."""
    import importlib.util

    name = Optim(cfg.optimizer.name)
    need = REQUIREMENTS[name]
    if need.cuda and plan.on_cpu:
        runs_here = sorted(o.value for o, r in REQUIREMENTS.items() if not r.cuda)
        raise OptimizerUnavailable(
            f"optimizer.name={name.value} {need.cuda} and needs a CUDA device; this run is on CPU "
            f"(optimizers that run here: {', '.join(runs_here)})"
        )
    if need.module and importlib.util.find_spec(need.module) is None:
        raise OptimizerUnavailable(
            f"optimizer.name={name.value} needs the {need.module} package: pip install {need.package}"
        )


def reset_process_state() -> None:
    """Forget bitsandbytes' process-wide optimizer overrides. transformers registers each model's
    embeddings with bitsandbytes' GlobalOptimManager singleton for 32-bit state when it builds an
    8-bit optimizer; the manager keeps them (by parameter position too) for every later optimizer of
    the process, so the next job of a sweep would keep some other tensor's state in 32 bits."""
    import sys

    if "bitsandbytes" in sys.modules:  # never imported for it
        sys.modules["bitsandbytes"].optim.GlobalOptimManager.get_instance().initialize()


# ---- state size ----------------------------------------------------------------------------------


def _local(t: Any) -> Any:
    """A DTensor's local shard (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(optimizer: Any) -> int:
    """Bytes held by the optimizer's state tensors on this rank (a tensor shared by several
    parameters, such as bitsandbytes' quantization map, counted once)."""
    import torch

    seen: dict[int, int] = {}
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                t = _local(value)
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def trained_elements(optimizer: Any) -> int:
    """Elements of the parameters this optimizer updates, on this rank."""
    return sum(_local(p).numel() for group in optimizer.param_groups for p in group["params"])


def bytes_per_parameter(optimizer: Any) -> float:
    return state_bytes(optimizer) / max(trained_elements(optimizer), 1)


def _unwrap(optimizer: Any) -> Any:
    """accelerate's AcceleratedOptimizer wraps the torch one (`.optimizer`)."""
    return getattr(optimizer, "optimizer", optimizer)


class OptimizerStateLog(TrainerCallback):
    """Logs, after the first optimizer step of this process (state is allocated lazily at the first
    step), which optimizer runs and the state it keeps: `optimizer adamw_8bit: state 2.06 bytes per
    trained parameter (4.1 MB for 2.0M trained parameters)`. Kept as `bytes_per_parameter`."""

    def __init__(self, name: Optim) -> None:
        self.name = Optim(name)
        self.bytes_per_parameter: float | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        if self.bytes_per_parameter is not None or optimizer is None:
            return
        opt = _unwrap(optimizer)
        total, elements = state_bytes(opt), trained_elements(opt)
        self.bytes_per_parameter = total / max(elements, 1)
        if state.is_world_process_zero:
            from ..model.adapters import human

            log.info(
                "optimizer %s (%s): state %.2f bytes per trained parameter (%sB for %s trained parameters%s)",
                self.name.value,
                type(opt).__name__,
                self.bytes_per_parameter,
                human(total),
                human(elements),
                ", this rank's shard" if args.world_size > 1 else "",
            )
