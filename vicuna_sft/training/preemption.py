"""Stop on SIGTERM / SIGINT / SIGUSR1 with a complete checkpoint, on every rank together.

SLURM (at the time limit, on preemption, and with `--signal=USR1@<s>` ahead of it) and Kubernetes
send SIGTERM before they kill; Ctrl-C is SIGINT. While the Trainer trains, the first of these
signals only sets a flag (`StopOnSignal`): at the end of the optimizer step in progress every rank
learns whether any rank got one (a 1-element all-reduce, MAX), and then all of them save a
checkpoint at that step (marked COMPLETE as any other), stop, and exit with `PREEMPTED_EXIT` (75).
Running the same command again resumes from that checkpoint. A second SIGINT exits at once.

Outside `trainer.train` (loading, encoding, the final save) the signals keep their usual effect.
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from transformers import TrainerCallback

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
INTERRUPTED_EXIT = 130  # the shell's code for a process ended by SIGINT


def _say(message: str) -> None:
    # os.write, not print: a handler may run while the main thread is inside a print to stderr
    os.write(sys.stderr.fileno(), f"{message}\n".encode())


class StopOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.received: str | None = None  # name of the first signal
        self.step = 0  # last finished optimizer step
        self.stopped_at: int | None = None  # the step every rank stopped (and saved) at
        self.stopped_by: str | None = None  # the signal, as seen by some rank

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.stopped_at is not None and self.received is None:
            self.received = name  # the stop is decided: this process is on its way out with exit 75
            return
        if self.received is not None:
            if signum == signal.SIGINT and self.received == "SIGINT":
                _say(
                    "vicuna_sft: second interrupt: exiting now (a checkpoint left half-written is set aside next time)"
                )
                os._exit(INTERRUPTED_EXIT)
            return  # e.g. SLURM's SIGTERM after its SIGUSR1 warning: already stopping
        self.received = name
        _say(
            f"vicuna_sft: {name} received during step {self.step + 1}: stopping after it with a complete "
            "checkpoint" + (" (Ctrl-C again to exit at once)" if signum == signal.SIGINT else "")
        )

    @contextlib.contextmanager
    def handling(self) -> Iterator[None]:
        """Install the handlers for the duration of training (Python allows it in the main thread
        only; elsewhere, e.g. a job run in a thread, the signals keep their effect)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        try:
            yield
        finally:
            # after a stop the handlers stay: the process exits with PREEMPTED_EXIT, and a SIGTERM
            # from a launcher that saw another rank exit first must not turn that into -15
            if self.stopped_at is None:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    def on_step_end(self, args, state, control, **kwargs):
        import torch
        import torch.distributed as dist

        self.step = state.global_step
        signum = int(signal.Signals[self.received]) if self.received else 0
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # every rank must stop at the same step: one tiny collective per optimizer step (a
            # host sync on GPU, negligible next to a step); the largest signal number wins
            flag = torch.tensor([signum], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if signum and state.global_step < state.max_steps:  # at max_steps the run ends normally anyway
            self.stopped_at, self.stopped_by = state.global_step, signal.Signals(signum).name
            control.should_save = True
            control.should_training_stop = True
        return control
