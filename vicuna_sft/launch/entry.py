"""The entry of a training run: run here, or launch the workers that run.

Three ways to get N ranks, one code path once they run (`run.run`):
- `torchrun --nproc_per_node=N -m vicuna_sft ...`: every rank composes the config with Hydra.
  `RankAwareHydra` (a Hydra callback in conf/config.yaml) makes them agree on the run directory
  (rank 0's, published through torchrun's store, so a `${now:}` in `hydra.run.dir` is resolved
  once) and keeps ranks > 0 from writing `.hydra/` (they log to `<job>_rank<R>.log`).
- `python -m vicuna_sft distributed.nproc_per_node=N ...`: Hydra runs once, in this process,
  which decides the run directory and then starts the workers through torch's elastic launcher
  (`launch`); the workers (`python -m vicuna_sft.launch.worker`) read the resolved config and never run
  Hydra. Multirun sweeps therefore work: one elastic launch per job, one summary at the root.
- SLURM through hydra-submitit-launcher: see launch/slurm.py.

Every worker dies with its launcher (`PR_SET_PDEATHSIG`), and `agreement.enter_worker` compares a
hash of the resolved config across ranks before anything heavy happens.
"""

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..config import Config, FsdpStrategy, RdzvBackend, as_dict
from ..errors import PREEMPTED_EXIT, Diverged, Preempted, UserError
from ..files import replacing
from ..plan import RunPlan, make_plan
from ..process import check_writable_dir, is_worker, rank, world_size
from ..validation import checked
from .agreement import LAUNCHER_PID, enter_worker

log = logging.getLogger("vicuna_sft")

WORKER_CONFIG = "worker_config.yaml"  # the resolved config the workers of a self-launch read
WORKER_MODULE = "vicuna_sft.launch.worker"


class LaunchError(UserError, RuntimeError):
    pass


def requested_processes(cfg: Config) -> int:
    return cfg.distributed.nproc_per_node * cfg.distributed.nnodes


def needs_process_group(cfg: Config) -> bool:
    """Several ranks, or FSDP on one: the Trainer only runs FSDP under torch.distributed."""
    sharded = FsdpStrategy(cfg.fsdp.strategy) != FsdpStrategy.none
    return requested_processes(cfg) > 1 or sharded


def check_layout(cfg: Config) -> None:
    """Under an external launcher, the config's layout (if set) must match the environment's."""
    d = cfg.distributed
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
    cfg = checked(dcfg)  # bad values fail here, before torch is even imported
    check_layout(cfg)
    plan = make_plan(cfg)  # the launch layout as this process sees it (a worker: the launcher's)
    preflight(cfg, plan)
    from .run_lock import run_lock

    # one run per directory: the process that decides for the run holds the lock (rank 0, or the
    # launcher of node 0 for a self-launch, whose workers run inside it)
    decides = rank() == 0 and cfg.distributed.node_rank == 0
    with run_lock(cfg.trainer.output_dir) if decides else contextlib.nullcontext():
        if needs_process_group(cfg) and not is_worker():
            return launch(cfg)
        return run_worker(cfg, plan)


def run_worker(cfg: Config, plan: RunPlan | None = None) -> dict[str, Any]:
    """This process is one rank (or the only process): agree with the other ranks, then run."""
    from ..run import run

    enter_worker(cfg)
    return run(cfg, plan)


