"""Value checks the schema's types cannot express, in one place: `validate(cfg)` runs once, when
the config is composed (launch.entry, the commands), before torch is imported or a worker starts.
Whatever gets a `Config` afterwards (run, the TrainingArguments mapping) trusts it."""

import math
import os

from omegaconf import DictConfig

from .config import (
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
    if not errors:
        gradient_accumulation(t, layout(cfg)[0])  # global_batch_size must divide for this world size
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))


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
