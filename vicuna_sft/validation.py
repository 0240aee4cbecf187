"""Value checks the schema's types cannot express, in one place: `validate(cfg)` runs once, when
the config is composed (launch.entry, the commands), before torch is imported or a worker starts.
Whatever gets a `Config` afterwards (run, the TrainingArguments mapping) trusts it."""

import math
import os
from typing import Any

from omegaconf import DictConfig

from .config import (
    TEMPLATE_NAMES,
    AdapterKind,
    Config,
    FsdpStrategy,
    LongMode,
    LoraInit,
    Strategy,
    TrainerConfig,
    to_config,
)
from .errors import UserError
from .process import layout


class ConfigError(UserError, ValueError):
    pass


# Upper bounds beyond which a value is a typo (1e30 for 1e-3), not a recipe. AdamW moves each
# weight by about lr per step whatever the gradient's scale: lr > 1 moves every weight by more
# than its own typical size each step; and with lr <= 1, weight_decay <= 1 keeps the decoupled
# decay's factor lr * weight_decay <= 1 (above it every step flips the weights' sign).
MAX_LR = 1.0
MAX_WEIGHT_DECAY = 1.0


def gradient_accumulation(t: TrainerConfig, world_size: int) -> int:
    """Derived from `global_batch_size` when it is set (FastChat's 128 sequences per step)."""
    if t.global_batch_size is None:
        return t.gradient_accumulation_steps
    per_step = t.per_device_train_batch_size * world_size
    if t.global_batch_size % per_step:
        raise ConfigError(
            f"trainer.global_batch_size={t.global_batch_size} is not divisible by per_device_train_batch_size "
            f"({t.per_device_train_batch_size}) x world size ({world_size}) = {per_step}"
        )
    accum = t.global_batch_size // per_step
    if t.gradient_accumulation_steps not in (1, accum):
        raise ConfigError(
            f"trainer.gradient_accumulation_steps={t.gradient_accumulation_steps} contradicts "
            f"global_batch_size={t.global_batch_size} (which gives {accum}); set only one of them"
        )
    return accum


def check_batch_fits(t: TrainerConfig, train_samples: int, world_size: int) -> None:
    """The batch the config asks for must exist in the data: known only once the data is encoded
    (`run`), so checked there. Without it the Trainer (dataloader drop_last off) silently trains on
    one partial batch of the whole set per epoch, or accumulates fewer samples per optimizer step
    than configured: lr, warmup and step counts no longer mean what the config says."""
    per_step = t.per_device_train_batch_size * world_size
    accum = gradient_accumulation(t, world_size)
    if per_step > train_samples:
        raise ConfigError(
            f"trainer.per_device_train_batch_size={t.per_device_train_batch_size} x {world_size} process(es) = "
            f"{per_step} samples per batch, but the training set has only {train_samples}: every step would "
            f"train on one partial batch of those {train_samples}; lower trainer.per_device_train_batch_size "
            "or give more data"
        )
    if per_step * accum > train_samples:
        raise ConfigError(
            f"a global batch of {per_step * accum} samples ({per_step} per batch x {accum} accumulation steps) "
            f"is more than the {train_samples} of the training set: an optimizer step would average fewer "
            "samples than configured; lower trainer.global_batch_size / gradient_accumulation_steps or give more data"
        )


