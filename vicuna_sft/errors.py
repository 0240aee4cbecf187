"""Errors meant for the user as they are: the entry point prints them without a traceback."""


class UserError(Exception):
    """Bad input (config, data, model path): the message says what and where."""


# sysexits.h EX_TEMPFAIL ("temporary failure, the user is invited to retry"): a run stopped by
# SIGTERM / SIGINT / SIGUSR1 after writing a complete checkpoint; rerunning the command resumes it
PREEMPTED_EXIT = 75


class Preempted(Exception):
    """The run stopped on a signal after saving a complete checkpoint (see training/preemption.py)."""

    def __init__(self, message: str):
        super().__init__(message)


class Diverged(UserError):
    """Training went non-finite (training/divergence.py): the run stopped, its result says so."""
