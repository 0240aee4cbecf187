"""Padding modes side by side: FastChat's `max_length`, `longest`, and padding-free `packed`.

The same tiny-but-not-trivial GQA Llama (4 layers, hidden 128, 4 heads / 2 kv heads, ~1.2M
parameters) trains N steps (forward, backward, AdamW) in each mode on the same batches, through
our own Collator and attention module (sdpa, fp32, CPU). Each mode runs in its own fresh worker
process (one after the other, never concurrently) so its peak RSS is its own.

Conversation lengths (tokens) are heavy-tailed like ShareGPT: lognormal with median 300 and
sigma 0.9 (mean ~450), at least 16, clipped at max_length=2048 (~1.7% of samples hit the clip).
The first third of each sample (the prompt) is masked from the loss.

Prints non-pad tokens/s, padding fraction of the computed tokens, peak RSS and each mode's
speed-up over `max_length`. Usage: python benchmarks/bench_padding.py [--steps N] [--batch B]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import time

MAX_LENGTH = 2048
MEDIAN, SIGMA, MIN_LEN = 300, 0.9, 16
MODEL = dict(
    vocab_size=512,
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MAX_LENGTH,
)


def synthetic_samples(n: int, seed: int = 0) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(MEDIAN), SIGMA, n).astype(int), MIN_LEN, MAX_LENGTH)
    samples = []
    for n_tok in lengths.tolist():
        ids = [1, *rng.integers(3, MODEL["vocab_size"], n_tok - 1).tolist()]
        prompt = n_tok // 3
        samples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return samples


def run_mode(mode: str, steps: int, batch: int, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from vicuna_sft.attention import sdpa
    from vicuna_sft.config import Padding
    from vicuna_sft.data.collate import Collator

    torch.manual_seed(0)
    config = LlamaConfig(**MODEL, use_cache=False, attn_implementation=sdpa.implementation(None))
    model = sdpa.prepare(LlamaForCausalLM(config))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    collate = Collator(pad_id=0, padding=Padding(mode), max_length=MAX_LENGTH)
    samples = synthetic_samples((steps + 1) * batch)
    real = computed = 0
    losses = []
    elapsed = 0.0
    for step in range(steps + 1):  # step 0 warms up and is not timed
        t0 = time.perf_counter()
        inputs = collate(samples[step * batch : (step + 1) * batch])
        loss = model(**inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        if step:
            elapsed += dt
            real += sum(len(s["input_ids"]) for s in samples[step * batch : (step + 1) * batch])
            computed += inputs["input_ids"].numel()
            losses.append(loss.item())
    return {
        "mode": mode,
        "tokens_per_s": real / elapsed,
        "padding": 1 - real / computed,
        "s_per_step": elapsed / steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": sum(losses) / len(losses),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4, help="timed steps per mode (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=4, help="samples per step (per_device_train_batch_size)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    import numpy as np

    lengths = [len(s["input_ids"]) for s in synthetic_samples(20000, seed=1)]
    print(
        f"data: lognormal lengths, median {int(np.median(lengths))}, mean {int(np.mean(lengths))}, "
        f"p90 {int(np.percentile(lengths, 90))}, p99 {int(np.percentile(lengths, 99))}, "
        f"{np.mean(np.array(lengths) == MAX_LENGTH):.1%} at max_length {MAX_LENGTH}"
    )
    print(f"model: Llama {MODEL}; {args.steps} timed steps x {args.batch} samples per mode; sdpa fp32 CPU")
    results = []
    ctx = mp.get_context("spawn")
    for mode in ("max_length", "longest", "packed"):  # one fresh process per mode, sequentially
        with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            results.append(pool.submit(run_mode, mode, args.steps, args.batch, args.threads).result())
    base = results[0]["tokens_per_s"]
    print(
        f"\n{'mode':<11} {'non-pad tok/s':>13} {'padding':>8} {'s/step':>7} {'peak RSS':>9} {'vs max_length':>13}"
    )
    for r in results:
        print(
            f"{r['mode']:<11} {r['tokens_per_s']:>13.0f} {r['padding']:>8.1%} {r['s_per_step']:>7.2f} "
            f"{r['peak_rss_mb']:>7.0f}MB {r['tokens_per_s'] / base:>12.2f}x"
        )
    # same samples, same model: the losses must agree (packing changes layout, not math)
    spread = max(r["loss"] for r in results) - min(r["loss"] for r in results)
    print(f"\nmean loss per mode agrees to {spread:.2e} (same samples, same initial weights)")


if __name__ == "__main__":
    main()
