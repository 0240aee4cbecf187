"""Processes: who launches the workers, where they write, and that they all run the same config.

Three ways to get N ranks, one code path once they run (`run.run`):
- `torchrun --nproc_per_node=N -m vicuna_sft ...`: every rank composes the config with Hydra.
  `RankAwareHydra` (a Hydra callback in conf/config.yaml) makes them agree on the run directory
  (rank 0's, published through torchrun's store, so a `${now:}` in `hydra.run.dir` is resolved
  once) and keeps ranks > 0 from writing `.hydra/` (they log to `<job>_rank<R>.log`).
- `python -m vicuna_sft distributed.nproc_per_node=N ...`: Hydra runs once, in this process,
  which decides the run directory and then starts the workers through torch's elastic launcher
  (`launch`); the workers (`python -m vicuna_sft.worker`) read the resolved config and never run
  Hydra. Multirun sweeps therefore work: one elastic launch per job, one summary at the root.
- SLURM through hydra-submitit-launcher: see vicuna_sft/slurm.py.

Every worker dies with its launcher (`PR_SET_PDEATHSIG`), and `enter_worker` compares a hash of
the resolved config across ranks before anything heavy happens.
"""

import hashlib
import json
import logging
import os
import socket
import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from .arguments import validate
from .config import Config, FsdpStrategy, RdzvBackend, to_config
from .errors import UserError

log = logging.getLogger("vicuna_sft")

WORKER_CONFIG = "worker_config.yaml"  # the resolved config the workers of a self-launch read
_LAUNCHER_PID = "VICUNA_SFT_LAUNCHER_PID"


class LaunchError(UserError, RuntimeError):
    pass


class ConfigMismatch(UserError, RuntimeError):
    pass


# ---- where this process stands -------------------------------------------------------------------


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_worker() -> bool:
    """Ranks come from the environment (torchrun, our launcher, SLURM tasks)."""
    return "LOCAL_RANK" in os.environ and "RANK" in os.environ


def requested_processes(cfg: Config) -> int:
    return cfg.distributed.nproc_per_node * cfg.distributed.nnodes


def needs_process_group(cfg: Config) -> bool:
    """Several ranks, or FSDP on one: the Trainer only runs FSDP under torch.distributed."""
    sharded = FsdpStrategy(cfg.fsdp.strategy) not in (FsdpStrategy.none, FsdpStrategy.ddp)
    return requested_processes(cfg) > 1 or sharded


def check_layout(cfg: Config) -> None:
    """Under an external launcher, the config's layout (if set) must match the environment's."""
    d = cfg.distributed
    if d.nproc_per_node < 1 or d.nnodes < 1:
        raise LaunchError(
            f"distributed.nproc_per_node and nnodes must be >= 1, got {d.nproc_per_node}, {d.nnodes}"
        )
    if not is_worker() or requested_processes(cfg) == 1:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", d.nproc_per_node))
    if (d.nproc_per_node, requested_processes(cfg)) != (local, world_size()):
        raise LaunchError(
            f"config asks for distributed.nproc_per_node={d.nproc_per_node} x nnodes={d.nnodes}, but the launcher "
            f"started {local} per node, world size {world_size()}; drop the distributed.* overrides under torchrun"
        )


# ---- entry: run here, or launch workers that run ---------------------------------------------------


def entry(dcfg: DictConfig) -> dict[str, Any]:
    """What `python -m vicuna_sft` does with a composed config."""
    cfg = to_config(dcfg)
    validate(cfg)  # bad values fail here, before torch is even imported
    check_layout(cfg)
    preflight(cfg)
    if needs_process_group(cfg) and not is_worker():
        return launch(dcfg, cfg)
    from .run import run

    return run(dcfg)


def preflight(cfg: Config) -> None:
    """Refuse what cannot run here before workers start, data is encoded or weights load."""
    from .arguments import check_fsdp
    from .model import check_attention

    check_attention(cfg)
    check_fsdp(cfg, requested_processes(cfg) if not is_worker() else world_size(), cfg.distributed.nnodes)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolved_body(dcfg: DictConfig) -> dict[str, Any]:
    """The config as plain values (interpolations resolved here, once), without `hydra`."""
    return {k: v for k, v in OmegaConf.to_container(dcfg, resolve=True).items() if k != "hydra"}


