"""The causal-LM loss, chosen per model instance (the `loss` config group).

full     transformers' own: `lm_head` projects every position to fp32 logits [batch, seq, vocab],
         then cross-entropy; the logits and their gradient are the peak of most fine-tuning runs.
chunked  `lm_head` and cross-entropy only at the positions whose shifted label is trained
         (!= -100), `loss.chunk_tokens` positions at a time; backward recomputes each chunk's
         logits instead of keeping them. The largest vocab-sized tensor is [chunk_tokens, vocab].
liger    the same trained positions through liger-kernel's fused linear cross-entropy
         (Triton, CUDA only; `pip install 'vicuna_sft[liger]'`).

How it is installed (`install`): this instance's `forward` is replaced by one that, when labels
are given, calls the model's own forward without them and with `logits_to_keep` = no position
(so `lm_head` projects nothing), takes the final hidden states from a one-call forward hook on
the decoder, and computes the loss itself. Without labels (inference, generation) it is the
model's own forward, unchanged. Rebinding `forward` on the instance is what accelerate does for
autocast; no class is touched. Because the loss is computed inside the model's forward:
- FSDP2 has `lm_head`'s weight (or the tied embedding) all-gathered, and reduces its gradient;
- accelerate's autocast covers it (bf16 runs project in bf16 and take the loss in fp32, as `full`);
- PEFT's wrappers call this instance, so `get_peft_model` after `install` keeps it (an adapter
  on lm_head itself is refused at the first forward: its weights would be bypassed).
Why not less: setting `model.loss_function` alone cannot help, because LlamaForCausalLM.forward
projects every kept position through lm_head before calling it; and module hooks around the
root would run outside accelerate's autocast wrapper and after FSDP's post-forward hook.

Normalisation is transformers' `ForCausalLMLoss`: the sum over trained tokens divided by
`num_items_in_batch` when the Trainer passes it (trained tokens across gradient accumulation and
ranks), else the mean over this batch's trained tokens. With labels, the output carries the loss
and no logits (not building them is the point); the Trainer's train and eval steps need only the loss.
"""

from __future__ import annotations

import functools
import inspect
import logging
from types import MethodType
from typing import Any

from ..config import Config, LossConfig, LossKind
from ..data.encode import IGNORE_INDEX
from ..errors import UserError

log = logging.getLogger(__name__)


class LossUnavailable(UserError, RuntimeError):
    pass


def check(cfg: Config) -> None:
    """The loss variant's refusals, before any process starts, data is encoded or weights load."""
    if LossKind(cfg.loss.kind) != LossKind.liger:
        return
    import importlib.util

    import torch

    from ..plan import cuda_available

    if not cuda_available():
        raise LossUnavailable(
            f"loss=liger runs Triton kernels on a CUDA GPU and none is visible here (torch {torch.__version__}); "
            "use loss=chunked (runs everywhere, same math)"
        )
    if importlib.util.find_spec("liger_kernel") is None:
        raise LossUnavailable(
            "loss=liger needs the liger-kernel package: pip install 'vicuna_sft[liger]' (or use loss=chunked)"
        )


