"""Throughput numbers: the FLOPs formula against real model instances, the device peaks, the
per-batch counts for padded and packed batches, and tokens/s from a counted, timed run."""

import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from vicuna_sft.data.collate import Collator, pack
from vicuna_sft.data.encode import IGNORE_INDEX
from vicuna_sft.training.throughput import (
    FlopsModel,
    Throughput,
    batch_counts,
    format_eta,
    mfu_basis,
    peak_flops,
)

LLAMA2_7B = LlamaConfig(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
)
MISTRAL_7B = LlamaConfig(  # grouped-query attention: 8 key/value heads
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=32000,
)


def linear_params(config):
    """What the formula counts: every nn.Linear weight of the real model (no data: meta device)."""
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


@pytest.mark.parametrize("config", [LLAMA2_7B, MISTRAL_7B], ids=["llama2-7b", "mistral-7b-gqa"])
def test_matmul_params_equal_the_linear_weights_of_the_model(config):
    assert FlopsModel.from_config(config).matmul_params == linear_params(config)


def test_flops_per_token_by_hand():
    fm = FlopsModel.from_config(LLAMA2_7B)
    # Llama-2-7B: 6.74e9 parameters less the 32000 x 4096 input embedding
    assert fm.matmul_params == 6_607_077_376
    # 6N + 12 * layers * width * s at s = 2048: 39.64e9 + 3.22e9
    assert fm.flops_per_token(2048) == 6 * 6_607_077_376 + 12 * 32 * 4096 * 2048 == 42_863_689_728
    lengths = [100, 300, 7]
    by_sequence = sum(s * fm.flops_per_token(s) for s in lengths)
    assert fm.flops(sum(lengths), sum(s * s for s in lengths)) == by_sequence


def test_flops_model_refuses_configs_it_does_not_know():
    class Odd:  # no intermediate_size: not the shape the formula describes
        hidden_size, num_hidden_layers, num_attention_heads, vocab_size = 8, 2, 2, 10

    assert FlopsModel.from_config(Odd()) is None
    assert FlopsModel.from_config(None) is None


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H200", 989),
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A100 80GB PCIe", 312),
        ("NVIDIA L40S", 362),
        ("NVIDIA L4", 121),
        # whole words: a name's variant is not its base device, nor the reverse
        ("NVIDIA H200 NVL", 835),
        ("NVIDIA L40", 181),
        ("NVIDIA A10", 125),
        ("NVIDIA A10G", 70),
        ("NVIDIA A1000", None),
        ("Tesla T4", None),  # unknown: no claim
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_device_peaks(name, tflops):
    assert peak_flops(name, half_precision=True) == (tflops * 1e12 if tflops else None)


def test_no_peak_claimed_for_fp32():
    assert peak_flops("NVIDIA H100 80GB HBM3", half_precision=False) is None


def features():
    # three samples of lengths 3, 5, 2; trained tokens marked by labels != IGNORE_INDEX
    lab = IGNORE_INDEX
    return [
        {"input_ids": [1, 5, 6], "labels": [lab, lab, 6]},
        {"input_ids": [1, 7, 8, 9, 2], "labels": [lab, lab, 8, 9, 2]},
        {"input_ids": [1, 4], "labels": [lab, 4]},
    ]


def test_counts_of_a_padded_batch():
    batch = Collator(pad_id=0)(features())  # [3, 5], right padding
    positions, nonpad, trained, squared = batch_counts(batch).tolist()
    assert (positions, nonpad, trained, squared) == (15, 10, 5, 9 + 25 + 4)


def test_counts_of_a_packed_batch_match_the_padded_one():
    batch = pack(features())  # [1, 10], no padding; the first label of each sample is ignored anyway
    assert batch["input_ids"].shape == (1, 10)
    assert batch_counts(batch).tolist() == [10, 10, 5, 9 + 25 + 4]


