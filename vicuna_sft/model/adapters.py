"""Parameter-efficient fine-tuning (`adapter=lora|qlora`) through PEFT.

Applied where the model is built (`model.loading.load_model`), to that instance, after its attention
variant: `get_peft_model` wraps it (`prepare_model_for_kbit_training` first for qlora, whose base
was quantized to 4 bits by bitsandbytes while loading). The wrapper forwards every call to the
model it wraps, so forward hooks installed before (attention, loss) keep working. The Trainer
flow does not change: transformers' Trainer saves a PeftModel's checkpoints as the adapter alone
(`adapter_model.safetensors`, FSDP ones through accelerate's `adapter_only`), optimizer state only
exists for the adapter, and resume loads the adapter back.

The final export (`export`) writes the adapter alone to `final_adapter/` (PEFT format + tokenizer
with the chat template, loadable with `AutoPeftModelForCausalLM`) and, unless `adapter.merge=false`,
hands back the adapter merged into a freshly loaded unquantized base for `final/`.

Every refusal happens before any weights load: the adapter's values in validation.py, then here
`check` (bitsandbytes and its device) and `check_targets` (on a meta-device copy of the
architecture) from the preflight, before workers start or data is encoded.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from typing import Any

from ..config import AdapterConfig, AdapterKind, Config, Dtype, LoraInit
from ..errors import UserError
from ..plan import RunPlan, torch_dtype

log = logging.getLogger(__name__)

ADAPTER_DIR = "final_adapter"  # beside final/
QLORA_EXTRA = "pip install 'vicuna_sft[qlora]'"


class AdapterError(UserError, ValueError):
    pass


# ---- checks, before anything loads ---------------------------------------------------------------


def check(cfg: Config, plan: RunPlan) -> None:
    """The adapter's refusals that depend on this machine (its values: validation.py): qlora needs
    bitsandbytes, with 4-bit kernels for the device training runs on."""
    if cfg.adapter.kind != AdapterKind.qlora:
        return
    bnb = import_bitsandbytes()
    check_quantization_device(plan.device.value, bnb)


def import_bitsandbytes() -> Any:
    try:
        import bitsandbytes
    except ImportError as e:
        raise AdapterError(
            f"adapter=qlora quantizes the base with bitsandbytes, which is not installed ({e}): {QLORA_EXTRA}"
        ) from None
    return bitsandbytes


def check_quantization_device(device_type: str, bnb: Any) -> None:
    # bitsandbytes >= 0.48 lists the torch devices it has 4-bit kernels for; older releases: CUDA only
    supported = set(getattr(bnb, "supported_torch_devices", {"cuda"}))
    if device_type not in supported:
        raise AdapterError(
            f"adapter=qlora: bitsandbytes {getattr(bnb, '__version__', '?')} cannot quantize on {device_type} "
            f"(it supports {sorted(supported)}); use adapter=lora here, or a bitsandbytes release for {device_type}"
        )


def linear_layer_names(model: Any) -> list[str]:
    """Distinct last names of the model's linear layers (what target_modules usually lists)."""
    import torch

    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the full module name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def check_targets(cfg: Config, model_config: Callable[[], Any]) -> None:
    """Every target module and module to save must exist in this architecture. Built on the meta
    device from the model's config (asked for only for an adapter run): no weights read, no memory."""
    a = cfg.adapter
    if a.kind == AdapterKind.none:
        return
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(
            copy.deepcopy(model_config()), trust_remote_code=cfg.model.trust_remote_code
        )
    names = [n for n, _ in skeleton.named_modules()]
    linear = linear_layer_names(skeleton)
    targets = [] if list(a.target_modules) == ["all-linear"] else list(a.target_modules)
    missing = [t for t in targets if not any(matches(n, t) for n in names)]
    missing_saved = [t for t in a.modules_to_save if not any(matches(n, t) for n in names)]
    if missing or missing_saved:
        what = [f"adapter.target_modules {missing}"] if missing else []
        what += [f"adapter.modules_to_save {missing_saved}"] if missing_saved else []
        raise AdapterError(
            f"{' and '.join(what)} match no layer of {type(skeleton).__name__}; its linear layers are "
            f"{linear} (or use adapter.target_modules=[all-linear])"
        )


# ---- loading and wrapping ------------------------------------------------------------------------


def compute_dtype(cfg: Config, plan: RunPlan) -> Dtype:
    if cfg.adapter.compute_dtype is not None:
        return cfg.adapter.compute_dtype
    return plan.compute_dtype


def load_kwargs(cfg: Config, plan: RunPlan) -> dict[str, Any]:
    """Extra `from_pretrained` arguments: for qlora the 4-bit quantization, placed on this rank's
    device while loading (bitsandbytes quantizes as the weights arrive there)."""
    if cfg.adapter.kind != AdapterKind.qlora:
        return {}
    from transformers import BitsAndBytesConfig

    a = cfg.adapter
    device: Any = "cpu" if plan.on_cpu else int(os.environ.get("LOCAL_RANK", 0))
    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=a.quant_type.value,
            bnb_4bit_use_double_quant=a.double_quant,
            bnb_4bit_compute_dtype=torch_dtype(compute_dtype(cfg, plan)),
            # the packed 4-bit weights stored as a float tensor (of the compute dtype) instead of
            # uint8: FSDP2 shards every parameter of a group alike and accelerate's FSDP-QLoRA
            # path expects a float storage dtype (fsdp_utils); nothing changes without FSDP
            bnb_4bit_quant_storage=torch_dtype(compute_dtype(cfg, plan)),
        ),
        "device_map": {"": device},
    }


