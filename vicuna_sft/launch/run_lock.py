"""One run per run directory: an exclusive `fcntl` lock on `<dir>/run.lock`, held for the run.

The kernel drops the lock when its holder exits, however it exits (SIGKILL and crashes included),
so a lock left by a dead run is never in the way: a file left behind by a killed run is harmless
and only says who held it last. A run that ends (normally, by an error or a preemption) removes
the file while still holding the lock, so a run directory holds `run.lock` only while a run uses it.
Taken by the process that decides for the run: rank 0 under torchrun or SLURM, the launching
process for `distributed.nproc_per_node=N` (its workers run inside its lock). On a network file
system the lock is as good as its `fcntl` support (NFSv4: yes; some others: no lock at all).

Under the CLI the lock is taken by a Hydra callback (launch/hydra_callbacks.py) before Hydra writes
`.hydra/` into the directory, so a refused run leaves the live run's record as it was; `run_lock`
inside the run then finds it held by this process and takes nothing more.
"""

import atexit
import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator

from ..errors import UserError

LOCK_FILE = "run.lock"


class RunDirectoryBusy(UserError, RuntimeError):
    pass


def _acquire(path: str, run_dir: str) -> int:
    """An fd holding the lock on the file that is at `path` now."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            pid, host = ([*holder, "?", "?"])[:2]
            raise RunDirectoryBusy(
                f"another run (pid {pid}, host {host}) is using {run_dir}; wait for it to end, or "
                "give this one another hydra.run.dir"
            ) from None
        # The run we opened the file behind may have ended and removed it before we locked it: our
        # lock is then on a file nobody else can open, and a third run may already hold a new one.
        # Only a lock on the file still at `path` counts; otherwise try again on the current file.
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)


# the run directories whose lock this process holds: their real path -> (lock file, its fd)
_held: dict[str, tuple[str, int]] = {}


def hold(run_dir: str) -> None:
    """Take `run_dir`'s lock until `release(run_dir)` or, at the latest, until this process exits
    (a `sys.exit` on the way out included: the file is removed then, as at a run's end)."""
    key = os.path.realpath(run_dir)
    if key in _held:
        return
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    fd = _acquire(path, run_dir)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    if not _held:
        atexit.register(_release_all)
    _held[key] = (path, fd)


def release(run_dir: str) -> None:
    held = _held.pop(os.path.realpath(run_dir), None)
    if held is None:
        return
    path, fd = held
    # removed before the lock is released: a run that opened it meanwhile finds, once it has
    # the lock, that the file is gone and retries on a new one (see _acquire)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    os.close(fd)  # releases the lock


def _release_all() -> None:
    for key in list(_held):
        release(key)


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block, unless this process holds it already (then whoever
    took it releases it)."""
    if os.path.realpath(run_dir) in _held:
        yield
        return
    hold(run_dir)
    try:
        yield
    finally:
        release(run_dir)
