"""Loss variants side by side: transformers' `full` loss against `chunked` (vicuna_sft/model/loss.py).

A training step (forward, backward, AdamW) on one packed row of 2048 tokens, on CPU, fp32, for
vocab 32,000 (Llama 2) and 128,256 (Llama 3). The model is a 2-layer GQA Llama with hidden size
64, so that the [tokens, vocab] logits dominate the step's memory, as they do for 1-8B models at
long context (fp32 logits of 2048 x 128,256 are 1.05 GB; an 8B model's activations per layer with
activation checkpointing are ~2048 x 4096 x 4 B = 34 MB). The row packs ShareGPT-like samples whose
first half (the prompt) is masked, so about half the positions are trained.

Each (loss, vocab) runs in its own fresh process, one after the other, so its peak RSS (ru_maxrss:
the whole process, Python and torch included) is its own. Prints peak RSS, tokens/s (all 2048
positions per step, after one untimed warm-up step; wall clock, and per CPU-second of the
process, which other jobs on a shared machine disturb less), the mean loss (must agree between variants:
same data, same initial weights), and chunked / full ratios.

Usage: python benchmarks/bench_loss_memory.py [--steps N] [--tokens T] [--vocab V ...] [--chunk-tokens C]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import os
import time

MODEL = dict(
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)
VOCABS = (32000, 128256)
PROMPT_FRACTION = 0.5  # ShareGPT-style: about half the tokens are prompt tokens


def packed_row(tokens: int, vocab: int, seed: int = 0) -> dict:
    """One packed row of `tokens` positions: samples of 64..512 tokens, the first half of each masked."""
    import numpy as np

    from vicuna_sft.config import Padding
    from vicuna_sft.data.collate import Collator

    rng = np.random.default_rng(seed)
    samples, left = [], tokens
    while left > 0:
        n = min(left, int(rng.integers(64, 513)))
        ids = [1, *rng.integers(3, vocab, n - 1).tolist()]
        prompt = int(n * PROMPT_FRACTION)
        samples.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
        left -= n
    return Collator(pad_id=0, padding=Padding.packed, max_length=tokens)(samples)


def run(kind: str, vocab: int, tokens: int, steps: int, chunk_tokens: int, threads: int) -> dict:
    import resource

    import torch

    torch.set_num_threads(threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from vicuna_sft.attention import sdpa
    from vicuna_sft.config import LossConfig, LossKind
    from vicuna_sft.model.loss import install

    torch.manual_seed(0)
    config = LlamaConfig(
        **MODEL, vocab_size=vocab, max_position_embeddings=tokens, use_cache=False, attn_implementation="sdpa"
    )
    model = install(sdpa.prepare(LlamaForCausalLM(config)), LossConfig(LossKind(kind), chunk_tokens))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    row = packed_row(tokens, vocab)
    trained = int((row["labels"][:, 1:] != -100).sum())
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    losses, elapsed, cpu = [], 0.0, 0.0
    for step in range(steps + 1):  # step 0 warms up (allocator, AdamW state) and is not timed
        t0, c0 = time.perf_counter(), time.process_time()
        loss = model(**row).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            elapsed += time.perf_counter() - t0
            cpu += time.process_time() - c0  # all threads: less sensitive than wall time to other jobs
            losses.append(loss.item())
    return {
        "kind": kind,
        "vocab": vocab,
        "trained": trained,
        "tokens_per_s": tokens * steps / elapsed,
        "tokens_per_cpu_s": tokens * steps / cpu,
        "s_per_step": elapsed / steps,
        "baseline_mb": baseline,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loss": sum(losses) / len(losses),
    }


def main() -> None:
    from vicuna_sft.config import LossConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=2, help="timed steps per measurement (after one warm-up)")
    ap.add_argument("--tokens", type=int, default=2048, help="positions in the packed row")
    ap.add_argument("--vocab", type=int, nargs="+", default=list(VOCABS))
    ap.add_argument("--chunk-tokens", type=int, default=LossConfig.chunk_tokens, help="loss.chunk_tokens")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    print(
        f"model: Llama {MODEL}; one packed row of {args.tokens} tokens, {PROMPT_FRACTION:.0%} of each "
        f"sample masked as prompt; fp32 CPU, sdpa; {args.steps} timed steps; loss.chunk_tokens={args.chunk_tokens}"
    )
    results = {}
    ctx = mp.get_context("spawn")
    for vocab in args.vocab:
        for kind in ("full", "chunked"):  # one fresh process per measurement, sequentially
            with cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                job = pool.submit(run, kind, vocab, args.tokens, args.steps, args.chunk_tokens, args.threads)
                results[kind, vocab] = job.result()
    print(
        f"\n{'vocab':>7} {'loss':<8} {'trained':>7} {'peak RSS':>9} {'(before step)':>13} "
        f"{'tokens/s':>9} {'tok/CPU-s':>9} {'s/step':>7} {'mean loss':>10}"
    )
    for (kind, vocab), r in results.items():
        print(
            f"{vocab:>7} {kind:<8} {r['trained']:>7} {r['peak_rss_mb']:>7.0f}MB {r['baseline_mb']:>11.0f}MB "
            f"{r['tokens_per_s']:>9.0f} {r['tokens_per_cpu_s']:>9.0f} {r['s_per_step']:>7.2f} {r['loss']:>10.6f}"
        )
    print()
    for vocab in args.vocab:
        full, chunked = results["full", vocab], results["chunked", vocab]
        print(
            f"vocab {vocab}: chunked peak RSS {chunked['peak_rss_mb'] / full['peak_rss_mb']:.0%} of full, "
            f"tokens/s {chunked['tokens_per_s'] / full['tokens_per_s']:.2f}x full "
            f"(per CPU-second {chunked['tokens_per_cpu_s'] / full['tokens_per_cpu_s']:.2f}x), "
            f"|mean loss difference| {abs(chunked['loss'] - full['loss']):.1e}"
        )


if __name__ == "__main__":
    main()
