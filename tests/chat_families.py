"""Chat-model families for the template-driven encoder's tests (issue 18): a real or stand-in
tokenizer per family, with that family's published chat template, built offline.

``families()`` is the list of ``Family(name, load)`` pairs; ``load()`` returns a
``transformers.PreTrainedTokenizerFast`` whose ``chat_template`` is the published template stored
in ``tests/fixtures/templates`` (see SOURCES.md there), or None for ``vicuna``. ``family.spec``
says what the tokenizer is (real or stand-in), its end-of-turn token and the template's features.
``tiny_model_dir(tmp_path, family)`` writes a local model directory (a random 2-layer
``LlamaForCausalLM`` sized to the tokenizer, plus the tokenizer and its template) for a training
run with ``model.name_or_path=<dir>``.

| family | tokenizer | template |
|---|---|---|
| llama3 | real: Meta's Llama-3 tiktoken BPE (tests/fixtures/llama3), converted with TikTokenConverter, 256 special tokens | Llama-3.1 instruct |
| qwen2.5 | stand-in: byte-level BPE trained here, Qwen's pre-tokenizer regex, NFC, Qwen's added tokens | Qwen2.5 instruct |
| qwen3 | stand-in: as qwen2.5 plus `<think>`, `</think>`, `<tool_response>`, `</tool_response>` | Qwen3 |
| mistral_v3 | real: Mistral tokenizer v3 SentencePiece (tests/fixtures/mistral/tokenizer.model.v3) | Mistral-7B-Instruct-v0.3 |
| mistral_v7 | real: Mistral tokenizer v7 SentencePiece (tests/fixtures/mistral/tokenizer.model.v7; the SPM V7 of Mistral-Large-2411, not Tekken) | Mistral-Small-24B-Instruct-2501 |
| gemma3 | stand-in: byte-level BPE trained here with Gemma's special tokens (the real one is a 262k SentencePiece) | Gemma-3 instruct |
| phi4 | stand-in: byte-level BPE trained here, cl100k pre-tokenizer regex, Phi-4's special tokens | Phi-4 |
| vicuna | real: Mistral-7B v0.1 SentencePiece (tests/fixtures/mistral/tokenizer.model) | none (`chat_template` None) |

Loaders cache within the process: ``load()`` returns one shared tokenizer per family (do not
mutate it); ``load(fresh=True)`` returns a private deep copy. The special tokens and the
bos/eos/pad/unk settings follow each family's published ``tokenizer_config.json``; where a
stand-in's real tokenizer marks an added token non-special (Qwen's ``<tool_call>``, ``<think>``),
so does the stand-in. Stand-ins are trained on a deterministic corpus made in code
(``_corpus``), so every build gives the same vocabulary.
"""

from __future__ import annotations

import base64
import copy
import functools
import os
import pathlib
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TEMPLATES = FIXTURES / "templates"
LLAMA3_MODEL = FIXTURES / "llama3" / "tokenizer.model"
MISTRAL_V1_MODEL = FIXTURES / "mistral" / "tokenizer.model"
MISTRAL_V3_MODEL = FIXTURES / "mistral" / "tokenizer.model.v3"
MISTRAL_V7_MODEL = FIXTURES / "mistral" / "tokenizer.model.v7"

__all__ = ["Family", "Spec", "families", "family", "template_text", "tiny_model_dir"]


@dataclass(frozen=True)
class Spec:
    """What a family's fixture is. ``eot``: the template's end-of-turn token (a single special
    token id); ``template_adds_bos``: the template renders ``bos_token`` itself; ``tools`` /
    ``reasoning``: the template renders assistant ``tool_calls`` / ``reasoning_content``."""

    template: str | None  # file under tests/fixtures/templates
    real_tokenizer: bool
    tokenizer: str  # what it is, in words
    eot: str
    bos: str | None
    template_adds_bos: bool
    tools: bool = False
    reasoning: bool = False
    # False: add_generation_prompt renders nothing (Mistral: a prompt already ends with [/INST])
    generation_prompt: bool = True


