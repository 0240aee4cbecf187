"""loss=chunked and loss=liger against loss=full on a CUDA device (skipped cleanly without one;
loss=liger also needs the `liger` extra): loss and every gradient in fp32, the loss under bf16
autocast, and the peak CUDA memory of a forward + backward at a Llama-3-sized vocabulary."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

from vicuna_sft.config import LossConfig, LossKind
from vicuna_sft.model.loss import install

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

KINDS = [
    LossKind.chunked,
    pytest.param(
        LossKind.liger,
        marks=pytest.mark.skipif(
            importlib.util.find_spec("liger_kernel") is None, reason="pip install 'vicuna_sft[liger]'"
        ),
    ),
]


def _model(vocab: int, hidden: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        use_cache=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).cuda()


def _batch(vocab: int, rows: int = 2, length: int = 2048) -> dict:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, : length // 2] = -100  # the prompt half
    return {"input_ids": ids.cuda(), "labels": labels.cuda()}


def _step(model, batch) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    n = (batch["labels"][:, 1:] != -100).sum()
    loss = model(**batch, num_items_in_batch=n).loss
    loss.backward()
    return loss.detach(), {k: p.grad.detach().clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("kind", KINDS)
def test_matches_full_in_fp32(kind):
    torch.backends.cuda.matmul.allow_tf32 = False
    full = _model(32000)
    other = install(copy.deepcopy(full), LossConfig(kind))
    batch = _batch(32000)
    ref, got = _step(full, batch), _step(other, batch)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    for name, g in got[1].items():
        torch.testing.assert_close(g, ref[1][name], rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_loss_close_and_peak_memory_at_most_half(kind):
    vocab = 128256
    full = _model(vocab)
    other = install(copy.deepcopy(full), LossConfig(kind))
    batch = _batch(vocab, rows=4)
    peaks, losses = {}, {}
    for name, model in (("full", full), ("other", other)):
        _step(model, batch)  # warm-up
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            losses[name] = _step(model, batch)[0]
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
    print(
        f"loss={kind.value}: peak above baseline {peaks['other'] / 2**20:.0f} MiB vs full {peaks['full'] / 2**20:.0f} MiB"
    )
    torch.testing.assert_close(losses["other"], losses["full"], rtol=1e-2, atol=1e-2)
    assert peaks["other"] <= 0.5 * peaks["full"], peaks
