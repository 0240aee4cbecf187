"""Typed config schema.

Every config group is validated by one dataclass below; the values live in `conf/*.yaml`.
Each default lives here exactly once; YAML files only state what differs from it.
This module must stay import-light (no torch, no transformers): `--help` and `--cfg job`
compose configs without loading them.
"""

import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

from .process import rank


class AttentionImpl(str, Enum):
    # one member per file in conf/attention/ and per module in vicuna_sft/attention/ (tested 1:1)
    eager = "eager"
    sdpa = "sdpa"
    flash = "flash"  # flash-attn if installed, else PyTorch's flash kernels (CUDA, fp16/bf16)
    xformers = "xformers"  # xformers.ops.memory_efficient_attention (CUDA, `xformers` extra)


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Precision(str, Enum):
    """Mixed-precision mode of the Trainer (autocast); weights stay in `model.dtype`."""

    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class Builtin(str, Enum):
    """Models this package can create locally when `name_or_path` does not exist yet."""

    tiny = "tiny"
    # ~228M parameters (8 layers x 1536 wide, the tiny tokenizer), random weights: big enough that
    # weights and optimizer state dominate a CPU process's memory (benchmarks/bench_adapter_memory.py)
    small = "small"


# OmegaConf matches enum members by *name*; these names are not identifiers, hence the functional API.
OnError = Enum("OnError", {"raise": "raise", "skip": "skip"}, type=str)


class Reasoning(str, Enum):
    """A template that renders earlier turns differently once later ones follow (Qwen3 drops
    earlier <think> blocks): what a conversation it cannot render prefix-stably becomes."""

    refuse = "refuse"  # an error naming the conversation (or a counted skip under on_error=skip)
    split = "split"  # one sample per turn, rendered as a server renders it then (more tokens: counted)
    keep = "keep"  # one sample, each turn as rendered when it was the latest (history != inference)


# data.template: these names, or a path to a .jinja file (data/templates.py has the templates)
TEMPLATE_NAMES = ("vicuna_v1.1", "chatml", "tokenizer")


class TrainOn(str, Enum):
    all = "all"  # every assistant message not marked "train": false
    last = "last"  # only the last assistant message


class LongMode(str, Enum):
    """What happens to a conversation longer than data.max_length."""

    truncate = "truncate"  # cut at max_length: every later reply is lost (FastChat's train.py)
    # several samples split at turn boundaries, each starting with the system prompt (nothing lost
    # except the cut part of a single turn pair longer than max_length, which is counted)
    split = "split"


class Padding(str, Enum):
    longest = "longest"  # pad to the longest sample of the batch
    max_length = "max_length"  # FastChat: every sample padded to data.max_length
    # the batch's samples concatenated into one row, position_ids restarting per sample: no padding
    packed = "packed"


class FsdpStrategy(str, Enum):
    """FastChat's names, mapped to FSDP2 in training.arguments.fsdp_arguments (docs/distributed.md)."""

    none = "none"  # no sharding: one process, or plain DDP (a full replica per rank) when several run
    ddp = "ddp"  # the same as none, under the name users know it by: to_config turns it into none
    full_shard = "full_shard"  # params, grads, optimizer state sharded; reshard after forward
    shard_grad_op = "shard_grad_op"  # like full_shard, but params stay gathered between forward and backward
    hybrid_shard = "hybrid_shard"  # shard within a node, replicate across nodes (nnodes >= 2)
    full_shard_offload = "full_shard_offload"  # full_shard + parameters offloaded to CPU (GPU only)


class AdapterKind(str, Enum):
    """Parameter-efficient fine-tuning (vicuna_sft/adapters.py): the base model stays frozen."""

    none = "none"  # full fine-tuning: every parameter trains
    lora = "lora"  # LoRA (PEFT) on a frozen base in model.dtype
    qlora = "qlora"  # LoRA on a frozen 4-bit (bitsandbytes) base: needs the `qlora` extra


class LoraBias(str, Enum):
    none = "none"
    all = "all"
    lora_only = "lora_only"


