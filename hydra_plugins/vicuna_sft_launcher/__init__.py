"""vicuna_sft's SLURM launchers, where Hydra discovers and accepts launcher classes (only under the
`hydra_plugins` namespace). The logic is vicuna_sft/launch/slurm.py; configs conf/hydra/launcher/.
Without the `slurm` extra (hydra-submitit-launcher) there is nothing to offer."""

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # hydra-submitit-launcher not installed
    pass
else:
    from vicuna_sft.launch.slurm import TasksAreRanks

    class RankedSlurmLauncher(TasksAreRanks, SlurmLauncher):
        pass

    class RankedLocalLauncher(TasksAreRanks, LocalLauncher):
        pass
