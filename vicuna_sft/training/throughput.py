"""Throughput in the training logs: tokens/s, padding, model FLOPs utilisation, and the run's ETA.

`Throughput` (a TrainerCallback) counts, per optimizer step on every rank, what the model was fed
(a forward pre-hook on the model instance, training mode only), times the steps (save, eval and
logging excluded) and, at each training log, adds over all ranks since the previous log:

- `nonpad_tokens_per_second`: real tokens (padding excluded) per second
- `trained_tokens_per_second`: tokens with a label (the assistant replies) per second
- `padding_fraction`: pad positions / all positions fed
- `mfu` (CUDA only, for a device in `PEAK_TFLOPS`, bf16/fp16 compute): model FLOPs / (time x peak
  x ranks). On CPU or an unknown GPU none is claimed (the key is absent; the log says why once).

`EtaProgress` replaces the Trainer's progress bar with one that shows the remaining time at the
measured seconds per optimizer step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from transformers import ProgressCallback, TrainerCallback

from ..data.encode import IGNORE_INDEX

log = logging.getLogger("vicuna_sft")

# Dense (no sparsity) bf16/fp16 tensor-core peak per device, TFLOP/s, from the vendors' data sheets.
# Matched in order against the whole words of torch.cuda.get_device_name() ("-" separates words
# too: "NVIDIA A100-SXM4-80GB"), so "L4" is not "L40" and "A10" is not "A100"; a variant before
# its base name ("H200 NVL" before "H200").
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("GH200", 989.0),
    ("H200 NVL", 835.0),
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H800", 989.0),
    ("A100", 312.0),  # SXM4 and PCIe
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
)


def peak_flops(device_name: str, half_precision: bool) -> float | None:
    """FLOP/s of one device for bf16/fp16 matmuls; None when not known (then no MFU is claimed).
    fp32 training has no entry: its peak depends on TF32 settings per kernel."""
    if not half_precision:
        return None
    words = device_name.replace("-", " ").split()
    for pattern, tflops in PEAK_TFLOPS:
        p = pattern.split()
        if any(words[i : i + len(p)] == p for i in range(len(words))):
            return tflops * 1e12
    return None


@dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs of a decoder-only transformer with gated MLPs (Llama family), PaLM's
    convention (appendix B): per token 6 * N for the matmul weights N (forward 2N, backward 4N)
    plus 12 * layers * (heads * head_dim) * s for attention scores and values over a sequence of
    length s (causal masking not discounted). Embedding lookups are not matmuls: excluded;
    the LM head is: included."""

    matmul_params: int
    layers: int
    attention_width: int  # heads * head_dim

    @classmethod
    def from_config(cls, config: Any) -> FlopsModel | None:
        """None when the config lacks a field the formula needs (no claim for unknown shapes)."""
        try:
            d, f, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
            heads, vocab = config.num_attention_heads, config.vocab_size
        except AttributeError:
            return None
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or d // heads
        attention = d * heads * head_dim + 2 * d * kv_heads * head_dim + heads * head_dim * d  # q, k, v, o
        mlp = 3 * d * f  # gate, up, down
        return cls(n_layers * (attention + mlp) + d * vocab, n_layers, heads * head_dim)

    def flops_per_token(self, seq_len: float) -> float:
        return 6 * self.matmul_params + 12 * self.layers * self.attention_width * seq_len

    def flops(self, tokens: float, sum_squared_lengths: float) -> float:
        """Over sequences of lengths s_i: sum_i s_i * flops_per_token(s_i)."""
        return 6 * self.matmul_params * tokens + 12 * self.layers * self.attention_width * sum_squared_lengths


def mfu_basis(
    device_type: str, device_name: str | None, half_precision: bool, config: Any
) -> tuple[FlopsModel | None, float | None, str | None]:
    """(FLOPs model, peak FLOP/s of one device, None) when an MFU can be claimed, else
    (None, None, why not)."""
    if device_type != "cuda":
        return None, None, f"no peak FLOP/s for {device_type}"
    flops_model = FlopsModel.from_config(config)
    if flops_model is None:
        return None, None, "the model config lacks a field of the FLOPs formula"
    if not half_precision:
        return None, None, f"fp32 compute on {device_name} (peaks are known for bf16/fp16 only)"
    peak = peak_flops(device_name or "", half_precision)
    if peak is None:
        return None, None, f"unknown device {device_name!r} (no peak in PEAK_TFLOPS)"
    return flops_model, peak, None


# counters accumulated on the device between logs (no host sync per step)
POSITIONS, NONPAD, TRAINED, SQUARED_LENGTHS = range(4)


