"""Hydra launcher plugins of vicuna_sft (Hydra only loads launchers from the `hydra_plugins`
namespace). The logic lives in vicuna_sft/slurm.py; configs in conf/hydra/launcher/."""
