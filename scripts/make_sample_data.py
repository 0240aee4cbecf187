#!/usr/bin/env python3
"""Generate ``vicuna_sft/assets/sample_conversations.json`` deterministically.

The records are ShareGPT-style conversations built from a handful of templated task
families (arithmetic, capitals, word transforms, repetition, a fixed glossary, a short
python snippet). They are deliberately repetitive so that the ~0.5M-parameter tiny Llama
can visibly reduce its loss within a few dozen optimizer steps.

Usage::

    python scripts/make_sample_data.py            # writes the bundled asset
    python scripts/make_sample_data.py --out x.json --n 300 --seed 1234

Stdlib only; the output is byte-identical for a given ``--n`` and ``--seed``.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "vicuna_sft" / "assets" / "sample_conversations.json"

CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Canada", "Ottawa"),
    ("Egypt", "Cairo"),
    ("Peru", "Lima"),
    ("Kenya", "Nairobi"),
    ("Norway", "Oslo"),
]

WORDS = ["apple", "river", "garden", "planet", "pencil", "window", "cookie", "rocket", "silver", "banana"]

PHRASES = ["hello world", "good morning", "thank you", "see you soon", "well done", "keep going"]

GLOSSARY = [
    ("a noun", "a word that names a person, place or thing"),
    ("a verb", "a word that describes an action"),
    ("a prime number", "a number greater than one with no divisors other than one and itself"),
    ("a planet", "a large body that orbits a star"),
    ("a river", "a natural stream of water that flows to the sea"),
    ("a loop", "a piece of code that repeats a block of steps"),
    ("a function", "a named block of code that takes inputs and returns a result"),
    ("gravity", "the force that pulls objects toward each other"),
]

PY_OPS = [
    ("add", "+", "adds two numbers"),
    ("sub", "-", "subtracts two numbers"),
    ("mul", "*", "multiplies two numbers"),
]

UNICODE_EXTRAS = [
    ("Say hello in Japanese.", "こんにちは means hello in Japanese."),
    ("Say thank you in French.", "Merci means thank you in French."),
    ("Give me a happy emoji.", "Here is a happy emoji: 😀"),
    ("Give me a star emoji.", "Here is a star emoji: ⭐"),
    ("How do you write café with an accent?", "It is written café, with é at the end."),
    ("What does Grüße mean?", "Grüße means greetings in German."),
]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in one sentence.",
    "You are a friendly tutor.",
]


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(1, 50), rng.randint(1, 50)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    hi, lo = max(a, b), min(a, b)
    return f"What is {hi} minus {lo}?", f"{hi} minus {lo} is {hi - lo}."


def capital(rng: random.Random) -> tuple[str, str]:
    country, city = rng.choice(CAPITALS)
    return f"What is the capital of {country}?", f"The capital of {country} is {city}."


def word_transform(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    if rng.random() < 0.5:
        return f"Reverse the word {word}.", f"The word {word} reversed is {word[::-1]}."
    return f"Write the word {word} in uppercase.", f"The word {word} in uppercase is {word.upper()}."


def repeat(rng: random.Random) -> tuple[str, str]:
    phrase = rng.choice(PHRASES)
    n = rng.randint(2, 3)
    return f"Repeat '{phrase}' {n} times.", " ".join([phrase] * n) + "."


def define(rng: random.Random) -> tuple[str, str]:
    term, meaning = rng.choice(GLOSSARY)
    return f"What is {term}?", f"{term[0].upper()}{term[1:]} is {meaning}."


def python_code(rng: random.Random) -> tuple[str, str]:
    name, op, desc = rng.choice(PY_OPS)
    answer = f"Here is a function that {desc}:\n\n```python\ndef {name}(a, b):\n    return a {op} b\n```"
    return f"Write a python function that {desc}.", answer


def unicode_extra(rng: random.Random) -> tuple[str, str]:
    return rng.choice(UNICODE_EXTRAS)


FAMILIES = [arithmetic, capital, word_transform, repeat, define, python_code]


def make_record(rng: random.Random, idx: int) -> dict:
    conv: list[dict[str, str]] = []
    if rng.random() < 0.10:
        conv.append({"from": "system", "value": rng.choice(SYSTEM_PROMPTS)})
    n_turns = rng.choices([1, 2, 3], weights=[5, 3, 2])[0]
    for _ in range(n_turns):
        family = unicode_extra if rng.random() < 0.05 else rng.choice(FAMILIES)
        question, answer = family(rng)
        conv.append({"from": "human", "value": question})
        conv.append({"from": "gpt", "value": answer})
    return {"id": f"sample-{idx:04d}", "conversations": conv}


def validate(records: list[dict]) -> None:
    for rec in records:
        conv = rec["conversations"]
        body = conv[1:] if conv and conv[0]["from"] == "system" else conv
        assert body and len(body) % 2 == 0, rec["id"]
        for i, msg in enumerate(body):
            assert msg["from"] == ("human" if i % 2 == 0 else "gpt"), rec["id"]
        assert all(m["value"].strip() for m in conv), rec["id"]


def generate(n: int = 300, seed: int = 1234) -> list[dict]:
    rng = random.Random(seed)
    records = [make_record(rng, i + 1) for i in range(n)]
    validate(records)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    records = generate(args.n, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} records to {args.out}")


if __name__ == "__main__":
    main()
