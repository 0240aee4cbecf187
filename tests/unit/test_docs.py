"""What the docs point at exists: every repository path and module file named in README.md and
docs/*.md (issue 10, item 17: docs/distributed.md named a file that did not exist)."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OURS = ("vicuna_sft/", "conf/", "tests/", "benchmarks/", "docs/", "hydra_plugins/")
# a repository path in backquotes: a file with an extension, or a directory with a trailing slash
PREFIX = "|".join(map(re.escape, OURS))
PATH = re.compile(rf"`((?:{PREFIX})[\w./-]*?(?:\.(?:py|yaml|sh|md|json)|/))`")
MODULE = re.compile(r"`(\w+\.py)`")  # a module named by its file name only
FASTCHAT = {"train.py", "train_mem.py", "train_xformers.py", "conversation.py"}  # its files, not ours


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_named_in_the_docs_exist(doc):
    text = doc.read_text(encoding="utf-8")
    paths = set(PATH.findall(text))
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"
    ours = {p.name for d in ("vicuna_sft", "tests", "benchmarks") for p in (ROOT / d).rglob("*.py")}
    modules = set(MODULE.findall(text)) - FASTCHAT
    assert not sorted(modules - ours), (
        f"{doc.name} names module files that do not exist: {sorted(modules - ours)}"
    )


def test_the_pattern_finds_paths():
    text = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    assert {"vicuna_sft/process.py", "vicuna_sft/training/checkpoint.py"} <= set(PATH.findall(text))