def install(model: Any, cfg: LossConfig) -> Any:
    """Make this model instance compute its loss as `cfg.kind` says (idempotent, instance-only)."""
    kind = LossKind(cfg.kind)
    if kind == LossKind.full:
        return model
    if getattr(model, "_vicuna_sft_loss", None) is not None:
        if model._vicuna_sft_loss != kind:
            raise ValueError(f"loss={model._vicuna_sft_loss.value} is already installed on this model")
        return model
    _check_model(model, kind)
    if kind == LossKind.liger:
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        fused = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")

        def loss_sum(hidden: Any, weight: Any, bias: Any, targets: Any) -> Any:
            return fused(weight, hidden, targets, bias)

    else:
        chunk = cfg.chunk_tokens

        def loss_sum(hidden: Any, weight: Any, bias: Any, targets: Any) -> Any:
            return chunked_cross_entropy_sum(hidden, weight, bias, targets, chunk)

    original = model.forward  # bound; may already carry other per-instance wrappers
    decoder = model.get_decoder()

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        labels = kwargs.pop("labels", None)
        shift_labels = kwargs.pop("shift_labels", None)
        if (labels is None and shift_labels is None) or not _keeps_all(kwargs.get("logits_to_keep", 0)):
            # inference / generation, or a caller choosing logits itself: the model's own forward
            if labels is not None:
                kwargs["labels"] = labels
            if shift_labels is not None:
                kwargs["shift_labels"] = shift_labels
            return original(*args, **kwargs)
        return_dict = kwargs.pop("return_dict", None)
        captured: list[Any] = []
        hook = decoder.register_forward_hook(lambda _m, _a, out: captured.append(out[0]))
        try:
            device = (labels if labels is not None else shift_labels).device
            no_position = _empty_index(device)
            out = original(*args, logits_to_keep=no_position, return_dict=True, **kwargs)
        finally:
            hook.remove()
        if len(captured) != 1:
            raise RuntimeError(
                f"loss={kind.value}: expected one decoder call per forward, saw {len(captured)}"
            )
        hidden, targets = trained_positions(captured[0], labels, shift_labels)
        # looked up per call: an adapter applied after install may have replaced lm_head
        head = _plain_head(self.get_output_embeddings(), kind)
        total = loss_sum(hidden, head.weight, head.bias, targets)
        num_items = kwargs.get("num_items_in_batch")
        if num_items is None:
            num_items = targets.numel()  # mean over this batch's trained tokens (nan for none, as `full`)
        elif hasattr(num_items, "to"):
            num_items = num_items.to(total.device)
        fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
        result = type(out)(loss=total / num_items, **fields)
        return result.to_tuple() if return_dict is False else result

    # Signature of the model's own forward: the Trainer reads it (loss kwargs, input columns).
    # Deliberately no `__wrapped__`: accelerate's unwrap_model follows that chain and would drop this wrapper.
    forward.__signature__ = inspect.signature(type(model).forward)  # type: ignore[attr-defined]
    model.forward = MethodType(forward, model)
    model._vicuna_sft_loss = kind
    log.info("loss=%s installed on %s", kind.value, type(model).__name__)
    return model


def _check_model(model: Any, kind: LossKind) -> None:
    """The output head must be a plain Linear applied as is to the decoder's output."""
    name = type(model).__name__
    params = inspect.signature(type(model).forward).parameters
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    problems = []
    if "logits_to_keep" not in params or not hasattr(model, "get_decoder"):
        problems.append("its forward takes no `logits_to_keep` or it has no decoder")
    if not _is_plain_linear(head):
        problems.append(f"its output head is {type(head).__name__}, not a torch.nn.Linear with float weights")
    problems += _config_problems(getattr(model, "config", None))
    if problems:
        raise LossUnavailable(f"loss={kind.value} cannot run on {name}: {'; '.join(problems)}; use loss=full")


def check_model_config(cfg: LossConfig, config: Any) -> None:
    """What the model's config alone tells, before any weight loads (load_model calls this)."""
    kind = LossKind(cfg.kind)
    problems = _config_problems(config) if kind != LossKind.full else []
    if problems:
        model_type = getattr(config, "model_type", type(config).__name__)
        raise LossUnavailable(
            f"loss={kind.value} cannot run on {model_type}: {'; '.join(problems)}; use loss=full"
        )


def _config_problems(config: Any) -> list[str]:
    """Logit transforms after lm_head (Gemma 2's softcapping, Cohere's scale) that a projection with
    lm_head's weight alone would skip."""
    return [
        f"its logits are transformed after lm_head (config.{attr})"
        for attr in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")
        if getattr(config, attr, None) not in (None, 1, 1.0)
    ]


def _is_plain_linear(head: Any) -> bool:
    """A Linear whose weight is the projection itself (not a 4-bit container, not an adapter wrapper)."""
    import torch

    return isinstance(head, torch.nn.Linear) and head.weight.is_floating_point()


def _plain_head(head: Any, kind: LossKind) -> Any:
    if not _is_plain_linear(head):
        raise LossUnavailable(
            f"loss={kind.value} projects with lm_head's weight, but lm_head is now a {type(head).__name__} "
            "(an adapter or modules_to_save on lm_head?): its extra weights would be ignored; "
            "leave lm_head out of the adapter, or use loss=full"
        )
    return head


def _keeps_all(logits_to_keep: Any) -> bool:
    """transformers' default (0: every position); a tensor or a count is the caller's own choice."""
    return isinstance(logits_to_keep, int) and logits_to_keep == 0