class LoraInit(str, Enum):
    """How LoRA's matrices start (PEFT's `init_lora_weights`); each is deterministic given the seed
    and the base weights, so a saved adapter reloads onto the original base exactly."""

    default = "default"  # A Kaiming-uniform, B zero: the adapter starts as a no-op (PEFT's True)
    gaussian = "gaussian"  # A Gaussian scaled by the rank, B zero
    # A, B from the base weight's top singular vectors, the base replaced by the residual
    # (Meng et al. 2024); PEFT recomputes the residual when the adapter is loaded
    pissa = "pissa"
    olora = "olora"  # A, B from a QR decomposition of the base weight, the base replaced likewise
    orthogonal = "orthogonal"  # A and B orthogonal, scaled so that B A = 0


class QuantType(str, Enum):
    nf4 = "nf4"  # 4-bit NormalFloat (QLoRA paper)
    fp4 = "fp4"


class StateDictType(str, Enum):
    full = "FULL_STATE_DICT"
    sharded = "SHARDED_STATE_DICT"


class RdzvBackend(str, Enum):
    c10d = "c10d"  # ranks assigned by the rendezvous (torchrun's default)
    static = "static"  # node ranks fixed by distributed.node_rank


class Strategy(str, Enum):
    no = "no"
    steps = "steps"
    epoch = "epoch"


class Scheduler(str, Enum):
    cosine = "cosine"
    linear = "linear"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"


class LossKind(str, Enum):
    """How the causal-LM loss is computed (vicuna_sft/model/loss.py); the same normalisation in all three."""

    chunked = "chunked"  # lm_head + cross-entropy on trained positions only, chunk_tokens at a time
    full = "full"  # transformers' own: fp32 logits [tokens, vocab] for every position
    liger = "liger"  # liger-kernel's fused linear cross-entropy (CUDA, `liger` extra)


class Optim(str, Enum):
    """transformers' `optim` names (TrainingArguments.optim), one YAML per choice in conf/optimizer/.
    What each needs to run (a package, CUDA): training/optimizers.py REQUIREMENTS, checked at preflight."""

    adamw_torch = "adamw_torch"  # fp32 first and second moments: 8 bytes of state per trained parameter
    adamw_torch_fused = "adamw_torch_fused"
    # bitsandbytes: both moments block-wise quantized to 8 bits (~2 B/param); tensors under
    # 4096 elements and the embeddings keep 32-bit state (bitsandbytes' min_8bit_size, transformers)
    adamw_8bit = "adamw_8bit"
    # as adamw_8bit, its state in CUDA unified memory that pages out to CPU memory under pressure
    paged_adamw_8bit = "paged_adamw_8bit"
    paged_adamw_32bit = "paged_adamw_32bit"
    # factored second moment (a row and a column vector per matrix), no first moment: ~0 B/param
    adafactor = "adafactor"
    lion_8bit = "lion_8bit"  # sign of an interpolated momentum: one 8-bit moment (~1 B/param)


@dataclass
class ModelConfig:
    name_or_path: str = MISSING  # local directory or hub id, loaded with from_pretrained
    tokenizer: str | None = None  # None: same as name_or_path
    revision: str | None = None
    dtype: Dtype = Dtype.float32  # dtype the weights are loaded (and trained) in
    save_dtype: Dtype | None = None  # None: bf16/fp16 for bf16/fp16 runs, else model.dtype
    trust_remote_code: bool = False
    activation_checkpointing: bool = False
    # name_or_path is where this builtin model lives (builtin_path); it is created there on first use.
    # Any other path is only ever loaded, never created.
    builtin: Builtin | None = None


@dataclass
class SourceConfig:
    """One item of `data.path` given as a mapping (vicuna_sft/data/sources.py)."""

    path: str = MISSING  # JSON array or JSONL of ShareGPT records
    # times each record is used per epoch: 3 = every record three times, 0.5 = a seeded half
    weight: float = 1.0
    system: str | None = None  # system prompt of records without their own; None: the template's


