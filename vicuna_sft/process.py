"""Who this process is: its rank and the launch layout, read from the environment that torchrun,
our elastic launch and SLURM tasks set, or planned from the config before any worker starts.

The lowest layer besides config: every other module asks here, so that the node count, for one,
cannot be derived in two ways that disagree.
"""

import os
import tempfile
from typing import Any

from .errors import UserError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_worker() -> bool:
    """Ranks come from the environment (torchrun, our launcher, SLURM tasks)."""
    return "LOCAL_RANK" in os.environ and "RANK" in os.environ


def launcher_store(timeout_s: float = 300.0) -> Any:
    """The key-value store the launcher hosts for its workers (torchrun, elastic_launch, launch/slurm.py; the
    ranks agree through it before their process group exists: launch/agreement.py, training/checkpoint.py),
    or None when this process was not started by one."""
    if world_size() < 2 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true":
        return None
    from datetime import timedelta

    from torch.distributed import TCPStore

    return TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
    )


def _store_prefix() -> str:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    return f"vicuna_sft/{run_id}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def exchange(name: str, value: str, store: Any = None) -> list[str]:
    """Every rank's `value` (rank order), through the launcher's store; [value] when alone."""
    store = store or launcher_store()
    if store is None:
        return [value]
    key = f"{_store_prefix()}/{name}"
    store.set(f"{key}/{rank()}", value)
    return [store.get(f"{key}/{r}").decode() for r in range(world_size())]


def layout(cfg: Any) -> tuple[int, int]:
    """(world size, number of nodes) this run trains with.

    In a worker the launcher decided: WORLD_SIZE, and nodes = WORLD_SIZE // LOCAL_WORLD_SIZE.
    Before launching, the config's request: nproc_per_node x nnodes on nnodes."""
    if is_worker():
        world = world_size()
        local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        return world, max(1, world // max(local, 1))
    d = cfg.distributed
    return d.nproc_per_node * d.nnodes, d.nnodes


def check_writable_dir(path: str) -> None:
    """Create `path` if needed and write (then remove) a file in it, so that an output directory
    that cannot be written stops the run at once, not at its first save."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write the output directory {path}: {e.strerror or e}") from None