def validate(cfg: Config) -> None:
    """Value checks the schema's types cannot express; run at startup, before anything loads."""
    t, o, d = cfg.trainer, cfg.optimizer, cfg.data
    checks = [
        (
            cfg.distributed.nproc_per_node >= 1 and cfg.distributed.nnodes >= 1,
            "distributed.nproc_per_node and distributed.nnodes must be >= 1, got "
            f"{cfg.distributed.nproc_per_node}, {cfg.distributed.nnodes}",
        ),
        (
            0 < cfg.distributed.monitor_interval < math.inf,
            f"distributed.monitor_interval must be > 0 and finite, got {cfg.distributed.monitor_interval}",
        ),
        (
            cfg.distributed.max_restarts >= 0,
            f"distributed.max_restarts must be >= 0, got {cfg.distributed.max_restarts}",
        ),
        (d.max_length > 0, f"data.max_length must be > 0, got {d.max_length}"),
        (d.num_proc >= 1, f"data.num_proc must be >= 1, got {d.num_proc}"),
        # the bounds also refuse inf and nan (every comparison with nan is False): a run with
        # lr=inf has nan weights after its first step, and only reports a loss because
        # transformers' logging_nan_inf_filter averages the nan losses away
        (0 < o.lr <= MAX_LR, f"optimizer.lr must be > 0 and <= {MAX_LR:g}, got {o.lr}"),
        (
            0 <= o.weight_decay <= MAX_WEIGHT_DECAY,
            f"optimizer.weight_decay must be >= 0 and <= {MAX_WEIGHT_DECAY:g}, got {o.weight_decay}",
        ),
        (0 <= o.warmup_ratio < 1, f"optimizer.warmup_ratio must be in [0, 1), got {o.warmup_ratio}"),
        (
            0 <= o.max_grad_norm < math.inf,
            f"optimizer.max_grad_norm must be >= 0 and finite (0: no clipping), got {o.max_grad_norm}",
        ),
        (0 <= o.adam_beta1 < 1, f"optimizer.adam_beta1 must be in [0, 1), got {o.adam_beta1}"),
        (0 <= o.adam_beta2 < 1, f"optimizer.adam_beta2 must be in [0, 1), got {o.adam_beta2}"),
        (0 < o.eps < 1, f"optimizer.eps must be > 0 and < 1, got {o.eps}"),
        (t.per_device_train_batch_size >= 1, "trainer.per_device_train_batch_size must be >= 1"),
        (t.gradient_accumulation_steps >= 1, "trainer.gradient_accumulation_steps must be >= 1"),
        (
            t.max_steps > 0 or t.num_train_epochs > 0,
            "set trainer.max_steps > 0 or trainer.num_train_epochs > 0",
        ),
        (
            0 <= t.num_train_epochs < math.inf,
            f"trainer.num_train_epochs must be >= 0 and finite, got {t.num_train_epochs}",
        ),
        (t.logging_steps > 0, f"trainer.logging_steps must be > 0, got {t.logging_steps}"),
        (t.save_steps > 0, f"trainer.save_steps must be > 0, got {t.save_steps}"),
        (t.eval_steps is None or t.eval_steps > 0, f"trainer.eval_steps must be > 0, got {t.eval_steps}"),
        # rotation keeps the newest `save_total_limit` checkpoints: a negative one would delete
        # every checkpoint right after writing it (checkpoint.rotate), 0 would mean unlimited
        (
            t.save_total_limit is None or t.save_total_limit >= 1,
            "trainer.save_total_limit must be >= 1, or null to keep every checkpoint, "
            f"got {t.save_total_limit}",
        ),
        (cfg.loss.chunk_tokens >= 1, f"loss.chunk_tokens must be >= 1, got {cfg.loss.chunk_tokens}"),
        (0 <= d.eval_fraction < 1, f"data.eval_fraction must be in [0, 1), got {d.eval_fraction}"),
        (
            t.eval_strategy == Strategy.no or d.eval_path or d.eval_fraction > 0,
            f"trainer.eval_strategy={t.eval_strategy.value} needs eval data: set data.eval_fraction > 0 or "
            "data.eval_path, or trainer.eval_strategy=no",
        ),
    ]
    errors = [msg for ok, msg in checks if not ok] + adapter_errors(cfg)
    if d.template not in TEMPLATE_NAMES and not (
        d.template.endswith(".jinja") and os.path.isfile(d.template)
    ):
        errors.append(
            f"data.template: template file {d.template} not found"
            if d.template.endswith(".jinja")
            else f"data.template: {d.template!r} is not one of {', '.join(TEMPLATE_NAMES)} or a path to a .jinja file"
        )
    if d.lazy and d.long == LongMode.split:
        errors.append(
            "data.long=split needs the samples up front (a conversation's piece count is known only once "
            "encoded): set data.lazy=false (encoded once and cached) or data.long=truncate"
        )
    try:
        d.sources()  # data.path: a file, or a list of files / {path, weight, system} sources
    except UserError as e:
        errors.append(str(e))
    errors += report_to_problems(t.report_to)
    if t.args:  # transformers is imported only when there is something to check against it
        errors += trainer_args_problems(t.args)[1]
    if not errors:
        gradient_accumulation(t, layout(cfg)[0])  # global_batch_size must divide for this world size
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


