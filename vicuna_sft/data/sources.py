"""Data sources: `data.path` as one file, a list of files, or sources with a weight and a system prompt.

    data.path=sharegpt.json
    data.path=[sharegpt.json,extra.jsonl]
    data.path='[sharegpt.json, {path: identity.json, weight: 10, system: "You are Ada."}]'

A weight is how many times each record of the source is used per epoch: its integer part repeats
every record, its fraction adds a seeded subset (0.5: a seeded half). Weights apply to training
records only, after the eval split, so no copy of an eval record is trained on.

`file_digest` is the one content hash of a data file: the encoded-data cache key and the run
fingerprint both use it, and it is computed once per file state (path, size, mtime).
"""

import hashlib
import math
import os
import random
import time
from functools import lru_cache
from typing import Any, TypeVar

from ..config import DataConfig, SourceConfig, cache_root
from ..files import hash_file, replacing
from .records import DataError

T = TypeVar("T")


def sources(cfg: DataConfig) -> list[SourceConfig]:
    return cfg.sources()


def describe(cfg: DataConfig) -> str:
    """A short name of the configured data for messages."""
    return ", ".join(s.path for s in sources(cfg))


def _hash(path: str) -> str:
    return hash_file(path)[1]


@lru_cache(maxsize=4096)
def _digest(path: str, stamp: tuple[int, ...]) -> str:
    """Memoized in memory and on disk (<cache root>/digests/): a file whose inode, size, mtime and
    ctime are unchanged has unchanged bytes (ctime cannot be set back by a user), so a large model
    or data file is read once across runs."""
    key = hashlib.sha256(f"{path}\0{stamp}".encode()).hexdigest()[:32]
    memo = os.path.join(cache_root(), "digests", key)
    try:
        with open(memo, encoding="ascii") as f:
            value = f.read().strip()
        if len(value) == 32:
            return value
    except OSError:
        pass
    value = _hash(path)
    try:
        with replacing(memo) as tmp, open(tmp, "w", encoding="ascii") as f:
            f.write(value)
    except OSError:  # a read-only cache root: in memory only
        pass
    return value


# File timestamps are coarse (a few ms on ext4): a file rewritten within that window with the
# same size keeps its stamp. A file modified this recently is hashed every time, never memoized.
_SETTLED_S = 2.0


def file_digest(path: str) -> str:
    """xxh3-128 of the file's bytes (memoized while its inode, size and times are unchanged)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: data file not found")
    st = os.stat(path)
    real = os.path.realpath(path)
    if time.time() - max(st.st_mtime, st.st_ctime) < _SETTLED_S:
        return _hash(real)
    return _digest(real, (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))


def check_files(cfg: DataConfig) -> None:
    """Every data file the config reads exists: checked when the run starts (launch.entry's
    preflight), before workers start or anything loads, so a typo in a path fails in a second, not
    once a worker reaches the data."""
    one = not isinstance(cfg.path, list | tuple)
    keyed = [("data.path" if one else f"data.path[{i}]", s.path) for i, s in enumerate(sources(cfg))]
    keyed += [("data.eval_path", cfg.eval_path)] if cfg.eval_path else []
    bad = [(key, path) for key, path in keyed if not os.path.isfile(path)]
    if bad:
        problems = "; ".join(
            f"{key}: {path}: "
            + ("is a directory, not a data file" if os.path.isdir(path) else "data file not found")
            for key, path in bad
        )
        relative = any(not os.path.isabs(path) for _, path in bad)
        raise DataError(problems + (f" (relative to {os.getcwd()})" if relative else ""))


def data_digests(cfg: DataConfig) -> dict[str, str]:
    """{path: xxh3-128} of every data file the config reads (training sources and eval_path)."""
    paths = [s.path for s in sources(cfg)] + ([cfg.eval_path] if cfg.eval_path else [])
    return {p: file_digest(p) for p in paths}


def apply_weights(convs: list[T], weights: list[float], seed: int) -> list[T]:
    """Each conversation floor(w) times, plus once more for a seeded fraction (w mod 1) of each
    weight group; order: the original order, copies after the original. The picks depend only on
    the weights and the seed, not on the items (dataset.read_splits weights positions)."""
    out: list[T] = []
    extra: set[int] = set()
    rng = random.Random(seed)
    for w in sorted(set(weights)):
        frac = w - math.floor(w)
        if frac:
            group = [i for i, x in enumerate(weights) if x == w]
            extra |= set(rng.sample(group, round(len(group) * frac)))
    for i, (conv, w) in enumerate(zip(convs, weights)):
        out += [conv] * (math.floor(w) + (i in extra))
    return out


def key_inputs(cfg: DataConfig) -> list[dict[str, Any]]:
    """What of the sources changes the encoded data: each file's content, weight and system prompt."""
    return [{"xxh3_128": file_digest(s.path), "weight": s.weight, "system": s.system} for s in sources(cfg)]