def test_tokens_per_second_of_a_counted_timed_run(tiny_dir):
    """The forward pre-hook counts training forwards only; rates are counts / measured step time."""
    from types import SimpleNamespace

    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    args = SimpleNamespace(device=torch.device("cpu"), bf16=False, fp16=False)
    state = SimpleNamespace(is_world_process_zero=True)
    cb = Throughput()
    cb.on_train_begin(args, state, None, model=model)
    padded, packed = Collator(pad_id=0)(features()), pack(features())
    model.train()
    for batch in (padded, packed):  # two optimizer steps
        model(**batch, use_cache=False)
        cb.on_step_end(args, state, None)
    model.eval()
    model(**padded, use_cache=False)  # eval forwards are not counted
    seconds = cb.timer.seconds
    m = cb.log_metrics(world_size=1)
    assert m["nonpad_tokens_per_second"] == pytest.approx(20 / seconds, rel=1e-3)
    assert m["trained_tokens_per_second"] == pytest.approx(10 / seconds, rel=1e-3)
    assert m["padding_fraction"] == pytest.approx(1 - 20 / 25, abs=1e-4)
    assert "mfu" not in m  # CPU: no MFU claimed
    assert cb.log_metrics(world_size=1) == {}  # nothing new since the last log
    cb.on_train_end(args, state, None)
    model.train()
    model(**padded, use_cache=False)
    assert cb.counts.sum().item() == 0  # the hook is gone after training


def test_eta_format():
    assert format_eta(3725.4) == "1:02:05"


def test_mfu_is_claimed_only_with_a_known_gpu_half_precision_and_a_known_shape():
    fm, peak, why = mfu_basis("cuda", "NVIDIA H100 80GB HBM3", True, LLAMA2_7B)
    assert (fm.matmul_params, peak, why) == (6_607_077_376, 989e12, None)
    assert mfu_basis("cpu", None, False, LLAMA2_7B) == (None, None, "no peak FLOP/s for cpu")
    assert (
        mfu_basis("cuda", "Tesla T4", True, LLAMA2_7B)[2]
        == "unknown device 'Tesla T4' (no peak in PEAK_TFLOPS)"
    )
    assert mfu_basis("cuda", "NVIDIA H200", False, LLAMA2_7B)[2].startswith("fp32 compute on NVIDIA H200")
    assert (
        mfu_basis("cuda", "NVIDIA H200", True, None)[2]
        == "the model config lacks a field of the FLOPs formula"
    )


def test_mfu_arithmetic(tiny_dir):
    """With a peak (as on a GPU): model FLOPs of the counted tokens / (seconds x peak x ranks)."""
    from types import SimpleNamespace

    model = LlamaForCausalLM.from_pretrained(tiny_dir)
    args = SimpleNamespace(device=torch.device("cpu"), bf16=False, fp16=False)
    state = SimpleNamespace(is_world_process_zero=True)
    cb = Throughput()
    cb.on_train_begin(args, state, None, model=model)
    cb.flops_model, cb.peak = FlopsModel.from_config(model.config), 1e9  # a 1 GFLOP/s "device"
    model.train()
    model(**pack(features()), use_cache=False)
    cb.on_step_end(args, state, None)
    seconds = cb.timer.seconds
    m = cb.log_metrics(world_size=2)
    flops = cb.flops_model.flops(10, 9 + 25 + 4)
    assert m["mfu"] == pytest.approx(flops / (seconds * 1e9 * 2), abs=1e-4)
    cb.on_train_end(args, state, None)


def test_the_progress_bar_shows_one_eta(capsys):
    """Issue 21, item 8: tqdm's `<remaining` and our `eta` disagreed on the same bar."""
    from types import SimpleNamespace

    from vicuna_sft.training.throughput import EtaProgress

    cb, args = EtaProgress(), SimpleNamespace()
    state = SimpleNamespace(is_world_process_zero=True, max_steps=10, global_step=0)
    cb.on_train_begin(args, state, None)
    for _ in range(3):
        state.global_step += 1
        cb.on_step_end(args, state, None)
    bar = str(cb.training_bar)
    cb.training_bar.close()
    assert "3/10 [" in bar and re.search(r"eta \d+:\d\d:\d\d\]$", bar), bar
    assert "<" not in bar, bar  # no second, tqdm-estimated remaining time
