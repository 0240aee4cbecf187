"""Encode once: cold (read + encode + store) vs warm (cache hit) start of the training data, and
encoding throughput with data.num_proc 1 vs 2.

Data: a synthetic ShareGPT file of --conversations (default 50k) conversations with ShareGPT-like
lengths: total tokens lognormal (median ~350, sigma 1.0: about 4% past 2048), more turns for longer
conversations (150-600 tokens per pair), replies ~85% of the text, words from an English word list with punctuation, numbers and some code blocks.
Tokenizer: the real Mistral-7B v0.1 SentencePiece tokenizer (tests/fixtures/mistral, fast form),
as a Llama/Vicuna-family model would bring. Config: max_length 2048, data.long=split,
eval_fraction 0.01, each run with `build_datasets` as training calls it.

- cold: an empty cache directory (read, encode, store the entry, load it back);
- warm: the same directory again, with the in-process file-hash memo cleared (what a new run,
  another rank or a sweep job does: hash the files and the tokenizer, load the memory-mapped entry);
- throughput: cold encoding of the first --throughput-conversations (default 10k) with num_proc 1
  and 2, fresh directories; both give the same samples (asserted).

Usage: python benchmarks/bench_data_cache.py [--conversations N] [--throughput-conversations M]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

_WORD_TEXT = (
    "the of and to in is that for it as with was on be by this are or from at an have which not but "
    "can all we your more one has if will about there their what so they when use data model time "
    "function value return example code system user process each would make like first also number "
    "new may way these could because two other people should between file result output input error "
    "list string class method table query server request response memory performance design simple "
    "however important different following information specific approach important example consider"
)
WORDS = _WORD_TEXT.split()
ENDINGS = (".", ".", ".", ",", "?", "!", ": 42.", " (see above).")
CODE = "```python\ndef step(x, y):\n    total = x + y  # add\n    return total * 2\n```"


def synth_text(rng: random.Random, n_tokens: int) -> str:
    """About n_tokens Mistral tokens of prose (~1.3 tokens per word), sometimes with code."""
    words = rng.choices(WORDS, k=max(1, int(n_tokens / 1.3)))
    sentences, i = [], 0
    while i < len(words):
        n = rng.randint(6, 20)
        sentences.append(" ".join(words[i : i + n]).capitalize() + rng.choice(ENDINGS))
        i += n
    text = " ".join(sentences)
    if n_tokens > 120 and rng.random() < 0.2:
        text += "\n\n" + CODE + "\n\nThat is all."
    return text


def synth_file(path: pathlib.Path, n: int, seed: int = 0) -> None:
    """Total tokens lognormal (median 350, sigma 1.0); longer conversations have more turns
    (150-600 tokens per turn pair, 1-30 pairs), as in ShareGPT."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        total = max(24, int(rng.lognormvariate(math.log(350), 1.0)))
        turns = max(1, min(30, round(total / rng.uniform(150, 600))))
        per_turn = total / turns
        conv = []
        for _ in range(turns):
            conv.append({"from": "human", "value": synth_text(rng, max(4, int(per_turn * 0.15)))})
            conv.append({"from": "gpt", "value": synth_text(rng, max(4, int(per_turn * 0.85)))})
        records.append({"id": f"synth_{i}", "conversations": conv})
    path.write_text(json.dumps(records))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conversations", type=int, default=50_000, help="cold vs warm start on this many")
    ap.add_argument(
        "--throughput-conversations", type=int, default=10_000, help="num_proc 1 vs 2 on the first N"
    )
    args = ap.parse_args()
    import datasets
    import numpy as np
    from bench_encode import load_tokenizer
    from transformers import AutoTokenizer

    from vicuna_sft.config import DataConfig, LongMode
    from vicuna_sft.data import sources
    from vicuna_sft.data.dataset import build_datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        t0 = time.perf_counter()
        data, small = tmp / "sharegpt_synth.json", tmp / "sharegpt_synth_small.json"
        synth_file(data, args.conversations)
        synth_file(small, min(args.throughput_conversations, args.conversations))
        print(
            f"{args.conversations} synthetic conversations, {data.stat().st_size / 2**20:.0f} MB "
            f"(written in {time.perf_counter() - t0:.0f} s)"
        )
        tok_dir = tmp / "tokenizer"
        load_tokenizer().save_pretrained(tok_dir)  # the key hashes the tokenizer's files
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)

        def build(path: pathlib.Path, cache_dir: str, num_proc: int = 1):
            c = DataConfig(
                path=str(path), eval_fraction=0.01, max_length=2048, long=LongMode.split,
                num_proc=num_proc, cache_dir=str(tmp / cache_dir),
            )  # fmt: skip
            sources._digest.cache_clear()  # a new process (rank, run, sweep job) hashes the files again
            t0 = time.perf_counter()
            d = build_datasets(c, tokenizer, seed=42)
            return time.perf_counter() - t0, d

        t_cold, cold = build(data, "main")
        t_warm, warm = build(data, "main")
        assert not cold.cache["hit"] and warm.cache["hit"]
        assert warm.stats == cold.stats and warm.train["input_ids"][:100] == cold.train["input_ids"][:100]

        s, e = cold.stats["train"], cold.stats["eval"]
        lengths = np.array([len(x) for x in cold.train["input_ids"]])
        print(
            f"train: {s['read']} conversations -> {s['samples']} samples ({s['split']} split, "
            f"{s['truncated']} single pairs truncated, {s['lost_tokens']} reply tokens lost), {s['tokens']} tokens"
        )
        print(
            f"sample length p50 {np.percentile(lengths, 50):.0f} p90 {np.percentile(lengths, 90):.0f} "
            f"p99 {np.percentile(lengths, 99):.0f} max {lengths.max()}"
        )
        n_conv, tokens = s["read"] + e["read"], s["tokens"] + e["tokens"]
        print(f"\n{'start':<8} {'seconds':>8} {'conv/s':>9} {'tokens/s':>10}")
        for name, t in (("cold", t_cold), ("warm", t_warm)):
            print(f"{name:<8} {t:>8.2f} {n_conv / t:>9.0f} {tokens / t:>10.0f}")
        ratio = t_cold / t_warm
        print(
            f"warm start {ratio:.1f}x faster than cold (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})"
        )

        t1, one = build(small, "np1", num_proc=1)
        t2, two = build(small, "np2", num_proc=2)
        assert one.stats == two.stats and one.train["input_ids"][:100] == two.train["input_ids"][:100]
        n = one.stats["train"]["read"] + one.stats["eval"]["read"]
        tok = one.stats["train"]["tokens"] + one.stats["eval"]["tokens"]
        print(f"\ncold encoding of {n} conversations ({tok} tokens), {os.cpu_count()} CPUs")
        print(f"{'num_proc':<8} {'seconds':>8} {'conv/s':>9} {'tokens/s':>10}")
        for k, t in ((1, t1), (2, t2)):
            print(f"{k:<8} {t:>8.2f} {n / t:>9.0f} {tok / t:>10.0f}")
        print(f"num_proc=2 vs 1: {t1 / t2:.2f}x throughput")


if __name__ == "__main__":
    main()
