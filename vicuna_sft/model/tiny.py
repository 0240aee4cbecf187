"""A tiny (~0.5M-parameter) Llama and byte-level BPE tokenizer, built offline on first use.

``build_tiny(path)`` trains a byte-level BPE tokenizer on the bundled sample conversations
(``vicuna_sft/assets/sample_conversations.json``) plus the Vicuna system prompt and role tags,
initialises a 2-layer GQA ``LlamaForCausalLM`` with a fixed seed, and saves both with
``save_pretrained`` so that ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load them like any hub model.

Default location: ``${VICUNA_SFT_CACHE:-.cache/vicuna_sft}/tiny-llama``. That path is decided
in ``vicuna_sft.config.builtin_path`` (used by conf/model/tiny.yaml), not here; this module builds wherever it is told.

Building is safe under concurrency and crashes: one process at a time builds (an ``fcntl`` lock
on ``<dest>.lock`` beside the destination) into a temporary sibling directory which is then
``os.rename``-d into place atomically, so the destination is either absent or complete.

torch/transformers/tokenizers are imported inside the functions only, so importing this module
(e.g. during Hydra config composition) stays cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from importlib import resources

__all__ = ["VICUNA_SYSTEM_PROMPT", "build_tiny", "ensure_tiny", "is_built", "sample_conversations_path"]

from ..data.templates import VICUNA_SYSTEM as VICUNA_SYSTEM_PROMPT

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2, as in Llama/Vicuna
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
MODEL_KWARGS = dict(
    hidden_size=64,
    intermediate_size=172,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
# the `small` builtin: the same tokenizer, a model of ~228M parameters (8 layers x 1536)
SIZES = {
    "tiny": MODEL_KWARGS,
    "small": dict(
        hidden_size=1536,
        intermediate_size=4096,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=16,
        max_position_embeddings=1024,
    ),
}


def sample_conversations_path() -> pathlib.Path:
    """Path of the bundled ShareGPT sample file."""
    return pathlib.Path(str(resources.files("vicuna_sft") / "assets" / "sample_conversations.json"))


def is_built(path: str | os.PathLike) -> bool:
    """True if ``path`` holds a model config and tokenizer files."""
    p = pathlib.Path(path)
    return (
        (p / "config.json").is_file()
        and (p / "tokenizer_config.json").is_file()
        and any((p / f).is_file() for f in TOKENIZER_FILES)
    )


def ensure_tiny(path: str | os.PathLike, size: str = "tiny") -> pathlib.Path:
    """Return ``path`` if it already holds the model, else build the builtin of that size there."""
    p = pathlib.Path(path)
    if is_built(p):
        return p
    return build_tiny(p, size=size)


def _training_texts() -> Iterator[str]:
    records = json.loads(sample_conversations_path().read_text(encoding="utf-8"))
    yield VICUNA_SYSTEM_PROMPT
    yield "USER:"
    yield "ASSISTANT:"
    for rec in records:
        turns = []
        for msg in rec["conversations"]:
            yield msg["value"]
            if msg["from"] == "human":
                turns.append(f"USER: {msg['value']}")
            elif msg["from"] == "gpt":
                turns.append(f"ASSISTANT: {msg['value']}")
        # The Vicuna rendering too, so role tags and separators get merges of their own.
        yield VICUNA_SYSTEM_PROMPT + " " + " ".join(turns)


def _train_tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A",
        pair="<s> $A <s> $B",
        special_tokens=[("<s>", 1)],
    )
    return tok


def _build_into(out: pathlib.Path, *, vocab_size: int, seed: int, size: str = "tiny") -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=_train_tokenizer(vocab_size),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=SIZES[size]["max_position_embeddings"],
    )
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
        **SIZES[size],
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)


@contextlib.contextmanager
def _file_lock(lock_path: pathlib.Path) -> Iterator[None]:
    with open(lock_path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def build_tiny(
    path: str | os.PathLike, *, vocab_size: int = 512, seed: int = 0, size: str = "tiny"
) -> pathlib.Path:
    """Build the tiny Llama + tokenizer at ``path`` (atomically) and return ``path``.

    If ``path`` already holds a complete build (e.g. another process finished first), it is
    returned untouched. A non-empty but incomplete ``path`` is an error (it is not ours to delete).
    """
    dest = pathlib.Path(path).absolute()
    dest.parent.mkdir(parents=True, exist_ok=True)
    if is_built(dest):
        return dest
    tmp_prefix = f".{dest.name}.tmp-"
    with _file_lock(dest.parent / f"{dest.name}.lock"):
        if is_built(dest):  # someone else finished while we waited
            return dest
        # Leftovers of crashed builds: safe to remove, only the lock holder builds.
        for stale in dest.parent.glob(tmp_prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise FileExistsError(f"{dest} exists but does not hold a complete tiny model; remove it")
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=dest.parent))
        try:
            _build_into(tmp, vocab_size=vocab_size, seed=seed, size=size)
            os.chmod(tmp, 0o755)  # mkdtemp creates 0700
            try:
                os.rename(tmp, dest)  # atomic; replaces an empty directory
            except OSError:
                if is_built(dest):  # built by a process that did not take the lock
                    return dest
                raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dest