SPECS: dict[str, Spec] = {
    "llama3": Spec(
        "llama3.1.jinja",
        True,
        "Meta Llama-3 tiktoken BPE (llama-models 0.3.0), 128,256 tokens",
        eot="<|eot_id|>",
        bos="<|begin_of_text|>",
        template_adds_bos=True,
        tools=True,
    ),
    "qwen2.5": Spec(
        "qwen2.5.jinja",
        False,
        "byte-level BPE stand-in with Qwen2.5's added tokens",
        eot="<|im_end|>",
        bos=None,
        template_adds_bos=False,
        tools=True,
    ),
    "qwen3": Spec(
        "qwen3.jinja",
        False,
        "byte-level BPE stand-in with Qwen3's added tokens",
        eot="<|im_end|>",
        bos=None,
        template_adds_bos=False,
        tools=True,
        reasoning=True,
    ),
    "mistral_v3": Spec(
        "mistral_v3.jinja",
        True,
        "Mistral tokenizer v3 SentencePiece (mistral-common 1.13.1), 32,768 pieces",
        eot="</s>",
        bos="<s>",
        template_adds_bos=True,
        tools=True,
        generation_prompt=False,
    ),
    "mistral_v7": Spec(
        "mistral_v7.jinja",
        True,
        "Mistral tokenizer v7 SentencePiece (mistral-common 1.13.1), 32,768 pieces",
        eot="</s>",
        bos="<s>",
        template_adds_bos=True,
        generation_prompt=False,
    ),
    "gemma3": Spec(
        "gemma3.jinja",
        False,
        "byte-level BPE stand-in with Gemma-3's special tokens",
        eot="<end_of_turn>",
        bos="<bos>",
        template_adds_bos=True,
    ),
    "phi4": Spec(
        "phi4.jinja",
        False,
        "byte-level BPE stand-in with Phi-4's special tokens",
        eot="<|im_end|>",
        bos="<|endoftext|>",
        template_adds_bos=False,
    ),
    "vicuna": Spec(
        None,
        True,
        "Mistral-7B v0.1 SentencePiece (the Vicuna/Llama-2 structure), 32,000 pieces",
        eot="</s>",
        bos="<s>",
        template_adds_bos=False,
    ),
}


class Family(NamedTuple):
    """A (name, loader) pair; ``load(fresh=False)`` returns the family's tokenizer."""

    name: str
    load: Callable[..., Any]

    @property
    def spec(self) -> Spec:
        return SPECS[self.name]


def template_text(name: str) -> str | None:
    """The family's published template, exactly as stored (no newline translation)."""
    file = SPECS[name].template
    if file is None:
        return None
    with open(TEMPLATES / file, encoding="utf-8", newline="") as f:
        return f.read()


def families() -> list[Family]:
    return [Family(name, functools.partial(_load, name)) for name in SPECS]


def family(name: str) -> Family:
    if name not in SPECS:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(SPECS)}")
    return Family(name, functools.partial(_load, name))


def _load(name: str, fresh: bool = False):
    tok = _build(name)
    return copy.deepcopy(tok) if fresh else tok


@functools.cache
def _build(name: str):
    tok = _BUILDERS[name]()
    tok.chat_template = template_text(name)
    return tok


# --- Llama-3: real tiktoken BPE -------------------------------------------------------------------

# llama_models/llama3/tokenizer.py (llama-models 0.3.0): Tokenizer.pat_str and the special tokens
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_NAMED_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",  # end of message
    "<|eot_id|>",  # end of turn
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_SPECIAL = LLAMA3_NAMED_SPECIAL + [
    f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_NAMED_SPECIAL))
]


def _read_tiktoken_bpe(path: str | os.PathLike) -> dict[bytes, int]:
    """tiktoken's ``load_tiktoken_bpe`` for a local file ("<base64 token> <rank>" per line),
    so that the conversion needs no tiktoken."""
    ranks: dict[bytes, int] = {}
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _build_llama3():
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    class _LocalTikTokenConverter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return _read_tiktoken_bpe(tiktoken_url)

    tk = _LocalTikTokenConverter(vocab_file=str(LLAMA3_MODEL), pattern=LLAMA3_PATTERN).converted()
    assert tk.get_vocab_size() == 128000
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL])
    bos = "<|begin_of_text|>"
    assert tk.token_to_id(bos) == 128000 and tk.token_to_id("<|eot_id|>") == 128009
    # as Meta's tokenizer.json on the hub: byte-level offsets, then BOS prepended
    tk.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, 128000)]
            ),
        ]
    )
    # Llama-3.1-8B-Instruct's tokenizer_config.json: eos is <|eot_id|>, no pad token
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token="<|eot_id|>",
        # Meta's config says true, but transformers 5 ignores (and warns about) that for BPE tokenizers
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=131072,
    )


# --- SentencePiece: Mistral v1 (Vicuna), v3, v7 -----------------------------------------------------


def _build_spm(model: pathlib.Path):
    from transformers import LlamaTokenizerFast

    with tempfile.TemporaryDirectory(prefix="chat-families-spm-") as d:
        shutil.copy(model, pathlib.Path(d) / "tokenizer.model")
        # as tests/conftest.py's mistral_tokenizer: LlamaTokenizerFast(vocab_file=...) does not load
        # the vocab on transformers 5; from_pretrained on a directory holding tokenizer.model does
        return LlamaTokenizerFast.from_pretrained(d, add_bos_token=True, legacy=False)


