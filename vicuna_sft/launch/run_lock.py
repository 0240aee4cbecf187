"""One run per run directory: an exclusive `fcntl` lock on `<dir>/run.lock`, held for the run.

The kernel drops the lock when its holder exits, however it exits (SIGKILL and crashes included),
so a lock left by a dead run is never in the way; the file itself stays and only says who held it
last. Taken by the process that decides for the run: rank 0 under torchrun or SLURM, the launching
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


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            pid, host = ([*holder, "?", "?"])[:2]
            raise RunDirectoryBusy(
                f"another run (pid {pid}, host {host}) is using {run_dir}; wait for it to end, or "
                "give this one another hydra.run.dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