@dataclass
class DataConfig:
    # One file (JSON array or JSONL of ShareGPT records), or a list whose items are files or
    # SourceConfig mappings, e.g. [sharegpt.json, {path: identity.json, weight: 10}]. Typed as Any
    # because OmegaConf has no str-or-list union; each item is checked against SourceConfig.
    path: Any = MISSING
    eval_path: str | None = None
    eval_fraction: float = 0.0  # held out from `path` with trainer.seed when eval_path is None
    # vicuna_v1.1 | chatml | tokenizer (the model's own chat template) | a path to a .jinja file
    template: str = "vicuna_v1.1"
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {enable_thinking: false}
    train_on: TrainOn = TrainOn.all
    reasoning: Reasoning = Reasoning.refuse
    max_length: int = 2048
    padding: Padding = Padding.packed  # fastest, same math (docs/benchmarks.md); FastChat: max_length
    lazy: bool = False  # encode on access instead of up front (never cached; not with long=split)
    num_proc: int = 1  # processes for up-front encoding
    on_error: OnError = OnError["raise"]
    long: LongMode = LongMode.truncate
    # encode once: the encoded dataset is stored under cache_dir, keyed by everything that changes it
    cache: bool = True
    cache_dir: str | None = None  # None: ${VICUNA_SFT_CACHE:-.cache/vicuna_sft}/data

    def sources(self) -> list[SourceConfig]:
        """`path` as typed sources; a UserError naming the item and its problem otherwise."""
        import math

        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        from .errors import UserError

        one = not isinstance(self.path, list | tuple)
        items = [self.path] if one else list(self.path)
        if not items:
            raise UserError("data.path is an empty list: give a file, or a list of files or sources")
        out = []
        for i, item in enumerate(items):
            where = "data.path" if one else f"data.path[{i}]"
            if isinstance(item, str):
                item = {"path": item}
            if not isinstance(item, dict):
                raise UserError(
                    f"{where}: expected a file path or a mapping {{path, weight, system}}, got {item!r}"
                )
            try:
                src = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SourceConfig), item))
            except OmegaConfBaseException as e:
                raise UserError(f"{where}: {str(e).splitlines()[0]} (keys: path, weight, system)") from None
            if not (src.weight > 0 and math.isfinite(src.weight)):
                raise UserError(f"{where}: weight must be a positive number, got {src.weight}")
            out.append(src)
        return out


@dataclass
class OptimizerConfig:
    name: Optim = Optim.adamw_torch
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: Scheduler = Scheduler.cosine
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    eps: float = 1e-8


@dataclass
class AttentionConfig:
    implementation: AttentionImpl = AttentionImpl.sdpa


@dataclass
class LossConfig:
    kind: LossKind = LossKind.chunked  # docs/benchmarks.md: peak memory and tokens/s against full
    # trained positions projected at once: the largest vocab-sized tensor is [chunk_tokens, vocab] fp32
    # (512 x 128,256 x 4 B = 262 MB; docs/benchmarks.md has 256 / 512 / 1024 at 128k vocab)
    chunk_tokens: int = 512


@dataclass
class FsdpConfig:
    strategy: FsdpStrategy = FsdpStrategy.none
    state_dict_type: StateDictType = StateDictType.full  # for intermediate checkpoints
    # None: derived from the model (`_no_split_modules`), never hard-coded
    wrap_classes: list[str] | None = None
    # FSDP's own activation checkpointing of each wrapped layer; None: model.activation_checkpointing
    activation_checkpointing: bool | None = None


@dataclass
class AdapterConfig:
    """LoRA / QLoRA through PEFT; the defaults are FastChat's train_lora.py."""

    kind: AdapterKind = AdapterKind.none
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    # module names (or name suffixes, PEFT's matching); [all-linear]: every linear layer but the output head
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    bias: LoraBias = LoraBias.none
    modules_to_save: list[str] = field(default_factory=list)  # trained in full and saved with the adapter
    merge: bool = True  # also write final/: the adapter merged into the base, in model.save_dtype
    # DoRA (Liu et al. 2024): each adapted weight split into a trained magnitude and a LoRA-updated direction
    use_dora: bool = False
    use_rslora: bool = False  # rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r
    init: LoraInit = LoraInit.default
    # LoRA+ (Hayou et al. 2024): the B matrices learn at optimizer.lr x lr_ratio (e.g. 16); None: the same lr
    lr_ratio: float | None = None
    # qlora: the frozen base quantized to 4 bits at load time
    quant_type: QuantType = QuantType.nf4
    double_quant: bool = True
    compute_dtype: Dtype | None = None  # None: bf16/fp16 for bf16/fp16 runs, else model.dtype


