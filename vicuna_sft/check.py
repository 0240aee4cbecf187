"""`python -m vicuna_sft.check [overrides as for training] [check.samples=N] [check.<quantity>_tol=X]`

Does the configured variant compute what plain attention would? One real batch of the configured
data goes through the model exactly as training builds it (`load_model(cfg)`: the attention
variant, dtype and whatever else the model build applies) and is collated with the configured
padding mode; the same samples go through the reference: the same model with eager attention and
a right-padded batch (`data.padding=longest`). Both run with the run's dtype and mixed precision,
in eval mode (dropout off; gradients still flow), on the GPU unless `trainer.use_cpu`. The check
prints the largest differences of

    loss       |loss - ref| / |ref|
    logits     max |logits - ref| over the real (non-pad) tokens / max |ref|
    gradients  per parameter max |grad - ref| / max |ref|, the worst parameter

against the tolerance of the compute precision (`TOLERANCES`), writes them to `check.json` in
its run directory, and exits 1 naming each quantity past its tolerance. A variant the device
cannot run (attention=flash or xformers without CUDA, ...) is refused before anything loads.

Config: the training schema extended by one `check` node, in this process only (as
`vicuna_sft.preprocess` does).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .config import (
    SCHEMA_NAME,
    AttentionConfig,
    AttentionImpl,
    Config,
    LossKind,
    Padding,
    Precision,
    register_configs,
    schema_node,
)
from .errors import UserError
from .validation import checked

REPORT_FILE = "check.json"


@dataclass
class CheckOptions:
    # None: trainer.per_device_train_batch_size, at least 4 (so that padding and packing really differ)
    samples: int | None = None
    # None: the compute precision's default (TOLERANCES)
    loss_tol: float | None = None
    logits_tol: float | None = None
    grads_tol: float | None = None


@dataclass
class CheckConfig(Config):
    check: CheckOptions = field(default_factory=CheckOptions)


@dataclass(frozen=True)
class Tolerance:
    loss: float
    logits: float
    grads: float


# Relative tolerances per compute precision (the metrics above: differences scaled by the
# reference's magnitude). Two correct computations of the same function differ only by rounding
# in another order: a few units of the format's precision (eps: fp32 1.2e-7, fp16 and tf32 9.8e-4,
# bf16 7.8e-3) per accumulated step, growing with depth and width. Measured on CPU (docs/check.md:
# every eager/sdpa x padding combination, 8 samples, a 2-layer and an 8-layer/512-wide Llama):
#   fp32  loss <= 1.5e-7, logits <= 1.2e-6, gradients <= 1.8e-6
#   bf16  loss <= 4.6e-5, logits <= 1.7e-2, gradients <= 2.9e-2  (3x from 2 to 8 layers)
# Wrong variants measured the same way: a packed row whose samples see each other gives logits and
# gradients 0.8-1.5 (loss only 8e-4: the loss alone would not show it); a softmax scale off by 1%
# gives logits 1.7e-4-3.3e-3 and gradients 1.0e-2-1.3e-2.
# - fp32: >= 8x above the measured noise (room for 7B depth), below the 1% scale error.
# - bf16: 6-7x above the 8-layer noise (deeper models add more rounding), 8x below a leaked
#   mask; at this precision a 1% scale error is inside the noise and cannot be told apart.
# - fp16 and tf32 (10-bit mantissa, 8x finer than bf16): bf16's divided by 4.
TOLERANCES = {
    "float32": Tolerance(loss=1e-5, logits=1e-5, grads=1e-4),
    "tf32": Tolerance(loss=2.5e-4, logits=2.5e-2, grads=5e-2),
    "float16": Tolerance(loss=2.5e-4, logits=2.5e-2, grads=5e-2),
    "bfloat16": Tolerance(loss=1e-3, logits=1e-1, grads=2e-1),
}

HYDRA_SETTINGS = {
    "job": {"name": "check"},
    "run": {
        "dir": "outputs/check/${hydra.runtime.choices.model}_${hydra.runtime.choices.data}/${now:%Y-%m-%d_%H-%M-%S}"
    },
    "sweep": {"dir": "multirun/check/${now:%Y-%m-%d_%H-%M-%S}"},
    "help": {
        "app_name": "vicuna_sft.check",
        "header": "${hydra.help.app_name}: run one real batch of the configured data through the configured "
        "model\n(attention variant, padding mode, dtype) and through the reference (eager attention, padded "
        "batch),\nprint the largest differences of loss, logits and gradients against the tolerances of the "
        "precision,\nexit 1 past them. Takes the same overrides as `python -m vicuna_sft`, plus "
        "check.samples=N,\ncheck.loss_tol=X, check.logits_tol=X, check.grads_tol=X.\n",
        "footer": "Examples:\n"
        "  python -m vicuna_sft.check data.padding=packed attention=sdpa\n"
        "  python -m vicuna_sft.check experiment=vicuna_7b attention=flash data.path=/data/sharegpt.json\n",
    },
}


class CheckError(UserError):
    pass


def register_check_configs() -> None:
    """The training configs, the root schema extended by `check`, and a primary config `check`."""
    register_configs()
    cs = ConfigStore.instance()
    cs.store(name=SCHEMA_NAME, node=schema_node(CheckConfig))  # conf/config.yaml extends `config_schema`
    cs.store(name="check", node={"defaults": ["config", "_self_"], "hydra": HYDRA_SETTINGS})


def split_config(dcfg: DictConfig) -> tuple[Config, CheckOptions]:
    """The training `Config` (typed and checked as for training) and this command's options."""
    options = OmegaConf.to_object(dcfg.check) if "check" in dcfg else CheckOptions()
    body = OmegaConf.masked_copy(dcfg, [k for k in dcfg if k != "check"])
    return checked(body), options


