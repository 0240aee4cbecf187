"""Encode once: encoded datasets stored in a cache directory, keyed by everything that changes them.

An entry is `<cache_dir>/<key>/` holding `train/` and `eval/` (`datasets.Dataset.save_to_disk`:
Arrow files, memory-mapped when loaded), `stats.json`, `key.json` (the key's inputs, for people) and,
written last, `manifest.json`: every other file's size and xxh3-128. An entry is used only when
every file still matches its manifest (as checkpoints are); a damaged or swapped entry (a truncated
or replaced `.arrow`, a missing `state.json` or split directory) is reported and encoded again.
The key is a sha256 of: each data file's content (sources.file_digest) with its weight and
system prompt, the eval file's content or the eval fraction and seed, `on_error`, the tokenizer
(its files and its serialized form), the template, `max_length`, the long-conversation mode and
the source code of the modules that produce the samples (so a code change is a new entry). Nothing
else (optimizer, output dir, padding, num_proc, ...) is in it, so those never re-encode.

Concurrency: the process that finds no entry takes a file lock `<key>.lock` (filelock; the other
ranks of a node first give its local rank 0 a head start, so normally rank 0 encodes), looks
again, encodes into `<key>.tmp-<pid>-<random>/` and renames it to `<key>` (atomic on one file
system). Every other process - the other ranks of the run, or a second run started at the same
time - blocks on the lock and then loads the finished entry: one encodes, none sees half an entry.
Entries are never modified or evicted; delete the directory to reclaim space.
"""

import glob
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig, cache_root
from ..process import local_rank
from . import sources

log = logging.getLogger(__name__)

STATS_FILE, KEY_FILE, MANIFEST_FILE = "stats.json", "key.json", "manifest.json"
LEADER_GRACE_S = 30.0
# the modules whose code decides the encoded samples (a change to any of them is a new entry)
CODE_FILES = (
    "conversation.py",
    "templates.py",
    "encode.py",
    "records.py",
    "sources.py",
    "dataset.py",
    "cache.py",
)
# files of a tokenizer directory that can change how text is tokenized (weights are not among them)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
)


def directory(cfg: DataConfig) -> str:
    return cfg.cache_dir or os.path.join(cache_root(), "data")


def code_version() -> str:
    here = Path(__file__).parent
    h = hashlib.sha256()
    for name in CODE_FILES:
        h.update(name.encode() + b"\0" + (here / name).read_bytes())
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """The tokenizer's files (when loaded from a directory) and its serialized form."""
    h = hashlib.sha256()
    where = tokenizer.name_or_path
    if where and os.path.isdir(where):
        for name in sorted(os.listdir(where)):
            if name in TOKENIZER_FILES or name.endswith(".tiktoken"):
                h.update(name.encode() + b"\0" + sources.file_digest(os.path.join(where, name)).encode())
    h.update(tokenizer.backend_tokenizer.to_str().encode())
    specials = [tokenizer.bos_token, tokenizer.eos_token, tokenizer.eos_token_id, tokenizer("a").input_ids]
    h.update(json.dumps(specials).encode())
    return h.hexdigest()


def key_inputs(cfg: DataConfig, tokenizer: Any, seed: int) -> dict[str, Any]:
    """Everything the encoded train/eval datasets depend on."""
    from .templates import resolve

    srcs = sources.key_inputs(cfg)
    uses_seed = (not cfg.eval_path and cfg.eval_fraction > 0) or any(s["weight"] % 1 for s in srcs)
    return {
        "sources": srcs,
        "eval": {"xxh3_128": sources.file_digest(cfg.eval_path)}
        if cfg.eval_path
        else {"fraction": cfg.eval_fraction},
        "seed": seed if uses_seed else None,
        "on_error": cfg.on_error.value,
        # the template's text (a .jinja file or the tokenizer's template can change in place)
        "template": [
            cfg.template,
            hashlib.sha256(resolve(cfg.template, tokenizer).source.encode()).hexdigest(),
        ],
        "template_kwargs": dict(cfg.template_kwargs),
        "train_on": cfg.train_on.value,
        "reasoning": cfg.reasoning.value,
        "max_length": cfg.max_length,
        "long": cfg.long.value,
        "tokenizer": tokenizer_digest(tokenizer),
        "code": code_version(),
    }


def key_of(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:32]


@dataclass
class Entry:
    path: str
    hit: bool
    splits: dict[str, Any]  # "train" (and "eval" when there is one): datasets.Dataset, memory-mapped
    stats: dict[str, Any]

    def info(self) -> dict[str, Any]:
        return {"hit": self.hit, "path": self.path}