# --- byte-level BPE stand-ins ---------------------------------------------------------------------

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2.5's added tokens in id order (tokenizer_config.json added_tokens_decoder): special ones,
# then the non-special tool-call and FIM markers
QWEN25_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN25_PLAIN = [
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
QWEN3_PLAIN = [*QWEN25_PLAIN, "<tool_response>", "</tool_response>", "<think>", "</think>"]
GEMMA_FIRST = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0-3 as in Gemma
GEMMA_SPECIAL = [
    "<mask>",
    "[multimodal]",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
]
PHI4_SPECIAL = [
    "<|dummy_0|>",
    "<|endoftext|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|dummy_1|>",
    "<|dummy_2|>",
    "<|dummy_3|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|im_sep|>",
    "<|dummy_85|>",
]

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "it",
    "you",
    "that",
    "he",
    "was",
    "for",
    "on",
    "are",
    "with",
    "as",
    "I",
    "his",
    "they",
    "be",
    "at",
    "one",
    "have",
    "this",
    "from",
    "or",
    "had",
    "by",
    "hot",
    "word",
    "but",
    "what",
    "some",
    "we",
    "can",
    "out",
    "other",
    "were",
    "all",
    "there",
    "when",
    "up",
    "use",
    "your",
    "how",
    "said",
    "an",
    "each",
    "she",
    "which",
    "do",
    "their",
    "time",
    "if",
    "will",
    "way",
    "about",
    "many",
    "then",
    "them",
    "write",
    "would",
    "like",
    "so",
    "these",
    "her",
    "long",
    "make",
    "thing",
    "see",
    "him",
    "two",
    "has",
    "look",
    "more",
    "day",
    "could",
    "go",
    "come",
    "did",
    "number",
    "sound",
    "no",
    "most",
    "people",
    "my",
    "over",
    "know",
    "water",
    "than",
    "call",
    "first",
    "who",
    "may",
    "down",
    "side",
    "been",
    "now",
    "find",
    "any",
    "new",
    "work",
    "part",
    "take",
    "get",
    "place",
    "made",
    "live",
    "where",
    "after",
    "back",
    "little",
    "only",
    "round",
    "man",
    "year",
    "came",
    "show",
    "every",
    "good",
    "me",
    "give",
    "our",
    "under",
    "name",
    "very",
    "through",
    "just",
    "form",
    "sentence",
    "great",
    "think",
    "say",
    "help",
    "low",
    "line",
    "differ",
    "turn",
    "cause",
    "much",
    "mean",
    "before",
    "move",
    "right",
    "boy",
    "old",
    "too",
    "same",
    "tell",
    "does",
    "set",
    "three",
    "want",
    "air",
    "well",
    "also",
    "play",
    "small",
    "end",
    "put",
    "home",
    "read",
    "hand",
    "port",
    "large",
    "spell",
    "add",
    "even",
    "land",
    "here",
    "must",
    "big",
    "weather",
    "Paris",
    "London",
    "Tokyo",
    "tool",
    "function",
    "call",
    "arguments",
    "name",
    "result",
    "search",
    "query",
    "location",
    "temperature",
    "celsius",
    "unit",
    "think",
    "reasoning",
    "answer",
    "step",
    "because",
    "therefore",
    "question",
    "assistant",
    "user",
    "system",
    "model",
    "helpful",
    "Qwen",
    "Alibaba",
    "Cloud",
    "Gemma",
    "Phi",
    "Microsoft",
    "Mistral",
    "Llama",
    "Meta",
]
_UNICODE = [
    "café",
    "naïve",
    "Größe",
    "déjà vu",
    "日本語のテキスト",
    "中文文本",
    "한국어",
    "Ελληνικά",
    "кириллица",
    "emoji 😀 🎉 👍",
    "→ ≤ ≥ ∑ π",
    "\u00a0nbsp",
    "e\u0301",
]


def _corpus(extra: list[str]) -> list[str]:
    """A small deterministic training corpus: English-like sentences, numbers, code, JSON tool
    calls, unicode, whitespace runs, and the family's own template strings (``extra``)."""
    rng = random.Random(18)
    lines: list[str] = list(extra)
    for i in range(1500):
        n = rng.randint(3, 18)
        words = [rng.choice(_WORDS) for _ in range(n)]
        s = " ".join(words).capitalize() + rng.choice([".", "?", "!", ",", ":", ""])
        if i % 7 == 0:
            s += f" {rng.randint(0, 99999)} {rng.random():.3f}"
        if i % 11 == 0:
            s = rng.choice(_UNICODE) + " " + s
        if i % 13 == 0:
            s = f'{{"name": "{rng.choice(_WORDS)}", "arguments": {{"{rng.choice(_WORDS)}": "{rng.choice(_WORDS)}"}}}}'
        if i % 17 == 0:
            s = f"def f{i}(x):\n    return x * {i}\n\n"
        if i % 5 == 0:
            s = "  " + s + "\n\n"
        lines.append(s)
    return lines