def reference_config(cfg: Config) -> Config:
    """What the configured variant must agree with: eager attention on a right-padded batch,
    transformers' own loss."""
    return replace(
        cfg,
        attention=AttentionConfig(implementation=AttentionImpl.eager),
        data=replace(cfg.data, padding=Padding.longest),
        loss=replace(cfg.loss, kind=LossKind.full),
    )


# ---------------------------------------------------------------------------------------------
# one pass: loss, logits of the real tokens, gradients


@dataclass
class Pass:
    loss: float
    logits: Any  # [real tokens, vocab] float32 on CPU, samples in order
    grads: dict[str, Any]  # parameter name -> float32 gradient on CPU (parameters that train)


def device_for(cfg: Config) -> str:
    return "cpu" if cfg.trainer.runs_on_cpu() else "cuda"


def compute_precision(cfg: Config, device: str) -> str:
    """The precision the matmuls run in: the autocast's, else the weights' (tf32 when enabled)."""
    dtype = cfg.autocast_dtype().value
    return "tf32" if dtype == "float32" and cfg.trainer.tf32 and device == "cuda" else dtype


def run_pass(cfg: Config, features: list[dict[str, Any]], pad_id: int, device: str) -> Pass:
    """Forward + backward of one batch through the model `load_model(cfg)` builds, collated as
    `cfg.data.padding` says, the loss normalised by the trained-token count as the Trainer does."""
    import torch
    from transformers.utils import logging as hf_logging

    from .data.collate import Collator
    from .data.encode import IGNORE_INDEX
    from .model.loading import load_model

    hf_logging.disable_progress_bar()
    torch.manual_seed(cfg.trainer.seed)  # anything the model build initialises (adapters) matches
    model = load_model(cfg).to(device)
    model.eval()  # dropout off in both passes: they must compute the same function
    batch = Collator(pad_id, cfg.data.padding, cfg.data.max_length)(features)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    # the Trainer's num_items_in_batch: labels that are predicted (position 0 never is)
    n_items = (batch["labels"][..., 1:] != IGNORE_INDEX).sum()
    precision = Precision(cfg.trainer.precision)
    autocast = torch.autocast(
        device_type=device,
        dtype=torch.bfloat16 if precision == Precision.bf16 else torch.float16,
        enabled=precision != Precision.fp32,
    )
    with autocast:
        out = model(**batch, use_cache=False, num_items_in_batch=n_items)
    out.loss.backward()
    logits = out.logits
    if logits is None:  # a loss that never materialises the logits: ask for them separately
        with torch.no_grad(), autocast:
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    # [B, L, V] -> the real tokens in sample order: right-padded rows by mask, a packed row as is
    if "attention_mask" in batch:
        real = logits[batch["attention_mask"].bool()]
    else:
        real = logits.reshape(-1, logits.shape[-1])
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    if missing:
        raise CheckError(f"no gradient reached {len(missing)} trainable parameter(s), e.g. {missing[0]}")
    grads = {n: p.grad.detach().float().cpu() for n, p in trainable}
    result = Pass(float(out.loss.detach().float()), real.detach().float().cpu(), grads)
    del model, out, logits, real
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------
# comparison


