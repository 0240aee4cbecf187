"""`python -m vicuna_sft.launch.worker <run_dir>/worker_config.yaml`: one rank of a self-launched run.

Started by `entry.launch` through torch's elastic launcher (ranks in the environment).
The config was composed, resolved and validated once, by the launching process's Hydra; the
worker only reads it, so it creates no run directory of its own and writes no `.hydra/`.
"""

import logging
import os
import sys

from omegaconf import OmegaConf


def main(argv: list[str]) -> int:
    from ..config import Config, register_resolvers, to_config
    from ..errors import PREEMPTED_EXIT, Preempted, UserError
    from .entry import run_worker

    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO,
        format=f"[rank {rank}] %(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    register_resolvers()
    try:
        run_worker(to_config(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(argv[0]))))
    except Preempted as e:  # every rank stopped at the same step; the launcher says it once
        logging.getLogger("vicuna_sft").info("%s", e)
        return PREEMPTED_EXIT
    except UserError as e:
        print(f"vicuna_sft: error (rank {rank}): {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