# trainer.args: TrainingArguments fields passed through by name. Refused, in this one place: the
# fields the TrainingArguments mapping (training/arguments.py) sets itself, each with the key that
# sets it (a test keeps this list and the mapping equal), and the fields a guarantee of the run
# rests on, each with why. Any other field of TrainingArguments passes, type-checked.
TRAINER_ARGS_OWNED: dict[str, str] = {
    "output_dir": "hydra.run.dir",
    "per_device_train_batch_size": "trainer.per_device_train_batch_size",
    "per_device_eval_batch_size": "trainer.per_device_eval_batch_size",
    "gradient_accumulation_steps": "trainer.gradient_accumulation_steps or trainer.global_batch_size",
    "num_train_epochs": "trainer.num_train_epochs",
    "max_steps": "trainer.max_steps",
    "learning_rate": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "adam_beta1": "optimizer.adam_beta1",
    "adam_beta2": "optimizer.adam_beta2",
    "adam_epsilon": "optimizer.eps",
    "max_grad_norm": "optimizer.max_grad_norm",
    "optim": "optimizer.name",
    "lr_scheduler_type": "optimizer.scheduler",
    "bf16": "trainer.precision",
    "fp16": "trainer.precision",
    "tf32": "trainer.tf32",
    "logging_steps": "trainer.logging_steps",
    "save_strategy": "trainer.save_strategy",
    "save_steps": "trainer.save_steps",
    "save_total_limit": "trainer.save_total_limit",
    "eval_strategy": "trainer.eval_strategy",
    "eval_steps": "trainer.eval_steps",
    "metric_for_best_model": "trainer.metric_for_best_model",
    "seed": "trainer.seed",
    "data_seed": "trainer.seed",
    "dataloader_num_workers": "trainer.dataloader_num_workers",
    "report_to": "trainer.report_to",
    "use_cpu": "trainer.use_cpu",
    "activation_checkpointing": "model.activation_checkpointing",
    "gradient_checkpointing": "model.activation_checkpointing",
    "fsdp": "fsdp=<strategy>",
    "fsdp_config": "fsdp=<strategy> and fsdp.*",
    "parallelism_config": "fsdp=hybrid_shard",
    "resume_from_checkpoint": "trainer.resume",
    "use_liger_kernel": "loss=liger",
}
TRAINER_ARGS_INVARIANT: dict[str, str] = {
    "logging_first_step": "step 1 is always logged (the loss curve starts there, the divergence check needs it)",
    "remove_unused_columns": "the datasets hold exactly the model's inputs; dropping columns would break packing",
    "include_num_input_tokens_seen": "the throughput callback counts non-padding tokens through it",
    "local_rank": "set by the launcher (torchrun or distributed.nproc_per_node)",
    "save_only_model": "a checkpoint without optimizer state cannot be resumed, and every checkpoint here is resumable",
    "enable_jit_checkpoint": "SIGTERM and Ctrl-C already save a complete checkpoint (training/preemption.py)",
    "auto_find_batch_size": "it would change the batch the global batch size, lr and resume check rest on",
    "average_tokens_across_devices": "the loss is normalised by trained tokens across ranks (model/loss.py)",
    "label_smoothing_factor": "the loss variants compute the loss without logits (loss.kind); not supported",
    "deepspeed": "not supported: use fsdp=<strategy>",
    "do_train": "not read by the Trainer: a run always trains",
    "do_eval": "not read by the Trainer: use trainer.eval_strategy",
    "do_predict": "not read by the Trainer",
}

# trainer.args fields a resumed run may change (training/checkpoint.py RESUME_SAFE): what is
# logged, evaluated, saved or pushed, and how data is fed, not what a step computes. Any other
# trainer.args field differing from the checkpoint's run is refused at resume.
TRAINER_ARGS_RESUME_SAFE = (
    "logging_strategy",
    "logging_nan_inf_filter",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
    "disable_tqdm",
    "run_name",
    "project",
    "eval_delay",
    "eval_on_start",
    "eval_accumulation_steps",
    "eval_do_concat_batches",
    "eval_use_gather_object",
    "include_for_metrics",
    "batch_eval_metrics",
    "prediction_loss_only",
    "load_best_model_at_end",
    "greater_is_better",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_token",
    "hub_private_repo",
    "hub_always_push",
    "hub_revision",
    "save_on_each_node",
    "skip_memory_metrics",
    "dataloader_pin_memory",
    "dataloader_persistent_workers",
    "dataloader_prefetch_factor",
    "ddp_timeout",
    "torch_empty_cache_steps",
)


