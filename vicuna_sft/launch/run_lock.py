"""One run per run directory: an exclusive `fcntl` lock on `<dir>/run.lock`, held for the run.

The kernel drops the lock when its holder exits, however it exits (SIGKILL and crashes included),
so a lock left by a dead run is never in the way: a file left behind by a killed run is harmless
and only says who held it last. A run that ends (normally, by an error or a preemption) removes
the file while still holding the lock, so a run directory holds `run.lock` only while a run uses it.
Taken by the process that decides for the run: rank 0 under torchrun or SLURM, the launching
process for `distributed.nproc_per_node=N` (its workers run inside its lock). On a network file
system the lock is as good as its `fcntl` support (NFSv4: yes; some others: no lock at all).
"""

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


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    fd = _acquire(path, run_dir)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        # removed before the lock is released: a run that opened it meanwhile finds, once it has
        # the lock, that the file is gone and retries on a new one (see _acquire)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)  # releases the lock
