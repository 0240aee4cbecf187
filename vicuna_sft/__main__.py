"""`python -m vicuna_sft [group=option ...] [key=value ...]`: compose the config, then train
(launch.entry: check it once, run here or launch the workers that run)."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_configs
from .errors import PREEMPTED_EXIT, Preempted, UserError
from .launch.sweep import register_sweeper

register_configs()
register_sweeper()  # hydra/sweeper=optuna (launch/sweep.py)


@hydra.main(version_base="1.3", config_path="pkg://vicuna_sft.conf", config_name="config")
def main(cfg: DictConfig) -> float | dict | None:
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
        sys.exit(PREEMPTED_EXIT)
    except KeyboardInterrupt:  # Ctrl-C before or after training (during it: training/preemption.py)
        print("vicuna_sft: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except UserError as e:
        print(f"vicuna_sft: error: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the other jobs of the sweep still run; the summary marks this one failed, and Optuna
            # a FAILED trial (not a number; launch/sweep.py)
            return {"error": str(e)}
        sys.exit(1)


if __name__ == "__main__":
    main()
