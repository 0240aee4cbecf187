"""Hydra callbacks (conf/config.yaml) for runs under an external launcher such as torchrun."""

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from ..errors import UserError
from ..process import check_writable_dir, is_worker, rank, world_size
from .agreement import exchange
from .entry import LaunchError
from .run_lock import RunDirectoryBusy, hold, release


class RankAwareHydra(Callback):
    """Under torchrun every rank runs Hydra: one run directory (rank 0's), one `.hydra/`.

    It also takes the run directory's lock (launch/run_lock.py) for the process that decides for
    the run: Hydra calls on_run_start before run_job writes `.hydra/` (config.yaml, hydra.yaml,
    overrides.yaml) and the log file, so a second run refused here has written nothing into the
    directory of the live one. A sweep's directory is locked the same way in on_multirun_start.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        node = OmegaConf.select(config, "distributed.node_rank", default=0)
        if not is_worker() and node:  # the launcher of another node of a multi-node self-launch
            self._quiet(config, str(config.hydra.run.dir), f"node{node}")
        if world_size() < 2:
            _writable_or_exit(config, "run")
            if not node:
                _lock_or_exit(config, "run")
            return
        # rank 0 resolves the run dir (a `${now:}` in it included) once; the others take its value
        run_dir = exchange("run_dir", str(config.hydra.run.dir) if rank() == 0 else "")[0]
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = run_dir
        if rank() == 0:
            _writable_or_exit(config, "run")
            _lock_or_exit(config, "run")
        if rank() > 0:
            self._quiet(config, run_dir, f"rank{rank()}")

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(str(config.hydra.run.dir))  # a no-op where this process took no lock

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
        _writable_or_exit(config, "sweep")
        _lock_or_exit(config, "sweep")  # two sweeps into one hydra.sweep.dir would mix their jobs

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        release(str(config.hydra.sweep.dir))


def _writable_or_exit(config: DictConfig, mode: str) -> None:
    """Hydra creates hydra.run.dir / hydra.sweep.dir itself, before the app runs: check it first
    (resolved once and pinned, so that a `${now:}` in it names one directory) and stop with one
    line instead of Hydra's traceback."""
    path = str(config.hydra[mode].dir)
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra[mode].dir = path
    try:
        check_writable_dir(path)
    except UserError as e:
        print(f"vicuna_sft: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)


def _lock_or_exit(config: DictConfig, mode: str) -> None:
    """Hold the run (or sweep) directory's lock from here, before Hydra writes into it, to the end
    of the run (on_run_end, or this process's exit); a directory in use stops with one line."""
    try:
        hold(str(config.hydra[mode].dir))
    except RunDirectoryBusy as e:
        print(f"vicuna_sft: error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
