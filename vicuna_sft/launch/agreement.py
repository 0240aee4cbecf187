"""What the ranks of one run share: who they are, their launcher, and the same resolved config.

Used by every worker (torchrun, our elastic launch, SLURM tasks) before it runs: `enter_worker` ties the
process to its launcher (it must not outlive it) and compares a hash of the resolved config across
ranks through the launcher's key-value store before anything heavy happens.
"""

import hashlib
import json
import logging
import os
import sys
from typing import Any

from ..config import Config, as_dict
from ..errors import UserError
from ..process import exchange, launcher_store, rank, world_size  # noqa: F401  (exchange, launcher_store: used here and re-exported)

log = logging.getLogger("vicuna_sft")

LAUNCHER_PID = "VICUNA_SFT_LAUNCHER_PID"  # set by launch.entry.launch, inherited by its workers


class ConfigMismatch(UserError, RuntimeError):
    pass


def die_with_parent() -> None:
    """A worker must not outlive its launcher (torchrun or ours), even one killed with SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    expected = os.environ.get(LAUNCHER_PID)
    if os.getppid() == 1 or (expected and os.getppid() != int(expected) and _parent_is_gone(int(expected))):
        os._exit(1)  # the launcher died before prctl took effect


def _parent_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        return True
    except PermissionError:
        return False


def config_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def enter_worker(cfg: Config) -> str:
    """Tie this process to its launcher; stop unless every rank resolved the same config.
    Returns this rank's config hash (logged)."""
    body = as_dict(cfg)
    body.get("distributed", {}).pop("node_rank", None)  # the one field that differs between nodes
    digest = config_hash(body)
    if world_size() < 2:
        return digest
    die_with_parent()
    log.info("rank %d/%d config sha256 %s", rank(), world_size(), digest)
    bodies = exchange("config", json.dumps(body, sort_keys=True, default=str))
    digests = [config_hash(json.loads(b)) for b in bodies]
    if len(set(digests)) > 1:
        mine = _flat(json.loads(bodies[0]))
        lines = []
        for r, b in enumerate(bodies[1:], start=1):
            other = _flat(json.loads(b))
            for k in sorted(set(mine) | set(other)):
                if mine.get(k) != other.get(k):
                    lines.append(f"{k}: rank 0 has {mine.get(k)!r}, rank {r} has {other.get(k)!r}")
        raise ConfigMismatch(
            "the ranks resolved different configs (sha256 "
            + ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests))
            + "):\n  "
            + "\n  ".join(lines)
        )
    return digest