def _train_bpe(
    *,
    pattern: str | None,
    nfc: bool,
    first: list[str],
    special: list[str],
    plain: list[str],
    extra_text: list[str],
    vocab_size: int = 2000,
):
    """Byte-level BPE: ``first`` become special tokens at ids 0.. (trainer), ``special`` and
    ``plain`` added after training (special / non-special added tokens, as the family has them)."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tk = Tokenizer(models.BPE())
    if nfc:
        tk.normalizer = normalizers.NFC()
    if pattern is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in first],
        show_progress=False,
    )
    tk.train_from_iterator(_corpus(extra_text), trainer=trainer)
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    return tk


_QWEN_TEXT = [
    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with "
    "function signatures within <tools></tools> XML tags:\n<tools>",
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>',
    "system\nuser\nassistant\n<tool_response>\n</tool_response>\n<think>\n\n</think>\n\n",
]


def _build_qwen(plain: list[str]):
    from transformers import PreTrainedTokenizerFast

    tk = _train_bpe(
        pattern=QWEN_PATTERN, nfc=True, first=[], special=QWEN25_SPECIAL, plain=plain, extra_text=_QWEN_TEXT
    )
    # Qwen2.5-Instruct / Qwen3 tokenizer_config.json: no bos, eos <|im_end|>, pad <|endoftext|>
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        model_max_length=131072,
    )


def _build_gemma3():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    text = ["<start_of_turn>user\n", "<start_of_turn>model\n", "You are a helpful assistant.\n\n"]
    tk = _train_bpe(
        pattern=None, nfc=False, first=GEMMA_FIRST, special=GEMMA_SPECIAL, plain=[], extra_text=text
    )
    # Gemma's tokenizer prepends <bos> when encoding (add_bos_token true); its template also renders it
    tk.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<bos> $A",
                pair="<bos> $A <bos> $B",
                special_tokens=[("<bos>", tk.token_to_id("<bos>"))],
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
        model_max_length=131072,
    )


def _build_phi4():
    from transformers import PreTrainedTokenizerFast

    text = ["<|im_start|>system<|im_sep|>", "<|im_start|>user<|im_sep|>", "<|im_start|>assistant<|im_sep|>"]
    tk = _train_bpe(
        pattern=LLAMA3_PATTERN, nfc=False, first=[], special=PHI4_SPECIAL, plain=[], extra_text=text
    )
    # microsoft/phi-4 tokenizer_config.json: bos <|endoftext|> (never added), eos <|im_end|>, pad <|dummy_85|>
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|dummy_85|>",
        unk_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
        model_max_length=16384,
    )


_BUILDERS: dict[str, Callable[[], Any]] = {
    "llama3": _build_llama3,
    "qwen2.5": functools.partial(_build_qwen, QWEN25_PLAIN),
    "qwen3": functools.partial(_build_qwen, QWEN3_PLAIN),
    "mistral_v3": functools.partial(_build_spm, MISTRAL_V3_MODEL),
    "mistral_v7": functools.partial(_build_spm, MISTRAL_V7_MODEL),
    "gemma3": _build_gemma3,
    "phi4": _build_phi4,
    "vicuna": functools.partial(_build_spm, MISTRAL_V1_MODEL),
}


# --- a local model directory ----------------------------------------------------------------------


def tiny_model_dir(
    tmp_path: str | os.PathLike, fam: str | Family, *, seed: int = 0, **config_overrides: Any
) -> pathlib.Path:
    """Write ``<tmp_path>/tiny-<family>``: a randomly initialised tiny ``LlamaForCausalLM``
    (hidden 32, 2 layers, 4 heads, 2 KV heads, vocab = len(tokenizer), fp32 safetensors) and the
    family's tokenizer with its chat template, both with ``save_pretrained``, so that
    ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(<dir>)`` load it like a hub model.
    ``config.eos_token_id`` is the tokenizer's eos (not necessarily the end-of-turn token, as in
    the real checkpoints' config.json; Gemma's eos is ``<eos>``, its end-of-turn ``<end_of_turn>``).
    ``config_overrides`` go to ``LlamaConfig`` (e.g. ``tie_word_embeddings=True`` halves llama3's
    33 MB of fp32 weights: its 128,256 x 32 embedding is nearly all of them)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    name = fam if isinstance(fam, str) else fam.name
    tok = _load(name)
    out = pathlib.Path(tmp_path) / f"tiny-{name}"
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    for key, value in config_overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
