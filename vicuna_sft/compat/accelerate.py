"""accelerate: FSDP2 on CPU processes (gloo), and forgetting the process-wide state between jobs.

accelerate (1.15 and 1.16 alike) turns FSDP on only for GPU-like device types: on a CPU-only machine a Trainer
with `fsdp=True` gets a MULTI_CPU (DDP) accelerator and silently trains unsharded. After the
Trainer has created its accelerator, `enable()` switches that state to FSDP with the plugin the
Trainer would have used (mixed precision copied from the accelerator), in both AcceleratorState
and PartialState (patching only one crashes at save). From then on the stock Trainer/accelerate
FSDP2 code paths run: `fully_shard` over a gloo device mesh, sharded or full state dicts.

`fsdp=hybrid_shard` (HSDP) adds a `parallelism_config` (dp_replicate across nodes x dp_shard within
a node), which accelerate validates against the state when it creates the accelerator and refuses
for MULTI_CPU. On CPU it is therefore held back until the state is FSDP (`defer_parallelism`), then
attached with accelerate's own 2D device mesh and checks; `fully_shard` then gets that mesh.

Nothing happens on GPU machines, when FSDP was not asked for, or when accelerate already chose
FSDP. An accelerate version outside the tested range is refused, never silently downgraded.
"""

import logging
from typing import Any

from ..errors import UserError
from .transformers import checkpointing_enabled

log = logging.getLogger(__name__)

# the accelerate releases this adaptation was written and tested against, [min, max): 1.15 by CI's
# oldest-pins job, 1.16 by the lock (tests/unit/test_distributed_units.py, tests/integration/test_distributed.py)
TESTED = ((1, 15), (1, 17))


class UnsupportedAccelerate(UserError, RuntimeError):
    pass


def needed(trainer: Any) -> bool:
    """FSDP asked for on CPU processes, and accelerate did not turn it on itself."""
    from accelerate.utils import DistributedType

    state = trainer.accelerator.state
    return (
        trainer.args.fsdp_plugin_args is not None
        and state.device.type == "cpu"
        and state.distributed_type != DistributedType.FSDP
    )


def check_version(version: str) -> None:
    major_minor = tuple(int(x) for x in version.split(".")[:2])
    low, high = TESTED
    if not (low <= major_minor < high):
        raise UnsupportedAccelerate(
            f"FSDP on CPU relies on an adaptation tested with accelerate >={low[0]}.{low[1]},<{high[0]}.{high[1]}; "
            f"found {version}. Refusing rather than silently training unsharded: use fsdp=none (plain DDP) on CPU, "
            "or an accelerate version in that range"
        )


def defer_parallelism(trainer: Any) -> Any:
    """Before the accelerator exists: take a `parallelism_config` (HSDP's 2D mesh) out of the
    arguments on CPU, where accelerate would refuse it for the DDP state it picks; `enable` then
    attaches it once the state is FSDP. Returns what was taken (None: nothing to defer)."""
    pc = trainer.args.parallelism_config
    if pc is None or trainer.args.fsdp_plugin_args is None or trainer.args.device.type != "cpu":
        return None
    trainer.args.parallelism_config = None
    return pc


def enable(trainer: Any, parallelism: Any = None) -> bool:
    """Switch a CPU DDP accelerator to FSDP2 when `needed`, and attach a deferred
    `parallelism_config` (`defer_parallelism`); True when it switched."""
    if not needed(trainer):
        if parallelism is not None:  # accelerate chose FSDP itself: the mesh still goes on
            attach_parallelism(trainer, parallelism)
        return False
    import accelerate
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    check_version(accelerate.__version__)
    plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state = trainer.accelerator.state
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
    if parallelism is not None:
        attach_parallelism(trainer, parallelism)
    if plugin.activation_checkpointing and checkpointing_enabled(trainer.args):
        raise UserError(
            "FSDP activation checkpointing and the Trainer's activation_checkpointing are exclusive"
        )
    log.info("FSDP%d enabled on CPU over gloo (%d processes)", plugin.fsdp_version, state.num_processes)
    return True


def attach_parallelism(trainer: Any, parallelism: Any) -> None:
    """HSDP: shard over dp_shard, replicate over dp_replicate, with accelerate's own device mesh and
    its own checks (which now see the FSDP state)."""
    state = trainer.accelerator.state
    state.parallelism_config = parallelism
    state.device_mesh = parallelism.get_device_mesh(state.device.type)
    parallelism._validate_accelerator(trainer.accelerator)
    trainer.args.parallelism_config = parallelism


def reset_state() -> None:
    """Forget the process-wide accelerate state (a singleton shared by every Accelerator), so the
    next job of a sweep in this process starts as it would alone."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
