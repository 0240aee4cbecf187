"""Preprocessing speed: our Encoder vs a faithful re-implementation of FastChat's `preprocess`.

Same data (the bundled ShareGPT sample, repeated to --samples conversations), same tokenizer (the
real Mistral-7B v0.1 SentencePiece tokenizer vendored in tests/fixtures/mistral, converted to its
fast form once, as a Llama/Vicuna-family hub tokenizer), same max_length 2048, chunks of 256.

FastChat's method (fastchat/train/train.py `preprocess`, vicuna_v1.1 template): render each
conversation to text, tokenize the whole batch padded to model_max_length (pad = unk), then for
every turn re-tokenize the turn and its instruction part to count lengths, subtract the hard-coded
offsets (-2; -1 per later turn for non-legacy tokenizers), and zero the whole sample on a
mismatch. Ours renders the template and tokenizes it once with offsets (vicuna_sft/data/encode.py).

Prints samples/s and tokens/s (real tokens, not padding) and the ratio. Also counts the samples
FastChat's method silently zeroes on this tokenizer. Usage: python benchmarks/bench_encode.py
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
MISTRAL = ROOT / "tests" / "fixtures" / "mistral" / "tokenizer.model"
IGNORE = -100
MAX_LENGTH = 2048
CHUNK = 256


def load_tokenizer():
    import shutil

    from transformers import AutoTokenizer, LlamaTokenizerFast

    with tempfile.TemporaryDirectory() as src, tempfile.TemporaryDirectory() as out:
        shutil.copy(MISTRAL, pathlib.Path(src) / "tokenizer.model")
        LlamaTokenizerFast.from_pretrained(src, add_bos_token=True, legacy=False).save_pretrained(out)
        return AutoTokenizer.from_pretrained(out, padding_side="right", model_max_length=MAX_LENGTH)


def fastchat_preprocess(convs, tokenizer) -> tuple[list[list[int]], list[list[int]], int]:
    """FastChat's algorithm, line for line in behaviour (not in code)."""
    from vicuna_sft.data.templates import VICUNA_SYSTEM

    sep, sep2 = " ", "</s>"

    def render(c) -> str:  # "{system} USER: ... ASSISTANT: ...</s>USER: ...", FastChat's get_prompt()
        system = c.system if c.system is not None else VICUNA_SYSTEM
        return system + sep + "".join(f"USER: {u}{sep}ASSISTANT: {a}{sep2}" for u, a in c.pairs)

    texts = [render(c) for c in convs]
    input_ids = tokenizer(
        texts, return_tensors="pt", padding="max_length", max_length=MAX_LENGTH, truncation=True
    ).input_ids
    targets = input_ids.clone()
    legacy = getattr(tokenizer, "legacy", True)
    mismatches = 0
    for text, target in zip(texts, targets):
        total_len = int(target.ne(tokenizer.pad_token_id).sum())
        turns = text.split(sep2)
        cur_len = 1
        target[:cur_len] = IGNORE
        for i, turn in enumerate(turns):
            if turn == "":
                break
            turn_len = len(tokenizer(turn).input_ids)
            parts = turn.split(sep + "ASSISTANT: ")
            if len(parts) != 2:
                break
            parts[0] += sep + "ASSISTANT: "
            instruction_len = len(tokenizer(parts[0]).input_ids) - 2
            if i != 0 and not legacy:
                instruction_len -= 1
                turn_len -= 1
            target[cur_len : cur_len + instruction_len] = IGNORE
            cur_len += turn_len
            if i != 0 and not legacy:
                cur_len -= 1
        target[cur_len:] = IGNORE
        if cur_len < MAX_LENGTH and cur_len != total_len:
            target[:] = IGNORE
            mismatches += 1
    mask = input_ids.ne(tokenizer.pad_token_id)
    ids = [row[m].tolist() for row, m in zip(input_ids, mask)]
    return ids, targets.tolist(), mismatches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    from vicuna_sft.data.encode import Encoder
    from vicuna_sft.data.records import load_conversations
    from vicuna_sft.data.templates import resolve
    from vicuna_sft.model.builtin import sample_conversations_path

    tokenizer = load_tokenizer()
    tokenizer.pad_token = tokenizer.unk_token  # what FastChat does (ours never needs a pad token)
    base, _ = load_conversations(str(sample_conversations_path()), skip_errors=False)
    convs = [base[i % len(base)] for i in range(args.samples)]
    chunks = [convs[i : i + CHUNK] for i in range(0, len(convs), CHUNK)]
    print(f"{len(convs)} conversations (bundled sample x{len(convs) / len(base):.1f}), Mistral-7B tokenizer")

    encoder = Encoder(tokenizer, resolve("vicuna_v1.1", tokenizer), MAX_LENGTH)
    encoder.encode_batch(chunks[0][:8])  # warm-up
    t0 = time.perf_counter()
    ours = [e for chunk in chunks for e in encoder.encode_batch(chunk)]
    t_ours = time.perf_counter() - t0
    tokens = sum(len(e.input_ids) for e in ours)

    fastchat_preprocess(chunks[0][:8], tokenizer)  # warm-up
    t0 = time.perf_counter()
    mismatched, fc_tokens = 0, 0
    for chunk in chunks:
        ids, _, bad = fastchat_preprocess(chunk, tokenizer)
        mismatched += bad
        fc_tokens += sum(len(x) for x in ids)
    t_fc = time.perf_counter() - t0

    assert fc_tokens == tokens, (fc_tokens, tokens)  # the same token sequences were produced
    print(f"\n{'method':<22} {'samples/s':>10} {'tokens/s':>10} {'seconds':>8}")
    for name, t in (("ours (Encoder)", t_ours), ("FastChat preprocess", t_fc)):
        print(f"{name:<22} {len(convs) / t:>10.0f} {tokens / t:>10.0f} {t:>8.2f}")
    print(
        f"\nours is {t_fc / t_ours:.1f}x faster; FastChat's method zeroed {mismatched}/{len(convs)} samples"
    )


if __name__ == "__main__":
    main()
