"""hydra-submitit-launcher's launchers with one rank per task: see vicuna_sft/slurm.py."""

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher

from vicuna_sft.slurm import TasksAreRanks


class RankedSlurmLauncher(TasksAreRanks, SlurmLauncher):
    pass


class RankedLocalLauncher(TasksAreRanks, LocalLauncher):
    pass
