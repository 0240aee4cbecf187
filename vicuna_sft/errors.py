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


def to_log_files(message: str, level: int = 20) -> None:
    """`message` into the run's log files only (the FileHandlers of the root logger: Hydra's
    `<run dir>/vicuna_sft.log`, `vicuna_sft_rank<R>.log` on ranks > 0): what this process printed
    on the console itself (a loss line, the result, an error, the stop reason) is then in the log
    of a cluster job too, without printing it twice. Level 20 = logging.INFO."""
    import logging

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        return
    record = logging.getLogger("vicuna_sft").makeRecord("vicuna_sft", level, __file__, 0, message, None, None)
    for handler in handlers:
        if record.levelno >= handler.level:
            handler.handle(record)
