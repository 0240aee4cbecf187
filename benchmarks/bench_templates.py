"""Encoding through a chat template: our Encoder vs transformers' assistant mask.

What TRL relies on for "assistant only" loss with a model's own template is
`apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)`,
which needs `{% generation %}` markers in the template. Side by side on the same conversations
(the bundled sample, as OpenAI messages, repeated to --samples), the same tokenizer (the builtin
byte-level BPE with ChatML's two tokens added) and the same ChatML template (the baseline's copy
with the markers around what the assistant produces), the labels are asserted identical, then
samples/s of each are printed with the ratio. Goal: ours >= 3x.

Usage: python benchmarks/bench_templates.py [--samples N]
"""

from __future__ import annotations

import argparse
import os
import time

# ChatML with {% generation %} around the assistant's content and <|im_end|>: what TRL's training
# templates add; everything outside the markers is rendered exactly as the builtin ChatML does
CHATML_MARKED = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=1024)
    args = ap.parse_args()
    os.environ.setdefault("RAYON_NUM_THREADS", str(os.cpu_count() or 1))
    import logging
    import tempfile

    from transformers import AutoTokenizer

    from vicuna_sft.data.encode import IGNORE_INDEX, Encoder
    from vicuna_sft.data.records import load_conversations
    from vicuna_sft.data.templates import add_missing_tokens, resolve
    from vicuna_sft.model.builtin import build_tiny, sample_conversations_path

    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as d:
        tok = AutoTokenizer.from_pretrained(build_tiny(os.path.join(d, "tiny")))
    template = resolve("chatml", tok)
    add_missing_tokens(tok, template)
    base, _ = load_conversations(str(sample_conversations_path()), skip_errors=False)
    convs = [base[i % len(base)] for i in range(args.samples)]
    messages = [[m.for_template() for m in c.messages] for c in convs]
    print(
        f"{len(convs)} conversations (bundled sample x{len(convs) / len(base):.1f}), ChatML, byte-level BPE"
    )

    encoder = Encoder(tok, template, 1 << 20)
    encoder.samples(convs[:8])  # warm-up (compiles the template)
    t0 = time.perf_counter()
    ours = [s[0] for chunk in range(0, len(convs), 256) for s in encoder.samples(convs[chunk : chunk + 256])]
    t_ours = time.perf_counter() - t0

    def hf(msgs):
        out = tok.apply_chat_template(
            msgs,
            chat_template=CHATML_MARKED,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids = list(out["input_ids"])
        return ids, [i if m else IGNORE_INDEX for i, m in zip(ids, out["assistant_masks"])]

    hf(messages[0])  # warm-up
    t0 = time.perf_counter()
    theirs = [hf(m) for m in messages]
    t_hf = time.perf_counter() - t0

    same = sum(1 for e, (ids, labels) in zip(ours, theirs) if e.input_ids == ids and e.labels == labels)
    assert same == len(convs), f"labels differ on {len(convs) - same} of {len(convs)} conversations"
    tokens = sum(len(e.input_ids) for e in ours)
    print(f"identical input_ids and labels on {same}/{len(convs)} conversations\n")
    print(f"{'method':<40} {'samples/s':>10} {'tokens/s':>10} {'seconds':>8}")
    for name, t in (
        ("ours (Encoder, no markers needed)", t_ours),
        ("apply_chat_template + assistant mask", t_hf),
    ):
        print(f"{name:<40} {len(convs) / t:>10.0f} {tokens / t:>10.0f} {t:>8.2f}")
    print(f"\nours is {t_hf / t_ours:.1f}x the samples/s of transformers' assistant mask (goal >= 3x)")


if __name__ == "__main__":
    main()