def _complete(entry: str) -> bool:
    return os.path.isfile(os.path.join(entry, MANIFEST_FILE))


def _files(entry: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), entry)
        for d, _, names in os.walk(entry)
        for f in names
        if not (d == entry and f == MANIFEST_FILE)
    )


def _write_manifest(entry: str) -> None:
    files = {
        rel: {
            "size": os.path.getsize(os.path.join(entry, rel)),
            "xxh3_128": sources.file_digest(os.path.join(entry, rel)),
        }
        for rel in _files(entry)
    }
    with open(os.path.join(entry, MANIFEST_FILE), "w", encoding="utf-8") as f:
        json.dump(files, f, indent=1, sort_keys=True)


def damage(entry: str) -> str | None:
    """What is wrong with a complete entry (None: every file matches its manifest)."""
    try:
        with open(os.path.join(entry, MANIFEST_FILE), encoding="utf-8") as f:
            files = json.load(f)
        assert isinstance(files, dict) and files
    except (OSError, ValueError, AssertionError):
        return "unreadable manifest"
    for rel, want in sorted(files.items()):
        path = os.path.join(entry, rel)
        if not os.path.isfile(path):
            return f"{rel} is missing"
        if os.path.getsize(path) != want.get("size"):
            return f"{rel} has {os.path.getsize(path)} bytes, the manifest says {want.get('size')}"
        if sources.file_digest(path) != want.get("xxh3_128"):
            return f"{rel} does not match its checksum"
    return None


def _usable(entry: str) -> bool:
    if not _complete(entry):
        return False
    problem = damage(entry)
    if problem:
        log.warning("data cache: %s is damaged (%s): encoding it again", entry, problem)
    return problem is None


def _load(entry: str, hit: bool) -> Entry:
    import datasets

    with open(os.path.join(entry, STATS_FILE), encoding="utf-8") as f:
        stats = json.load(f)
    splits = {
        name: datasets.load_from_disk(os.path.join(entry, name))
        for name in ("train", "eval")
        if os.path.isdir(os.path.join(entry, name))
    }
    return Entry(entry, hit, splits, stats)


def _let_local_rank_0_start(entry: str) -> None:
    """The other ranks of a node give its rank 0 a head start at the lock (it encodes, they load).
    Only a preference: after LEADER_GRACE_S the lock alone decides, so a rank 0 that never comes
    (another node's cache directory, a crash) blocks nobody."""
    deadline = time.monotonic() + LEADER_GRACE_S
    while time.monotonic() < deadline and not (os.path.exists(entry + ".lock") or _complete(entry)):
        time.sleep(0.05)


def load_or_build(
    cache_dir: str,
    inputs: dict[str, Any],
    build: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
) -> Entry:
    """The entry for `inputs`: loaded when present, else built (`build()` -> (splits, stats)),
    written atomically under a lock, and loaded back (so every process trains on the same mapped files)."""
    from filelock import FileLock, Timeout

    entry = os.path.join(cache_dir, key_of(inputs))
    if _usable(entry):
        log.info("data cache hit: %s", entry)
        return _load(entry, hit=True)
    os.makedirs(cache_dir, exist_ok=True)
    if local_rank() != 0:
        _let_local_rank_0_start(entry)
    lock = FileLock(entry + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("data cache: waiting for another process encoding into %s", entry)
        lock.acquire()
    try:
        if os.path.isdir(entry) and _usable(entry):  # another process (rank, run) finished it while we waited
            log.info("data cache hit: %s (encoded by another process)", entry)
            return _load(entry, hit=True)
        for stale in glob.glob(entry + ".tmp-*"):  # left by a killed writer; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        log.info("data cache miss: encoding into %s", entry)
        start = time.perf_counter()
        splits, stats = build()
        tmp = f"{entry}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
        for name, ds in splits.items():
            if ds is not None:
                ds.save_to_disk(os.path.join(tmp, name))
        with open(os.path.join(tmp, KEY_FILE), "w", encoding="utf-8") as f:
            json.dump(inputs, f, indent=2, sort_keys=True)
        with open(os.path.join(tmp, STATS_FILE), "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=2)
        _write_manifest(tmp)  # last: its presence marks the entry complete
        if os.path.isdir(entry):  # incomplete or damaged (checked above, under the lock): never trusted
            shutil.rmtree(entry)
        os.rename(tmp, entry)
        log.info("data cache: stored %s in %.1f s", entry, time.perf_counter() - start)
    finally:
        lock.release()
    return _load(entry, hit=False)