def launch(dcfg: DictConfig, cfg: Config) -> dict[str, Any]:
    """Start nproc_per_node workers on this node through torch's elastic launcher and wait."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from .summary import RESULT_FILE

    d = cfg.distributed
    if d.nnodes > 1 and not d.rdzv_endpoint:
        raise LaunchError("distributed.nnodes > 1 needs distributed.rdzv_endpoint=<host of node 0>:<port>")
    out = os.path.abspath(cfg.trainer.output_dir)
    os.makedirs(out, exist_ok=True)
    body = resolved_body(dcfg)
    body["trainer"]["output_dir"] = out
    name = WORKER_CONFIG if d.node_rank == 0 else WORKER_CONFIG.replace(".yaml", f".node{d.node_rank}.yaml")
    path = os.path.join(out, name)
    tmp = f"{path}.{os.getpid()}.tmp"
    OmegaConf.save(OmegaConf.create(body), tmp)
    os.replace(tmp, path)
    result_file = os.path.join(out, RESULT_FILE)
    if d.node_rank == 0 and os.path.exists(result_file):
        os.remove(result_file)  # the result of an earlier run of this directory is not this one's

    endpoint = d.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    run_id = d.rdzv_id or "vicuna_sft-" + hashlib.sha1(out.encode()).hexdigest()[:12]
    rdzv_configs: dict[str, Any] = {"timeout": 900}
    if d.rdzv_backend == RdzvBackend.static:
        rdzv_configs["rank"] = d.node_rank
    config = LaunchConfig(
        min_nodes=d.nnodes,
        max_nodes=d.nnodes,
        nproc_per_node=d.nproc_per_node,
        run_id=run_id,
        rdzv_backend=d.rdzv_backend.value,
        rdzv_endpoint=endpoint,
        rdzv_configs=rdzv_configs,
        max_restarts=d.max_restarts,
        monitor_interval=d.monitor_interval,
    )
    log.info(
        "launching %d worker(s) on this node (node %s of %d, rendezvous %s %s, run id %s), output %s",
        d.nproc_per_node,
        d.node_rank if d.rdzv_backend == RdzvBackend.static else "auto",
        d.nnodes,
        d.rdzv_backend.value,
        endpoint,
        run_id,
        out,
    )
    os.environ[_LAUNCHER_PID] = str(os.getpid())  # inherited by the workers, see die_with_parent
    try:
        elastic_launch(config, sys.executable)("-u", "-m", "vicuna_sft.worker", path)
    except ChildFailedError as e:
        failures = ", ".join(f"rank {r} exit code {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise LaunchError(f"distributed run failed ({failures}); the workers' messages are above") from None
    result: dict[str, Any] = {}
    if os.path.isfile(result_file):
        with open(result_file) as f:
            result = json.load(f)
    return result


# ---- inside a worker -----------------------------------------------------------------------------


def die_with_parent() -> None:
    """A worker must not outlive its launcher (torchrun or ours), even one killed with SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    expected = os.environ.get(_LAUNCHER_PID)
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


def launcher_store(timeout_s: float = 300.0) -> Any:
    """The key-value store the launcher hosts for its workers (torchrun, elastic_launch, slurm.py),
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


def enter_worker(dcfg: DictConfig) -> str:
    """Tie this process to its launcher; stop unless every rank resolved the same config.
    Returns this rank's config hash (logged)."""
    body = resolved_body(dcfg)
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


# ---- Hydra under an external launcher (torchrun) -------------------------------------------------


class RankAwareHydra(Callback):
    """Under torchrun every rank runs Hydra: one run directory (rank 0's), one `.hydra/`."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        node = OmegaConf.select(config, "distributed.node_rank", default=0)
        if not is_worker() and node:  # the launcher of another node of a multi-node self-launch
            self._quiet(config, str(config.hydra.run.dir), f"node{node}")
        if world_size() < 2:
            return
        # rank 0 resolves the run dir (a `${now:}` in it included) once; the others take its value
        run_dir = exchange("run_dir", str(config.hydra.run.dir) if rank() == 0 else "")[0]
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = run_dir
        if rank() > 0:
            self._quiet(config, run_dir, f"rank{rank()}")

    @staticmethod
    def _quiet(config: DictConfig, run_dir: str, who: str) -> None:
        """No `.hydra/` from this process, and its own log file."""
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.output_subdir = None
            handlers = OmegaConf.select(config, "hydra.job_logging.handlers") or {}
            if "file" in handlers:
                config.hydra.job_logging.handlers.file.filename = (
                    f"{run_dir}/{config.hydra.job.name}_{who}.log"
                )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if world_size() > 1 or is_worker():
            raise LaunchError(
                "a Hydra sweep (-m) under torchrun would run every job in every rank; sweep with "
                "`python -m vicuna_sft -m distributed.nproc_per_node=N ...` instead (one launch per job)"
            )