@dataclass
class Quantity:
    name: str
    max_abs: float  # largest absolute difference
    relative: float  # the checked metric (see the module doc)
    tolerance: float
    where: str = ""  # the worst sample/token or parameter

    @property
    def ok(self) -> bool:
        return self.relative <= self.tolerance  # NaN fails


def relative_max(a: Any, ref: Any) -> tuple[float, float, int]:
    """(max |a - ref|, that / max |ref|, flat index of the worst entry)."""
    diff = (a - ref).abs()
    worst = int(diff.argmax()) if diff.numel() else 0
    max_abs = float(diff.max()) if diff.numel() else 0.0
    if diff.isnan().any():
        return float("nan"), float("nan"), worst
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs), worst


def compare(got: Pass, ref: Pass, tol: Tolerance, lengths: list[int]) -> list[Quantity]:
    import bisect
    import math

    loss_abs = abs(got.loss - ref.loss)
    loss_rel = loss_abs / abs(ref.loss) if ref.loss else loss_abs
    if math.isnan(got.loss) or math.isnan(ref.loss):
        loss_rel = float("nan")
    quantities = [
        Quantity("loss", loss_abs, loss_rel, tol.loss, f"{got.loss:.6g} vs reference {ref.loss:.6g}")
    ]

    if got.logits.shape != ref.logits.shape:
        raise CheckError(f"logits of {tuple(got.logits.shape)} vs reference {tuple(ref.logits.shape)}")
    max_abs, rel, worst = relative_max(got.logits, ref.logits)
    token = worst // max(got.logits.shape[-1], 1)
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    sample = bisect.bisect_right(starts, token) - 1
    quantities.append(
        Quantity("logits", max_abs, rel, tol.logits, f"sample {sample}, token {token - starts[sample]}")
    )

    if got.grads.keys() != ref.grads.keys():
        raise CheckError(f"trainable parameters differ: {sorted(set(got.grads) ^ set(ref.grads))[:5]}")
    worst_grad = Quantity("gradients", 0.0, 0.0, tol.grads, "")
    for name, g in got.grads.items():
        max_abs, rel, _ = relative_max(g, ref.grads[name])
        if math.isnan(worst_grad.relative):
            break  # a NaN gradient is the worst there is
        if math.isnan(rel) or rel > worst_grad.relative:
            worst_grad = Quantity("gradients", max_abs, rel, tol.grads, name)
    quantities.append(worst_grad)
    return quantities


# ---------------------------------------------------------------------------------------------
# the command


@dataclass
class Report:
    configured: dict[str, str]
    reference: dict[str, str]
    device: str
    precision: str
    samples: int
    tokens: int
    trained_tokens: int
    quantities: list[Quantity]

    @property
    def ok(self) -> bool:
        return all(q.ok for q in self.quantities)

    def failures(self) -> list[str]:
        return [
            f"{q.name} {'differs' if q.name == 'loss' else 'differ'} from the reference by {q.relative:.3g} "
            f"relative (tolerance {q.tolerance:.3g}, "
            f"max |diff| {q.max_abs:.3g}, at {q.where})"
            for q in self.quantities
            if not q.ok
        ]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for q, dq in zip(self.quantities, d["quantities"]):
            dq["ok"] = q.ok
        return {**d, "ok": self.ok}


def describe(cfg: Config) -> dict[str, str]:
    return {
        "attention": cfg.attention.implementation.value,
        "padding": cfg.data.padding.value,
        "loss": cfg.loss.kind.value,
    }


def batch_features(cfg: Config, tokenizer: Any, n: int) -> list[dict[str, Any]]:
    """The first `n` training samples with a trained token, read and encoded as training does
    (every source with its weight and system prompt, the eval split, data.long)."""
    from .data.dataset import read_splits
    from .data.encode import Encoder

    convs, _, _ = read_splits(cfg.data, cfg.trainer.seed)
    encoder = Encoder.for_data(cfg.data, tokenizer)
    features: list[dict[str, Any]] = []
    for start in range(0, len(convs), 64):
        for e in encoder.encode_batch(convs[start : start + 64]):
            if e.trained_tokens:
                features.append({"input_ids": e.input_ids, "labels": e.labels})
        if len(features) >= n:
            return features[:n]
    if not features:
        from .data.sources import describe

        raise CheckError(f"{describe(cfg.data)}: no sample with a trained token")
    return features