def lora_config(a: AdapterConfig) -> Any:
    from peft import LoraConfig, TaskType

    targets = list(a.target_modules)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        bias=a.bias.value,
        modules_to_save=list(a.modules_to_save) or None,
        use_dora=a.use_dora,
        use_rslora=a.use_rslora,
        init_lora_weights=True if a.init == LoraInit.default else a.init.value,
    )


def apply(model: Any, cfg: Config) -> Any:
    """This model instance with its adapter (or itself for adapter=none); logs what trains."""
    a = cfg.adapter
    if a.kind != AdapterKind.none:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if a.kind == AdapterKind.qlora:
            # norms and embeddings to fp32 for stable training; checkpointing is the Trainer's to enable
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            keep_4bit_layout(model)
        import torch

        # LoRA's A matrices are drawn at random: from trainer.seed, not from whatever the process
        # drew before, so that every rank (FSDP shards its own copy) and every rerun starts alike
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.trainer.seed)
            model = get_peft_model(model, lora_config(a))
        peft_config = model.peft_config[model.active_adapter]
        if os.path.isdir(peft_config.base_model_name_or_path or ""):
            # the saved adapter names its base: absolute, so that it loads from any directory
            peft_config.base_model_name_or_path = os.path.abspath(peft_config.base_model_name_or_path)
        # read by the Trainer's create_optimizer (loraplus_optimizer), from this instance only
        setattr(model, LORA_PLUS_RATIO, a.lr_ratio)
        if cfg.model.activation_checkpointing:
            # the embeddings are frozen: without this, checkpointed layers whose input needs no grad
            # would (with reentrant checkpointing) give the adapter no gradient at all
            model.enable_input_require_grads()
    trainable, total = count_parameters(model)
    log.info("%s", describe(trainable, total))
    return model


LORA_PLUS_RATIO = "_vicuna_sft_lora_plus_ratio"


def loraplus_optimizer(trainer: Any, model: Any) -> Any:
    """LoRA+ (adapter.lr_ratio): the optimizer transformers would build from TrainingArguments.optim,
    its parameters grouped by PEFT's `create_loraplus_optimizer` so that the B matrices learn at
    lr x ratio. None for any other model: the Trainer then builds its own."""
    ratio = getattr(model, LORA_PLUS_RATIO, None)
    if ratio is None:
        return None
    from peft.optimizers import create_loraplus_optimizer

    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr")
    return create_loraplus_optimizer(
        model,
        optimizer_cls,
        lr=lr,
        loraplus_lr_ratio=ratio,
        # PEFT's default is 0 whatever the Trainer was given
        loraplus_weight_decay=trainer.args.weight_decay,
        **kwargs,
    )


def keep_4bit_layout(model: Any) -> None:
    """On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight in place into an inference
    layout on its first no-grad forward (an eval during training), which fails for layers whose
    output size is not a multiple of 32 and leaves the frozen base in another format mid-run.
    Training keeps the layout it was quantized in: this instance's layers skip that path."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameters; a 4-bit weight counts as the parameters it stands for."""
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT: unpacks Params4bit sizes
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def human(n: float) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def describe(trainable: int, total: int) -> str:
    """`trainable 4.2M of 6.7B parameters (0.06 %)`"""
    return (
        f"trainable {human(trainable)} of {human(total)} parameters ({100 * trainable / max(total, 1):.2f} %)"
    )


# ---- final export ----------------------------------------------------------------------------------


def adapter_dir(cfg: Config) -> str | None:
    """Where the adapter alone is saved, None for full fine-tuning."""
    if cfg.adapter.kind == AdapterKind.none:
        return None
    return os.path.join(cfg.trainer.output_dir, ADAPTER_DIR)


def writes_final(cfg: Config) -> bool:
    """final/ (a plain model) is written unless an adapter run asks for the adapter alone."""
    return cfg.adapter.kind == AdapterKind.none or cfg.adapter.merge


def is_adapted(model: Any) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def export(
    model: Any, state_dict: dict[str, Any], cfg: Config, tokenizer: Any, out: str
) -> tuple[Any, dict[str, Any]] | None:
    """What `final/` holds: (model, full state dict) to save as a plain model, or None (nothing).
    For an adapted model, first writes the adapter alone to `<out>/final_adapter/` (atomically),
    then (adapter.merge) merges it into the base loaded again unquantized in model.dtype.
    Rank 0 only; `state_dict` is the full (gathered) state dict of the trained model."""
    if not is_adapted(model):
        return model, state_dict
    import shutil

    from ..files import replace_dir

    final = os.path.join(out, ADAPTER_DIR)
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    # PeftModel.save_pretrained keeps only the adapter's entries of the full state dict
    model.save_pretrained(partial, state_dict=state_dict)
    tokenizer.save_pretrained(partial)  # with the training template (training/final.py set it)
    replace_dir(partial, final)
    log.info("adapter saved to %s (AutoPeftModelForCausalLM.from_pretrained)", final)
    if not cfg.adapter.merge:
        return None
    merged = merged_model(model, final, cfg)
    return merged, merged.state_dict()


def merged_model(model: Any, adapter_dir: str, cfg: Config) -> Any:
    """The base as configured for training (RoPE scaling included), without quantization, in
    model.dtype, with the saved adapter merged into its weights."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.get_base_model().config)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    base = AutoModelForCausalLM.from_pretrained(
        model.peft_config[model.active_adapter].base_model_name_or_path,  # what training loaded
        config=config,
        dtype=torch_dtype(cfg.model.dtype),
        revision=cfg.model.revision,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
