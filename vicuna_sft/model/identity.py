"""What identifies the model a run starts from, for the run fingerprint: the content of its local
files that change the math (config, weights, tokenizer, chat template), so that a checkpoint is not
resumed onto a base or tokenizer changed in place (for an adapter run, the frozen base the first
steps trained against). A hub id is identified by its name and `model.revision` instead.

Hashes are xxh3-128 (data.sources.file_digest), memoized on disk by each file's inode, size and
times: a 7B model's ~13 GB are read once, later runs only stat them.
"""

import fnmatch
import os

from ..config import ModelConfig
from ..data.cache import TOKENIZER_FILES
from ..data.sources import file_digest
from .loading import resolve_path

MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "chat_template.jinja",
    "chat_template.json",
    *TOKENIZER_FILES,
)


def model_digests(m: ModelConfig) -> dict[str, str]:
    """{path: xxh3-128} of the model's and tokenizer's local files (none for hub ids)."""
    dirs = {resolve_path(m)}
    if m.tokenizer:
        dirs.add(os.path.expanduser(m.tokenizer))
    out = {}
    for d in sorted(dirs):
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if os.path.isfile(path) and any(fnmatch.fnmatch(name, p) for p in MODEL_FILES):
                out[path] = file_digest(path)
    return out
