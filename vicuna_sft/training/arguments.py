"""The one place where the config becomes `transformers.TrainingArguments` (transformers 5.x)."""

from typing import Any

from ..compat.transformers import checkpointing_argument
from ..config import Config, FsdpStrategy, Precision, Strategy
from ..process import layout
from ..validation import ConfigError, gradient_accumulation, trainer_args


def fsdp_arguments(
    cfg: Config,
    wrap_classes: list[str],
    world_size: int = 1,
    nnodes: int = 1,
    cuda_available: bool = True,
) -> dict[str, Any]:
    """FastChat's FSDP names as FSDP2 TrainingArguments; impossible combinations are refused here,
    never downgraded. `none` and `ddp` need no arguments: several processes mean DDP to the Trainer."""
    strategy = FsdpStrategy(cfg.fsdp.strategy)
    if strategy in (FsdpStrategy.none, FsdpStrategy.ddp):
        return {}
    classes = list(cfg.fsdp.wrap_classes or wrap_classes)
    if not classes:
        raise ConfigError("fsdp: the model names no decoder-layer class to wrap; set fsdp.wrap_classes")
    if strategy == FsdpStrategy.full_shard_offload and not cuda_available:
        raise ConfigError(
            "fsdp=full_shard_offload offloads parameters from GPU memory to CPU memory and needs CUDA; "
            "this machine has no CUDA device (use fsdp=full_shard on CPU)"
        )
    extra: dict[str, Any] = {}
    if strategy == FsdpStrategy.hybrid_shard:
        per_node = world_size // max(nnodes, 1)
        if nnodes < 2 or per_node < 2 or world_size % nnodes:
            raise ConfigError(
                f"fsdp=hybrid_shard shards within a node and replicates across nodes: it needs >= 2 nodes with "
                f">= 2 processes each, got world size {world_size} on {nnodes} node(s) "
                "(use fsdp=full_shard on a single node)"
            )
        extra["parallelism_config"] = {"dp_replicate_size": nnodes, "dp_shard_size": per_node}
    checkpointing = cfg.fsdp.activation_checkpointing
    if checkpointing is None:
        checkpointing = cfg.model.activation_checkpointing
    return {
        "fsdp": True,
        "fsdp_config": {
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": classes,
            "reshard_after_forward": strategy != FsdpStrategy.shard_grad_op,
            "cpu_offload": strategy == FsdpStrategy.full_shard_offload,
            "state_dict_type": cfg.fsdp.state_dict_type.value,
            # under FSDP, checkpointing belongs to FSDP (transformers warns otherwise)
            "activation_checkpointing": checkpointing,
        },
        **extra,
    }


def check_fsdp(cfg: Config) -> None:
    """The FSDP refusals of `fsdp_arguments`, before any process starts or any data is encoded
    (the wrap class is only known once the model loads: a placeholder stands in for it here)."""
    import torch

    fsdp = fsdp_arguments(cfg, ["<model layer>"], *layout(cfg), torch.cuda.is_available())
    if (
        fsdp and cfg.trainer.runs_on_cpu()
    ):  # FSDP on CPU processes rests on the adaptation's tested accelerate range
        import accelerate

        from ..compat.accelerate import check_version

        check_version(accelerate.__version__)


def to_training_arguments(cfg: Config, wrap_classes: list[str] | None = None) -> Any:
    """`cfg` is validated (validation.validate); the world size and node count come from `layout`.
    trainer.args (fields this mapping does not set, validation.TRAINER_ARGS_OWNED) are passed as
    they are; warmup_steps, a number of steps there, replaces optimizer.warmup_ratio."""
    from transformers import TrainingArguments

    return TrainingArguments(**{**project_arguments(cfg, wrap_classes), **trainer_args(cfg.trainer.args)})


def project_arguments(cfg: Config, wrap_classes: list[str] | None = None) -> dict[str, Any]:
    """The TrainingArguments this project sets from its own keys (each refused in trainer.args)."""
    import torch

    t, o = cfg.trainer, cfg.optimizer
    precision = Precision(t.precision)
    world_size, nnodes = layout(cfg)
    fsdp = fsdp_arguments(cfg, wrap_classes or [], world_size, nnodes, torch.cuda.is_available())
    if "parallelism_config" in fsdp:
        from accelerate.parallelism_config import ParallelismConfig

        fsdp["parallelism_config"] = ParallelismConfig(**fsdp["parallelism_config"])
    return dict(
        output_dir=t.output_dir,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size or t.per_device_train_batch_size,
        gradient_accumulation_steps=gradient_accumulation(t, world_size),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_epsilon=o.eps,
        max_grad_norm=o.max_grad_norm,
        optim=o.name.value,
        lr_scheduler_type=o.scheduler.value,
        warmup_steps=o.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        bf16=precision == Precision.bf16,
        fp16=precision == Precision.fp16,
        tf32=t.tf32,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        save_strategy=t.save_strategy.value,
        save_steps=t.save_steps,
        save_total_limit=None,  # rotated by callbacks.CheckpointCompleteCallback, after marking complete
        eval_strategy=t.eval_strategy.value,
        eval_steps=t.eval_steps,
        metric_for_best_model=t.metric_for_best_model or ("loss" if t.eval_strategy != Strategy.no else None),
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=t.dataloader_num_workers,
        report_to=list(t.report_to),
        # CPU-only torchrun: without use_cpu every rank silently trains alone as world size 1
        use_cpu=cfg.trainer.runs_on_cpu(),
        remove_unused_columns=False,  # our datasets hold exactly the model inputs
        include_num_input_tokens_seen="non_padding",
        **{checkpointing_argument(): bool(cfg.model.activation_checkpointing and not fsdp)},
        **fsdp,
    )