@dataclass
class DistributedConfig:
    """Process layout. Under torchrun/SLURM the ranks come from the environment and these only
    describe the launch; with `python -m vicuna_sft distributed.nproc_per_node=N` this process
    starts the workers itself through torch's elastic launcher (vicuna_sft/launch/entry.py)."""

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0  # used with rdzv_backend=static; c10d assigns ranks itself
    rdzv_backend: RdzvBackend = RdzvBackend.c10d
    rdzv_endpoint: str | None = None  # host:port; None: localhost on a free port (single node only)
    rdzv_id: str | None = None  # shared by all nodes of one job; None: derived from the run directory
    max_restarts: int = 0
    monitor_interval: float = 0.5


@dataclass
class TrainerConfig:
    output_dir: str = "${hydra:runtime.output_dir}"
    per_device_train_batch_size: int = 2
    per_device_eval_batch_size: int | None = None  # None: same as train
    # Set one of them: accumulation = global_batch_size / (per_device * world_size), must divide.
    global_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    precision: Precision = Precision.fp32
    tf32: bool | None = None
    logging_steps: int = 10
    save_strategy: Strategy = Strategy.steps
    save_steps: int = 500
    save_total_limit: int | None = 2  # a 7B checkpoint with optimizer state is ~80 GB
    eval_strategy: Strategy = Strategy.no
    eval_steps: int | None = None
    # the eval metric that ranks checkpoints and that EarlyStoppingCallback watches; None: "loss" when evaluating
    metric_for_best_model: str | None = None
    seed: int = 42
    resume: str = "auto"  # auto | never | <checkpoint path>
    # resume even when model/data/max_length/global batch differ from the checkpoint's run
    resume_on_config_change: bool = False
    dataloader_num_workers: int = 0
    # loggers (transformers integrations): TensorBoard event files in <run dir>/runs/ by default
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    # extra transformers TrainerCallbacks as Hydra `_target_` nodes, e.g.
    # [{_target_: transformers.EarlyStoppingCallback, early_stopping_patience: 3}]; they run before
    # the built-in ones at every event (training/callbacks.py)
    callbacks: list[Any] = field(default_factory=list)
    # None: CPU exactly when no CUDA device is visible (vicuna_sft/plan.py decides the device)
    use_cpu: bool | None = None
    # any other TrainingArguments field by its transformers name, e.g. {warmup_steps: 5,
    # neftune_noise_alpha: 5}: checked against TrainingArguments' own fields and types when the
    # config is composed; fields this project sets itself are refused naming the key that does
    # (validation.TRAINER_ARGS_OWNED)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    attention: AttentionConfig = MISSING
    fsdp: FsdpConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    loss: LossConfig = field(default_factory=LossConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)  # kind none: full fine-tuning
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


SCHEMA_NAME = "config_schema"


def register_configs() -> None:
    """Store the schema as the root config `config_schema` (conf/config.yaml extends it; outside any
    group, so `--help` does not offer it as an option) and the resolvers."""
    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema_node(Config))
    register_resolvers()


def schema_node(schema: type) -> DictConfig:
    """The root schema (`Config` or a command's extension of it) as the node stored as
    `config_schema`. trainer.args holds TrainingArguments' names, not the schema's: it is open to
    new keys, so `trainer.args.warmup_steps=5` needs no `+` (validation checks the names)."""
    from omegaconf import OmegaConf

    node = OmegaConf.structured(schema)
    OmegaConf.set_struct(node.trainer.args, False)
    return node


def _asset_path(name: str) -> str:
    from importlib import resources

    return str(resources.files("vicuna_sft") / "assets" / name)


