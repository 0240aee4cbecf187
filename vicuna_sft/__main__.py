"""`python -m vicuna_sft [group=option ...] [key=value ...]`: compose the config, then run()."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_configs
from .errors import UserError
from .slurm import register_launchers

register_configs()
register_launchers()  # hydra/launcher=slurm, slurm_local (vicuna_sft/slurm.py)


@hydra.main(version_base="1.3", config_path="pkg://vicuna_sft.conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    # heavy imports only once a job really runs (not for --help / --cfg)
    from .distributed import entry  # run(cfg) here, or launch distributed.nproc_per_node workers

    try:
        return entry(cfg)
    except UserError as e:
        print(f"vicuna_sft: error: {e}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the other jobs of the sweep still run; the summary marks this one failed
            return {"error": str(e)}
        sys.exit(1)


if __name__ == "__main__":
    main()
