"""SLURM (and its local stand-in) through hydra-submitit-launcher: one job per sweep point,
one SLURM task per rank (`hydra.launcher.tasks_per_node` x `hydra.launcher.nodes`).

The stock launcher runs the Hydra job in every task; these subclasses first turn the task into
a torch.distributed rank (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT from submitit's job
environment), host on rank 0 the key-value store the ranks share (as torchrun's agent does:
`init_process_group` then joins it instead of opening its own), and keep ranks > 0 from writing
`.hydra/` (they log to `<job>_rank<R>.log`). The sweep and job directories were decided once, by
the submitting process. Configs: conf/hydra/launcher/slurm.yaml and slurm_local.yaml.

The launcher classes themselves are one-line mixes of `TasksAreRanks` into submitit's launchers in
hydra_plugins/vicuna_sft_launcher: Hydra instantiates launchers only from classes defined under
the `hydra_plugins` namespace, which it discovers by itself (the one registration path).
"""

import os
from typing import Any


class TasksAreRanks:
    """Turns each submitit task into a torch.distributed rank before the Hydra job runs."""

    _store: Any = None

    def __call__(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state):  # type: ignore[no-untyped-def]
        overrides = list(sweep_overrides) + export_rank_environment()
        if int(os.environ["RANK"]) > 0:
            overrides += [
                "hydra.output_subdir=null",
                "hydra.job_logging.handlers.file.filename="
                f"${{hydra.runtime.output_dir}}/${{hydra.job.name}}_rank{os.environ['RANK']}.log",
            ]
        return super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)  # type: ignore[misc]


def export_rank_environment() -> list[str]:
    """Set this task's torch.distributed environment; returns extra Hydra overrides (none today)."""
    from datetime import timedelta

    import submitit
    from submitit.helpers import TorchDistributedEnvironment

    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    os.environ["TORCHELASTIC_RUN_ID"] = submitit.JobEnvironment().job_id
    os.environ.setdefault("TORCHELASTIC_RESTART_COUNT", "0")
    if env.world_size > 1:
        from torch.distributed import TCPStore

        if env.rank == 0:
            # held for the life of the task; the other ranks and init_process_group connect to it
            TasksAreRanks._store = TCPStore(
                env.master_addr,
                env.master_port,
                world_size=env.world_size,
                is_master=True,
                timeout=timedelta(seconds=900),
                wait_for_workers=False,
            )
        os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"
    return []
