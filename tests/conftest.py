"""Session-scoped fixtures shared by unit, integration and gpu tests.

- ``tiny_dir``: a tiny Llama + byte-level BPE tokenizer built once per session (``build_tiny``).
- ``bpe_tokenizer``: that tokenizer loaded with ``AutoTokenizer``.
- ``mistral_tokenizer``: the real Mistral-7B v0.1 SentencePiece tokenizer (vendored in
  ``tests/fixtures/mistral``, see NOTICE.md there), converted once to its ``tokenizer.json``
  form and reloaded with ``AutoTokenizer``, as a hub model would be. Its ``pad_token`` is None
  and, like any ``LlamaTokenizer`` without a saved setting, its ``padding_side`` is "left".
- ``sample_path``: the bundled ShareGPT sample file.
- ``tied_dir``: the tiny model with tied input/output embeddings (tokenizer copied alongside).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

MISTRAL_MODEL = pathlib.Path(__file__).parent / "fixtures" / "mistral" / "tokenizer.model"


def conf_dir() -> pathlib.Path:
    """Where the installed package's configs are (`vicuna_sft.conf`: the top-level conf/ of the
    checkout under an editable install, inside site-packages under a regular one)."""
    from importlib import resources

    return pathlib.Path(str(resources.files("vicuna_sft.conf")))


@pytest.fixture(scope="session", autouse=True)
def _cache_outside_the_worktree(tmp_path_factory: pytest.TempPathFactory):
    """In-process runs put the encoded-data cache (default under VICUNA_SFT_CACHE) in a session temp
    dir, never in the worktree; CLI runs get their own VICUNA_SFT_CACHE from `run_module`."""
    before = os.environ.get("VICUNA_SFT_CACHE")
    os.environ["VICUNA_SFT_CACHE"] = str(tmp_path_factory.mktemp("vicuna_sft_cache"))
    yield
    if before is None:
        os.environ.pop("VICUNA_SFT_CACHE", None)
    else:
        os.environ["VICUNA_SFT_CACHE"] = before


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    from vicuna_sft.model.builtin import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def bpe_tokenizer(tiny_dir: pathlib.Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="session")
def mistral_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    from transformers import AutoTokenizer, LlamaTokenizerFast

    src = tmp_path_factory.mktemp("mistral-spm")
    shutil.copy(MISTRAL_MODEL, src / "tokenizer.model")
    # Note: LlamaTokenizerFast(vocab_file=...) does not load the vocab on transformers 5;
    # from_pretrained on a directory holding tokenizer.model does.
    spm = LlamaTokenizerFast.from_pretrained(src, add_bos_token=True, legacy=False)
    converted = tmp_path_factory.mktemp("mistral")
    spm.save_pretrained(converted)
    tok = AutoTokenizer.from_pretrained(converted)
    assert len(tok) == 32000
    assert tok("hi").input_ids[0] == tok.bos_token_id == 1
    assert tok.eos_token == "</s>" and tok.eos_token_id == 2
    return tok


@pytest.fixture(scope="session")
def sample_path() -> pathlib.Path:
    from vicuna_sft.model.builtin import sample_conversations_path

    return sample_conversations_path()


@pytest.fixture(scope="session")
def cache_dir(tiny_dir: pathlib.Path) -> str:
    """VICUNA_SFT_CACHE for CLI runs: conf/model/tiny.yaml finds the session's tiny model there."""
    return str(tiny_dir.parent)


@pytest.fixture(scope="session")
def run_module(cache_dir: str):
    """`run_module("vicuna_sft", *overrides, cwd=...)`: `python -m <module> ...` as a user runs it,
    with the session's tiny model as VICUNA_SFT_CACHE."""

    def run(module: str, *args: str, cwd: pathlib.Path, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "VICUNA_SFT_CACHE": cache_dir, "HYDRA_FULL_ERROR": "0", "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(sys.path)
        cmd = [sys.executable, "-m", module, *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def tied_dir(tiny_dir: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The tiny Llama with tied input/output embeddings (as Llama-3.2-1B / Qwen2-0.5B ship)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.tie_word_embeddings is False
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    out = tmp_path_factory.mktemp("tied") / "tiny-tied"
    model.save_pretrained(out)
    for f in tiny_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out
