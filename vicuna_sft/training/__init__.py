"""Training: the config as TrainingArguments, the Trainer, its callbacks, checkpoints, the final
model and the run's result. Imports model/, data/, config; never launch/ or the commands."""