def preflight(cfg: Config, plan: RunPlan) -> None:
    """Refuse what cannot run here before workers start, data is encoded or weights load."""
    from ..data.sources import check_files
    from ..model.loading import check_adapter, check_attention, check_loss, check_tokenizer_files
    from ..training import optimizers
    from ..training.arguments import check_fsdp

    check_files(cfg.data)  # a missing file would otherwise be found by a worker, after its start-up
    check_tokenizer_files(cfg.model)
    check_attention(cfg)
    check_loss(cfg)
    check_adapter(cfg, plan)
    optimizers.check(cfg, plan)
    check_fsdp(cfg, plan)
    check_writable_dir(cfg.trainer.output_dir)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: Config) -> dict[str, Any]:
    """Start nproc_per_node workers on this node through torch's elastic launcher and wait."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from ..training.result import DIVERGED, RESULT_FILE

    d = cfg.distributed
    if d.nnodes > 1 and not d.rdzv_endpoint:
        raise LaunchError("distributed.nnodes > 1 needs distributed.rdzv_endpoint=<host of node 0>:<port>")
    out = os.path.abspath(cfg.trainer.output_dir)
    os.makedirs(out, exist_ok=True)
    body = as_dict(cfg)
    body["trainer"]["output_dir"] = out
    name = WORKER_CONFIG if d.node_rank == 0 else WORKER_CONFIG.replace(".yaml", f".node{d.node_rank}.yaml")
    path = os.path.join(out, name)
    with replacing(path) as tmp:
        OmegaConf.save(OmegaConf.create(body), tmp)
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
        # SIGTERM/SIGINT/SIGUSR1 are passed on by forward_signals (torch's agent would kill the
        # workers 30 s after them, possibly in the middle of their last checkpoint)
        signals_to_handle="SIGHUP,SIGQUIT",
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
    os.environ[LAUNCHER_PID] = str(os.getpid())  # inherited by the workers, see agreement.die_with_parent
    received: list[str] = []
    try:
        with forward_signals(received):
            elastic_launch(config, sys.executable)("-u", "-m", WORKER_MODULE, path)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        reported = read_result(result_file)  # rank 0's account of how the run ended, if it wrote one
        # A rank exits 75 only once the stop's checkpoint is complete on every rank; the agent then
        # sends its closing SIGTERM to ranks still exiting, which may die of it: still a clean stop.
        closing = (-signal.SIGTERM, -signal.SIGKILL)
        if PREEMPTED_EXIT in codes and all(c == PREEMPTED_EXIT or c in closing for c in codes):
            from ..training.checkpoint import latest_complete, step_of

            latest = latest_complete(out)
            raise Preempted(
                f"stopped by {stop_signal(received, reported)} at step {step_of(latest) if latest else 0}: "
                f"{latest} is complete; run the same command to resume (exit code {PREEMPTED_EXIT})"
            ) from None
        if reported.get("status") == DIVERGED:
            raise Diverged(reported["error"]) from None
        failures = ", ".join(f"rank {r} exit code {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise LaunchError(f"distributed run failed ({failures}); the workers' messages are above") from None
    return read_result(result_file)


def read_result(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def stop_signal(received: list[str], reported: dict[str, Any]) -> str:
    """The signal that stopped the workers: the one this launcher passed on, else the one the
    workers got directly (SLURM signals every task, `kill` reaches one rank), which rank 0 records
    in result.json (run.run), else - a rank 0 that died before writing it - unknown."""
    if received:
        return received[0]
    return reported.get("stopped_by") or "an unknown signal (rank 0 wrote no result.json)"


@contextlib.contextmanager
def forward_signals(received: list[str]) -> Iterator[None]:
    """While the workers run: SIGTERM / SIGINT / SIGUSR1 sent to this launcher (Kubernetes signals
    the container's first process, Ctrl-C reaches the terminal's process group, and the workers
    are in sessions of their own) are passed on to the workers once; they finish their step, save
    and exit with PREEMPTED_EXIT (training/preemption.py). A second SIGINT exits at once (the
    workers die with this process)."""
    import psutil

    from ..training.preemption import INTERRUPTED_EXIT, SIGNALS

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if received:
            if name == "SIGINT" == received[0]:
                os.write(2, b"vicuna_sft: second interrupt: exiting now\n")
                os._exit(INTERRUPTED_EXIT)
            return
        workers = [p for p in psutil.Process().children() if WORKER_MODULE in p.cmdline()]
        if not workers:
            os.write(2, f"vicuna_sft: {name} received before the workers started: exiting\n".encode())
            os._exit(128 + signum)
        received.append(name)
        os.write(2, f"vicuna_sft: {name} received: passing it on to the workers\n".encode())
        for p in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)

    handled = "TORCHELASTIC_SIGNALS_TO_HANDLE"  # torch's launch_agent sets it from the LaunchConfig
    saved_env = os.environ.get(handled)
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        if saved_env is None:
            os.environ.pop(handled, None)
        else:
            os.environ[handled] = saved_env