BUILTIN_DIRS = {Builtin.tiny: "tiny-llama", Builtin.small: "small-llama"}


def cache_root() -> str:
    """${VICUNA_SFT_CACHE:-.cache/vicuna_sft}: builtin models and encoded data live below it."""
    return os.environ.get("VICUNA_SFT_CACHE", os.path.join(".cache", "vicuna_sft"))


def builtin_path(builtin: Builtin | str) -> str:
    """Where a builtin model is cached: ${VICUNA_SFT_CACHE:-.cache/vicuna_sft}/<name>."""
    return os.path.join(cache_root(), BUILTIN_DIRS[Builtin(builtin)])


def data_run_name(choice: str, *, _root_: Any) -> str:
    """The `<data>` part of the run directory: the `data` option, plus the stems of its data files
    that are not bundled with the package (`data=sharegpt data.path=/d/sharegpt_clean.json` ->
    `sharegpt-sharegpt_clean`; several files: `sharegpt-a+b`), so that other data gets another run.
    A missing or malformed data.path is left to `to_config` / validation to report."""
    from omegaconf import OmegaConf

    if OmegaConf.is_missing(_root_.data, "path"):
        return choice
    value = OmegaConf.to_container(_root_.data, resolve=True).get("path")
    items = value if isinstance(value, list) else [value]
    paths = [i.get("path") if isinstance(i, dict) else i for i in items]
    assets = os.path.abspath(os.path.dirname(_asset_path("x")))
    stems = [
        os.path.splitext(os.path.basename(p))[0]
        for p in paths
        if isinstance(p, str) and p and os.path.dirname(os.path.abspath(p)) != assets
    ]
    if not stems:
        return choice
    name = "+".join(stems)
    return f"{choice}-{name if len(name) <= 60 else f'{stems[0]}+{len(stems) - 1}more'}"


def _leaf(path: str) -> str:
    """The last part of a path or hub id (`/m/llama-2-7b-hf/` -> `llama-2-7b-hf`)."""
    return os.path.basename(os.path.normpath(path)) or path


def _option_value(group: str, option: str, key: str) -> Any:
    """`key` as the packaged option `conf/<group>/<option>.yaml` sets it (unresolved), or None."""
    from importlib import resources

    from omegaconf import OmegaConf

    file = resources.files("vicuna_sft.conf") / group / f"{option}.yaml"
    if not file.is_file():
        return None
    values = OmegaConf.to_container(OmegaConf.create(file.read_text()), resolve=False)
    values = values.get(group, values) if isinstance(values.get(group), dict) else values  # @package _global_
    return values.get(key)


def model_run_name(choice: str, *, _root_: Any) -> str:
    """The `<model>` part of run directories: the `model` option while `model.name_or_path` is
    the one that option names, else the last part of the path (or hub id) loaded instead
    (`model.name_or_path=/m/my-llama` -> `my-llama`), plus `-tok-<last part>` with another
    `model.tokenizer`: another model or tokenizer gets another run (and another preprocess)."""
    from omegaconf import OmegaConf

    model = _root_.model
    if OmegaConf.is_missing(model, "name_or_path"):
        return choice
    raw = OmegaConf.to_container(model, resolve=False).get("name_or_path")
    name = choice if raw == _option_value("model", choice, "name_or_path") else _leaf(str(model.name_or_path))
    tokenizer = model.get("tokenizer")
    if tokenizer and _leaf(str(tokenizer)) != name:
        name = f"{name}-tok-{_leaf(str(tokenizer))}"
    return name


