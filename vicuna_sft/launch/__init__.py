"""Processes: the entry that runs here or launches workers (elastic launch, SLURM), the worker,
the ranks' agreement on one config, and the Hydra callbacks for torchrun and sweeps."""