def _training_argument_fields() -> dict[str, Any]:
    """TrainingArguments' fields and their types (a dataclass in every supported release)."""
    import dataclasses
    import typing

    from transformers import TrainingArguments

    fields = {f.name: f.type for f in dataclasses.fields(TrainingArguments) if f.init}
    try:
        fields.update(typing.get_type_hints(TrainingArguments))
    except Exception:  # an annotation that does not resolve here: check only the resolvable ones
        fields = {k: (v if not isinstance(v, str) else Any) for k, v in fields.items()}
    return {k: fields[k] for k in fields if not k.startswith("_")}


def _coerce(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` (TrainingArguments' annotation) describes, else ValueError naming it."""
    import enum
    import types
    import typing

    origin, arms = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arms:
            return None
        ordered = [a for a in arms if a is not type(None)]
        if any(isinstance(a, type) and issubclass(a, enum.Enum) for a in ordered):
            # `HubStrategy | str`: the str is the enum's value, accepted only as one of them
            ordered = [a for a in ordered if a is not str]
        expected = []
        for arm in ordered:
            try:
                return _coerce(value, arm)
            except ValueError as e:
                expected.append(str(e))
        raise ValueError(" or ".join(expected + ["null"] * (type(None) in arms)))
    if origin is typing.Literal:
        if value in arms:
            return value
        raise ValueError(f"one of {list(arms)}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        valid = [m.value for m in hint]
        if value in valid:
            return value
        raise ValueError(f"one of {valid}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is list or hint is list:
        if isinstance(value, list | tuple):
            return [_coerce(v, arms[0]) for v in value] if arms else list(value)
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(hint, type):
        if isinstance(value, hint):
            return value
    else:
        return value  # an annotation not modelled here: left to TrainingArguments
    raise ValueError(_describe(hint))


def _describe(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def trainer_args_problems(args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """trainer.args checked against TrainingArguments: (the values as its types, problems). Each
    problem is one line naming the field and what to do instead."""
    import difflib

    fields = _training_argument_fields()
    values, problems = {}, []
    for name, value in args.items():
        key = f"trainer.args.{name}"
        if name in TRAINER_ARGS_OWNED:
            problems.append(f"{key}: set by vicuna_sft: use {TRAINER_ARGS_OWNED[name]}")
        elif name in TRAINER_ARGS_INVARIANT:
            problems.append(f"{key}: refused: {TRAINER_ARGS_INVARIANT[name]}")
        elif name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=3)
            hint = f"did you mean {' or '.join(close)}?" if close else "see transformers.TrainingArguments"
            problems.append(f"{key}: not a TrainingArguments field ({hint})")
        elif name == "warmup_steps" and not (
            isinstance(value, int) and not isinstance(value, bool) and value >= 0
        ):
            # TrainingArguments reads a float < 1 as a ratio: the ratio has its own key
            problems.append(
                f"{key} must be a whole number of steps >= 0 (it replaces optimizer.warmup_ratio), got {value!r}"
            )
        else:
            try:
                values[name] = _coerce(value, fields[name])
            except ValueError as e:
                problems.append(f"{key} must be {e}, got {value!r}")
    return values, problems


def trainer_args(args: dict[str, Any]) -> dict[str, Any]:
    """trainer.args as TrainingArguments keyword arguments (validated: validate ran at startup)."""
    values, problems = trainer_args_problems(args) if args else ({}, [])
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return values


# trainer.report_to: transformers' loggers (integrations.INTEGRATION_TO_CALLBACK; a test keeps the
# names equal), each with the modules its callback imports (any one of them) and what to install.
# The Trainer would only fail on a missing one after the data is encoded and the model loaded.
LOGGERS: dict[str, tuple[tuple[str, ...], str]] = {
    "azure_ml": (("azureml.core",), "azureml-core"),
    "clearml": (("clearml",), "clearml"),
    "codecarbon": (("codecarbon",), "codecarbon"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "dagshub": (("dagshub",), "dagshub mlflow"),
    "dvclive": (("dvclive",), "dvclive"),
    "flyte": (("flytekit",), "flytekit"),
    "kubeflow": ((), "KUBEFLOW_TRAINER_SERVER_URL"),  # set by Kubeflow's trainer pods; no package
    "mlflow": (("mlflow",), "mlflow"),
    "neptune": (("neptune",), "neptune"),
    "swanlab": (("swanlab",), "swanlab"),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "trackio": (("trackio",), "trackio"),
    "wandb": (("wandb",), "wandb"),
}
REPORT_TO_SPECIAL = ("all", "none")


def logger_available(name: str) -> bool:
    from importlib.util import find_spec

    def importable(module: str) -> bool:
        try:
            return find_spec(module) is not None
        except ModuleNotFoundError:  # the parent package of a dotted name is missing
            return False

    if name == "kubeflow":
        return bool(os.environ.get("KUBEFLOW_TRAINER_SERVER_URL"))
    modules, _ = LOGGERS[name]
    return any(importable(m) for m in modules) and (name != "dagshub" or importable("mlflow"))


def report_to_problems(report_to: list[str]) -> list[str]:
    problems = []
    for name in report_to:
        if name in REPORT_TO_SPECIAL:
            continue
        if name not in LOGGERS:
            valid = [*REPORT_TO_SPECIAL, *sorted(LOGGERS)]
            problems.append(f"trainer.report_to: unknown logger {name!r}; valid: {valid}")
        elif name == "kubeflow" and not logger_available(name):
            problems.append(
                "trainer.report_to: 'kubeflow' needs KUBEFLOW_TRAINER_SERVER_URL set (a Kubeflow pod)"
            )
        elif not logger_available(name):
            package = LOGGERS[name][1]
            problems.append(f"trainer.report_to: {name!r} needs {package}: pip install {package}")
    return problems


# qlora's 4-bit base (stored in the compute dtype: adapters.load_kwargs) is sharded by FSDP2 with
# full_shard and shard_grad_op (tests/integration/test_adapters_distributed.py: 2 ranks against 1);
# a replicated mesh dimension (hybrid) and parameter offload with 4-bit weights are not tested
QLORA_UNSHARDABLE = (FsdpStrategy.hybrid_shard, FsdpStrategy.full_shard_offload)


def adapter_errors(cfg: Config) -> list[str]:
    a = cfg.adapter
    if a.kind == AdapterKind.none:
        # the one adapter field that would otherwise change nothing silently (the others describe the adapter)
        if a.lr_ratio is not None:
            return [
                "adapter.lr_ratio (LoRA+) sets the lr of LoRA's B matrices: it needs adapter=lora or qlora"
            ]
        return []
    checks = [
        (a.r >= 1, f"adapter.r must be >= 1, got {a.r}"),
        (a.alpha > 0, f"adapter.alpha must be > 0, got {a.alpha}"),
        (0 <= a.dropout < 1, f"adapter.dropout must be in [0, 1), got {a.dropout}"),
        (
            bool(a.target_modules),
            "adapter.target_modules is empty: name the layers to adapt, or [all-linear]",
        ),
        (
            "all-linear" not in a.target_modules or len(a.target_modules) == 1,
            f"adapter.target_modules: all-linear stands alone, got {list(a.target_modules)}",
        ),
        (
            a.lr_ratio is None or 0 < a.lr_ratio < math.inf,
            f"adapter.lr_ratio must be > 0 and finite (LoRA+: typically 2-16), got {a.lr_ratio}",
        ),
        (
            a.kind != AdapterKind.qlora or a.init not in (LoraInit.pissa, LoraInit.olora),
            f"adapter.init={a.init.value} replaces the base weights by their residual, which a 4-bit base "
            "would hold requantized: final/ (merged into the unquantized base) would not be the trained "
            "model; use adapter=lora, or adapter.init=default|gaussian|orthogonal with qlora",
        ),
        (
            a.kind != AdapterKind.qlora or cfg.fsdp.strategy not in QLORA_UNSHARDABLE,
            f"adapter=qlora with fsdp={cfg.fsdp.strategy.value} is not supported: the 4-bit base is sharded "
            "(FSDP-QLoRA) with fsdp=full_shard or shard_grad_op, tested against one process; "
            f"{cfg.fsdp.strategy.value} is not (use fsdp=full_shard)",
        ),
    ]
    return [msg for ok, msg in checks if not ok]


def checked(cfg: DictConfig) -> Config:
    """The composed config, typed and value-checked: what every command does first, once."""
    typed = to_config(cfg)
    validate(typed)
    return typed