def batch_counts(inputs: dict[str, Any]) -> Any:
    """[positions, non-pad tokens, trained tokens, sum of squared sequence lengths] of one batch:
    padded rows ([B, L] with attention_mask) or packed rows ([1, T], sequences restart position_ids)."""
    import torch

    ids = inputs["input_ids"]
    mask, labels, positions = inputs.get("attention_mask"), inputs.get("labels"), inputs.get("position_ids")
    total = torch.tensor(ids.numel(), device=ids.device)
    if mask is not None:
        lengths = mask.sum(-1)
        nonpad, squared = lengths.sum(), (lengths.long() ** 2).sum()
    elif positions is not None:
        # packed: no padding; a sequence of length s holds positions 0..s-1, and the sum of
        # (2p + 1) over them is s^2, so no per-sequence split (and no host sync) is needed
        nonpad, squared = total.clone(), (2 * positions.long() + 1).sum()
    else:
        nonpad, squared = total.clone(), total * ids.shape[-1]
    trained = (labels != IGNORE_INDEX).sum() if labels is not None else torch.zeros_like(total)
    return torch.stack([total, nonpad, trained, squared]).long()


class StepTimer:
    """Seconds spent in optimizer steps: from the end of one step (or the train start) to the end
    of the next, with the time of saves, evals and logs (which happen after a step ends) left out."""

    def __init__(self) -> None:
        self.mark: float | None = None
        self.seconds = 0.0
        self.steps = 0

    def resume(self) -> None:
        self.mark = time.perf_counter()

    def step_end(self) -> None:
        now = time.perf_counter()
        if self.mark is not None:
            self.seconds += now - self.mark
            self.steps += 1
        self.mark = now

    def seconds_per_step(self) -> float | None:
        return self.seconds / self.steps if self.steps else None


class Throughput(TrainerCallback):
    """Counts and times the steps; `log_metrics` is called by the Trainer (training/trainer.py)
    for each training log, before the log is recorded and sent to the loggers."""

    def __init__(self) -> None:
        self.timer = StepTimer()
        self.counts: Any = None
        self.flops_model: FlopsModel | None = None
        self.peak: float | None = None
        self._hook: Any = None
        self._logged_seconds = 0.0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        import torch

        self.counts = torch.zeros(4, dtype=torch.long, device=args.device)
        if self._hook is None and model is not None:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        name, half = None, False
        if args.device.type == "cuda":
            name = torch.cuda.get_device_name(args.device)
            half = args.bf16 or args.fp16 or getattr(model, "dtype", None) in (torch.bfloat16, torch.float16)
        self.flops_model, self.peak, why_not = mfu_basis(
            args.device.type, name, half, getattr(model, "config", None)
        )
        if why_not and state.is_world_process_zero:
            log.info("MFU not claimed: %s", why_not)
        self.timer.resume()
        return control

    def _count(self, module, args, kwargs):
        if module.training and self.counts is not None and "input_ids" in kwargs:
            self.counts += batch_counts(kwargs).to(self.counts.device)

    def on_step_end(self, args, state, control, **kwargs):
        self.timer.step_end()
        return control

    # the time of saves, evals and logs is not training time
    def on_save(self, args, state, control, **kwargs):
        self.timer.resume()
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        self.timer.resume()
        return control

    def on_log(self, args, state, control, **kwargs):
        self.timer.resume()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        return control

    def log_metrics(self, world_size: int) -> dict[str, float]:
        """Throughput since the previous call, over all ranks. Collective: every rank calls it
        (the Trainer logs on every rank)."""
        if self.counts is None:
            return {}
        import torch.distributed as dist

        counts = self.counts.clone()
        self.counts.zero_()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(counts)
        positions, nonpad, trained, squared = counts.tolist()
        seconds = self.timer.seconds - self._logged_seconds
        self._logged_seconds = self.timer.seconds
        if seconds <= 0 or positions == 0:
            return {}
        metrics = {
            "nonpad_tokens_per_second": round(nonpad / seconds, 2),
            "trained_tokens_per_second": round(trained / seconds, 2),
            "padding_fraction": round(1 - nonpad / positions, 4),
        }
        if self.peak is not None and self.flops_model is not None:
            flops = self.flops_model.flops(nonpad, squared)
            metrics["mfu"] = round(flops / (seconds * self.peak * world_size), 4)
        return metrics


def format_eta(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))


class EtaProgress(ProgressCallback):
    """The Trainer's progress bar, plus `eta H:MM:SS` from the measured seconds per optimizer step
    of this process (a resumed run measures its own steps; saves and evals are not steps)."""

    def __init__(self) -> None:
        super().__init__()
        self.timer = StepTimer()

    # tqdm's own bar without its `<remaining`: that one extrapolates wall time per step from the
    # whole run so far (saves, evals and the first slow steps included) and disagreed with ours
    BAR_FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if self.training_bar is not None:
            self.training_bar.bar_format = self.BAR_FORMAT
        self.timer.resume()

    def on_step_end(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control, **kwargs)
        self.timer.step_end()
        per_step = self.timer.seconds_per_step()
        if self.training_bar is not None and per_step is not None:
            remaining = max(state.max_steps - state.global_step, 0) * per_step
            self.training_bar.set_postfix_str(f"eta {format_eta(remaining)}", refresh=False)

    def on_save(self, args, state, control, **kwargs):
        self.timer.resume()

    def on_evaluate(self, args, state, control, **kwargs):
        super().on_evaluate(args, state, control, **kwargs)
        self.timer.resume()

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        self.timer.resume()
