"""`python -m vicuna_sft [group=option ...] [key=value ...]`: compose the config, then train
(launch.entry: check it once, run here or launch the workers that run)."""

import os
import re
import sys
import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_configs
from .errors import PREEMPTED_EXIT, Preempted, UserError, to_log_files
from .launch.sweep import ERROR_FILE, register_sweeper

register_configs()
register_sweeper()  # hydra/sweeper=optuna (launch/sweep.py)


@hydra.main(version_base="1.3", config_path="pkg://vicuna_sft.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> float | dict | None:
    # heavy imports only once a job really runs (not for --help / --cfg)
    from .launch.entry import entry  # run(cfg) here, or launch distributed.nproc_per_node workers
    from .training.result import objective

    try:
        # the number a searching sweeper (hydra/sweeper=optuna) minimizes; other sweepers ignore it
        return objective(entry(cfg))
    except Preempted as e:  # a signal stopped the run after a complete checkpoint
        from .process import rank

        if rank() == 0:
            print(f"vicuna_sft: {e}", file=sys.stderr, flush=True)
        to_log_files(f"vicuna_sft: {e}", 30)
        sys.exit(PREEMPTED_EXIT)
    except KeyboardInterrupt:  # Ctrl-C before or after training (during it: training/preemption.py)
        print("vicuna_sft: interrupted", file=sys.stderr, flush=True)
        to_log_files("vicuna_sft: interrupted", 30)
        sys.exit(130)
    except UserError as e:
        print(f"vicuna_sft: error: {e}", file=sys.stderr)
        to_log_files(f"vicuna_sft: error: {e}", 40)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the other jobs of the sweep still run; the summary marks this one failed, and Optuna
            # a FAILED trial (not a number; launch/sweep.py)
            return job_failed(str(e))
        sys.exit(1)
    except Exception as e:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise  # a bug, not bad input: the traceback is what helps
        # in a sweep any failure is one job's: recorded in its directory, marked in the summary
        first_line = (str(e).strip().splitlines() or [""])[0]
        message = f"{type(e).__name__}: {first_line}" if first_line else type(e).__name__
        print(f"vicuna_sft: error: {message} (traceback in the job's {ERROR_FILE})", file=sys.stderr)
        return job_failed(message, traceback.format_exc())


def job_failed(message: str, details: str = "") -> dict:
    """A sweep job's failure, written to `<job dir>/error.txt` for the sweep summary."""
    from .process import rank

    if rank() == 0:
        with open(os.path.join(HydraConfig.get().runtime.output_dir, ERROR_FILE), "w") as f:
            f.write(message + "\n" + (f"\n{details}" if details else ""))
    return {"error": message}


SHELL_COMPLETION = ("--shell-completion", "-sc")
COMPLETION_COMMANDS = ("install=", "uninstall=", "query=")


def main() -> None:
    """Console script `vicuna-sft` and `python -m vicuna_sft`."""
    if any(a in SHELL_COMPLETION for a in sys.argv[1:]) and not any(
        a.startswith(COMPLETION_COMMANDS) for a in sys.argv[1:]
    ):
        # Hydra raises a bare ValueError (a traceback) when the subcommand is missing
        print(
            "vicuna_sft: error: --shell-completion needs one of install=SHELL, uninstall=SHELL or query=SHELL "
            '(SHELL: bash, zsh, fish), e.g. eval "$(vicuna-sft --shell-completion install=bash)"; '
            "completion completes the vicuna-sft command (the .venv's console script), not python -m",
            file=sys.stderr,
        )
        sys.exit(2)
    if "--resolve" in sys.argv and any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in sys.argv):
        print_resolved_config()
    else:
        _hydra_main()


def print_resolved_config() -> None:
    """`--cfg job|hydra|all --resolve`: Hydra prints it; a value that cannot be resolved outside a
    run (trainer.output_dir is `${hydra:runtime.output_dir}`) gives one line, not Hydra's traceback
    (HYDRA_FULL_ERROR makes Hydra let the error through to here instead of printing it)."""
    from omegaconf.errors import OmegaConfBaseException

    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _hydra_main()
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "a value"
        reason = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
        runtime = re.search(r"\$\{hydra:[^}]*\}", reason)
        if runtime:
            reason = (
                f"{key} is {runtime.group(0)}, which Hydra sets only when a job starts; print without "
                f"--resolve, or set {key}=..."
            )
        args = sys.argv[1:]
        kind = next((args[i + 1] for i, a in enumerate(args[:-1]) if a in ("--cfg", "-c")), "")
        kind = kind or next((a.split("=", 1)[1] for a in args if a.startswith("--cfg=")), "")
        what = f"--cfg {kind}" if kind else "--cfg"
        if kind == "hydra":
            # Hydra's own settings: the run directory is named from the job's config, which
            # `--cfg hydra` leaves out, and hydra.runtime / hydra.job are only set once a job starts
            print(
                "vicuna_sft: error: --cfg hydra --resolve: Hydra's settings resolve only inside a run "
                "(hydra.run.dir is named from the job's model, data and adapter, which --cfg hydra leaves out; "
                "hydra.runtime.* is set when a job starts); print --cfg hydra without --resolve, or read a "
                "run's .hydra/hydra.yaml",
                file=sys.stderr,
            )
            sys.exit(1)
        print(
            f"vicuna_sft: error: {what} --resolve: cannot resolve {key} outside a run: {reason}",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