def _empty_index(device: Any) -> Any:
    import torch

    return torch.empty(0, dtype=torch.long, device=device)


def trained_positions(hidden: Any, labels: Any, shift_labels: Any = None) -> tuple[Any, Any]:
    """hidden [B, L, H], labels [B, L] -> (hidden [N, H], targets [N]) at the N positions whose next
    label is trained. Same shift as transformers (position t predicts labels[t + 1], per row);
    packed rows are already masked at sample boundaries by the collator."""
    import torch

    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    flat = shift_labels.reshape(-1).to(hidden.device)
    index = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, index), flat.index_select(0, index)


def chunked_cross_entropy_sum(hidden: Any, weight: Any, bias: Any, targets: Any, chunk_tokens: int) -> Any:
    """sum_i cross_entropy(hidden[i] @ weight.T + bias, targets[i]), in fp32, `chunk_tokens` rows at a time.

    Projection dtype as `full` gets it: the autocast dtype when autocast is on, else the weights'."""
    import torch

    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
    return _function().apply(hidden, weight, bias, targets, chunk_tokens, dtype)


@functools.cache
def _function() -> Any:
    import torch
    import torch.nn.functional as F

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """Forward keeps the loss, its inputs and each row's log-sum-exp ([N] fp32). Backward
        recomputes each chunk's logits, turns them in place into d loss / d logits =
        softmax - onehot = exp(logits - lse) - onehot, and projects that back onto hidden and
        weight: one [chunk, vocab] fp32 buffer at a time (plus its cast under bf16)."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, chunk, dtype):  # type: ignore[override]
            # hidden [N, H], weight [V, H], bias [V] or None, targets [N] (all trained)
            with torch.autocast(hidden.device.type, enabled=False):
                h, w = hidden.to(dtype), weight.to(dtype)
                b = bias.to(dtype) if bias is not None else None
                lse = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
                target_logit = torch.empty_like(lse)
                for s in range(0, h.shape[0], chunk):
                    logits = F.linear(h[s : s + chunk], w, b).float()  # [c, V]
                    torch.logsumexp(logits, dim=-1, out=lse[s : s + chunk])
                    target_logit[s : s + chunk] = logits.gather(1, targets[s : s + chunk, None]).squeeze(1)
                total = (lse - target_logit).sum()  # sum of -log softmax(logits)[target]
            ctx.save_for_backward(hidden, weight, bias, targets, lse)
            ctx.chunk, ctx.dtype = chunk, dtype
            return total

        @staticmethod
        def backward(ctx, grad_total):  # type: ignore[override]
            hidden, weight, bias, targets, lse = ctx.saved_tensors
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            chunk, dtype = ctx.chunk, ctx.dtype
            with torch.autocast(hidden.device.type, enabled=False):
                h, w = hidden.to(dtype), weight.to(dtype)
                b = bias.to(dtype) if bias is not None else None
                grad_h = torch.empty_like(h) if need_h else None
                # accumulated over chunks in fp32, returned in the weights' dtype
                grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
                grad_b = torch.zeros(w.shape[0], dtype=torch.float32, device=w.device) if need_b else None
                scale = grad_total.float()
                for s in range(0, h.shape[0], chunk):
                    hc, tc = h[s : s + chunk], targets[s : s + chunk]
                    g = F.linear(hc, w, b).float()  # [c, V] logits, then their gradient in place
                    g.sub_(lse[s : s + chunk, None]).exp_()  # softmax
                    g[torch.arange(g.shape[0], device=g.device), tc] -= 1.0
                    g.mul_(scale)
                    if need_b:
                        grad_b.add_(g.sum(dim=0))
                    gc = g.to(dtype)  # [c, V]
                    if need_h:
                        torch.mm(gc, w, out=grad_h[s : s + chunk])
                    if need_w:
                        if gc.dtype == torch.float32:
                            grad_w.addmm_(gc.t(), hc)
                        else:
                            grad_w.add_(gc.t() @ hc)
            return (
                grad_h.to(hidden.dtype) if need_h else None,
                grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None,
                None,
                None,
                None,
            )

    return ChunkedLinearCrossEntropy  # built on first use: importing this module needs no torch