def adapter_run_name(*, _root_: Any) -> str:
    """The `_<adapter>` suffix of the run directory (empty for full fine-tuning): an adapter run's
    checkpoints never share a directory with a full fine-tune's."""
    kind = _root_.adapter.get("kind") if "adapter" in _root_ else None
    kind = getattr(kind, "value", kind)
    return "" if kind in (None, AdapterKind.none.value) else f"_{kind}"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("vicuna_sft_asset"):
        OmegaConf.register_new_resolver("vicuna_sft_asset", _asset_path)
    if not OmegaConf.has_resolver("vicuna_sft_data_name"):
        OmegaConf.register_new_resolver("vicuna_sft_data_name", data_run_name)
    if not OmegaConf.has_resolver("vicuna_sft_model_name"):
        OmegaConf.register_new_resolver("vicuna_sft_model_name", model_run_name)
    if not OmegaConf.has_resolver("vicuna_sft_adapter_name"):
        OmegaConf.register_new_resolver("vicuna_sft_adapter_name", adapter_run_name)
    if not OmegaConf.has_resolver("vicuna_sft_builtin"):
        OmegaConf.register_new_resolver("vicuna_sft_builtin", builtin_path)


def as_dict(cfg: Config) -> dict[str, Any]:
    """The config as plain values (enums as their values): what config.yaml, the workers' config
    file and the ranks' config hash hold."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def save_config(cfg: Config, directory: str) -> None:
    """`<directory>/config.yaml`: the resolved config of this run (written by rank 0 only)."""
    from omegaconf import OmegaConf

    os.makedirs(directory, exist_ok=True)
    if rank() == 0:
        OmegaConf.save(OmegaConf.create(as_dict(cfg)), os.path.join(directory, "config.yaml"))


def unknown_keys(node: DictConfig, schema: type, where: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys of `node` that its dataclass `schema` lacks, in this node and its dataclass-typed
    children: per key its close matches, else per group the keys it has. Needed because Hydra's
    `+key=value` / `++key=value` add a key even to a struct node (at the root as in a group), and
    `OmegaConf.to_object` then carries it as an extra attribute that nothing reads: the override
    would silently vanish. Fields typed Any / list[Any] (data.path, trainer.callbacks) hold
    free-form values and are not descended into (data.path's items: `DataConfig.sources`)."""
    import difflib
    from dataclasses import fields, is_dataclass

    from omegaconf import OmegaConf

    types = {f.name: f.type for f in fields(schema)}
    found, unmatched = [], []
    for key in node:
        if key in ignore:
            continue
        if key not in types:
            close = difflib.get_close_matches(str(key), list(types), n=3)
            if close:
                found.append(f"{where}{key} (did you mean {' or '.join(where + c for c in close)}?)")
            else:
                unmatched.append(f"{where}{key}")
        elif is_dataclass(types[key]) and not OmegaConf.is_missing(node, key):
            child = node[key]  # None for a null group node
            if isinstance(child, DictConfig):
                found += unknown_keys(child, types[key], f"{where}{key}.")
    if unmatched:
        found.append(f"{', '.join(unmatched)} ({where.rstrip('.') or 'the root'} has: {', '.join(types)})")
    return found


def to_config(cfg: DictConfig) -> Config:
    """The composed DictConfig as a typed `Config` (enums as Enum members). Every command converts
    its composed config here (through validation.checked), so unknown keys are refused here, once."""
    from dataclasses import fields

    from omegaconf import MissingMandatoryValue, OmegaConf

    from .errors import UserError

    unknown = unknown_keys(cfg, Config, ignore=("hydra",))  # hydra.*: Hydra's own keys
    if unknown:
        raise UserError(f"unknown config key(s): {'; '.join(unknown)}")
    body = OmegaConf.masked_copy(cfg, [f.name for f in fields(Config)]) if "hydra" in cfg else cfg
    try:
        # merged onto the schema: a masked copy (or a plain DictConfig) would otherwise come back as a dict
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), body))
    except MissingMandatoryValue as e:
        raise UserError(f"{e.full_key} is required: set {e.full_key}=...") from None
    if typed.fsdp.strategy == FsdpStrategy.ddp:  # one name per behaviour past this point
        import logging

        logging.getLogger("vicuna_sft").warning(DDP_ALIAS_NOTICE)
        typed.fsdp.strategy = FsdpStrategy.none
    return typed


DDP_ALIAS_NOTICE = (
    "fsdp=ddp is fsdp=none: without FSDP, several processes train with plain DDP (use fsdp=none)"
)