def check(cfg: Config, options: CheckOptions | None = None) -> Report:
    """The check as a function (what the command runs), for a value-checked config
    (`validation.checked`, as the command composes it)."""
    from .data.collate import pad_id_for
    from .data.encode import IGNORE_INDEX
    from .model.loading import check_attention, check_loss, load_tokenizer

    options = options or CheckOptions()
    check_attention(cfg)
    check_loss(cfg)  # e.g. attention=flash without CUDA: refused before anything loads
    if options.samples is not None and options.samples < 1:
        raise CheckError(f"check.samples must be >= 1, got {options.samples}")
    for key in ("loss_tol", "logits_tol", "grads_tol"):
        value = getattr(options, key)
        if value is not None and not value >= 0:
            raise CheckError(f"check.{key} must be >= 0, got {value}")
    n = options.samples or max(4, cfg.trainer.per_device_train_batch_size)
    device = device_for(cfg)
    precision = compute_precision(cfg, device)
    default = TOLERANCES[precision]
    tol = Tolerance(
        loss=options.loss_tol if options.loss_tol is not None else default.loss,
        logits=options.logits_tol if options.logits_tol is not None else default.logits,
        grads=options.grads_tol if options.grads_tol is not None else default.grads,
    )
    import torch

    if device == "cuda":  # as TrainingArguments(tf32=...) sets it for a run
        torch.backends.cuda.matmul.allow_tf32 = bool(cfg.trainer.tf32)
    tokenizer = load_tokenizer(cfg.model)
    features = batch_features(cfg, tokenizer, n)
    pad_id = pad_id_for(tokenizer)
    ref_cfg = reference_config(cfg)
    got = run_pass(cfg, features, pad_id, device)
    ref = run_pass(ref_cfg, features, pad_id, device)
    lengths = [len(f["input_ids"]) for f in features]
    return Report(
        configured=describe(cfg),
        reference=describe(ref_cfg),
        device=device,
        precision=precision,
        samples=len(features),
        tokens=sum(lengths),
        trained_tokens=sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in features),
        quantities=compare(got, ref, tol, lengths),
    )


def print_report(r: Report, cfg: Config, path: str | None) -> None:
    def variant(d: dict[str, str]) -> str:
        return ", ".join(f"{k}={v}" for k, v in d.items())

    lines = [
        f"vicuna_sft.check: {variant(r.configured)}  vs reference  {variant(r.reference)}",
        f"  model {cfg.model.name_or_path} ({cfg.model.dtype.value} weights, precision "
        f"{cfg.trainer.precision.value}: tolerances for {r.precision}) on {r.device}",
        f"  batch {r.samples} samples of {cfg.data.path}: {r.tokens} tokens, {r.trained_tokens} trained",
        f"  {'':<10} {'max |diff|':>11} {'relative':>10} {'tolerance':>10}",
    ]
    for q in r.quantities:
        lines.append(
            f"  {q.name:<10} {q.max_abs:>11.3e} {q.relative:>10.3e} {q.tolerance:>10.1e}  "
            f"{'ok' if q.ok else 'FAIL'}  ({q.where})"
        )
    if r.ok:
        lines.append("vicuna_sft.check: passed" + (f" (report: {path})" if path else ""))
    else:
        lines += [f"vicuna_sft.check: FAILED: {msg}" for msg in r.failures()]
    print("\n".join(lines), flush=True)


def check_command(dcfg: DictConfig, out: str | None = None) -> int:
    """Compose -> check -> print and write the report; returns the exit status."""
    cfg, options = split_config(dcfg)
    report = check(cfg, options)
    path = None
    if out:
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, REPORT_FILE)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(report.as_dict(), f, indent=2)
    print_report(report, cfg, path)
    return 0 if report.ok else 1


@hydra.main(version_base="1.3", config_path="pkg://vicuna_sft.conf", config_name="check")
def _hydra_main(dcfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        status = check_command(dcfg, HydraConfig.get().runtime.output_dir)
    except UserError as e:
        print(f"vicuna_sft.check: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)


def main() -> None:
    """Console script `vicuna-sft-check` and `python -m vicuna_sft.check`."""
    register_check_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
