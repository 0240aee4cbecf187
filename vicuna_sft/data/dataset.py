"""Train/eval datasets from the `data` config: read, validate, split, encode, count.

Eager mode encodes everything up front with the batched fast tokenizer (`datasets.map`, num_proc);
lazy mode encodes on access and caches nothing. Every record or sample not trained on is counted
with its reason in the returned stats.
"""

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import DataConfig, OnError
from .collate import Collator, pad_id_for
from .conversation import Conversation
from .encode import Encoder
from .records import DataError, Stats, load_conversations

log = logging.getLogger(__name__)
NO_TRAINED_TOKENS = "no_trained_tokens_after_truncation"


@dataclass
class Datasets:
    train: Any
    eval: Any
    collator: Collator
    stats: dict[str, Any] = field(default_factory=dict)  # {"records": {path: ...}, "train": ..., "eval": ...}

    def seen_stats(self) -> dict[str, int]:
        """What only shows while training: lazy samples met with no trained token (this process)."""
        seen = {
            f"{name}_lazy_samples_without_trained_tokens": len(ds.empty_seen)
            for name, ds in (("train", self.train), ("eval", self.eval))
            if isinstance(ds, LazyDataset)
        }
        return {k: v for k, v in seen.items() if v}


def report_data(stats: dict[str, Any], out: str) -> None:
    """Log what was read, kept, dropped and adjusted; rank 0 writes `<out>/data_stats.json`."""
    import json
    import os

    from ..process import rank

    for path, s in stats["records"].items():
        msg = f"data {path}: {s['read']} records read, {s['kept']} kept"
        if s["dropped"]:
            msg += f", dropped {s['dropped']}"
        if s["adjusted"]:
            msg += f", adjusted {s['adjusted']}"
        log.info(msg)
    for split in ("train", "eval"):
        if split in stats:
            log.info("%s samples: %s", split, stats[split])
    if rank() == 0:
        with open(os.path.join(out, "data_stats.json"), "w") as f:
            json.dump(stats, f, indent=2)


def split_eval(convs: list[Conversation], fraction: float, seed: int) -> tuple[list, list]:
    if fraction == 0.0:
        return convs, []
    n_eval = max(1, round(len(convs) * fraction))
    if n_eval >= len(convs):
        raise DataError(f"data.eval_fraction={fraction} leaves no training samples out of {len(convs)}")
    held_out = set(random.Random(seed).sample(range(len(convs)), n_eval))
    train = [c for i, c in enumerate(convs) if i not in held_out]
    return train, [c for i, c in enumerate(convs) if i in held_out]


def _encode_columns(batch: dict[str, list], encoder: Encoder) -> dict[str, list]:
    convs = [
        Conversation(i, s, tuple(zip(u, r)))
        for i, s, u, r in zip(batch["id"], batch["system"], batch["users"], batch["replies"])
    ]
    encoded = encoder.encode_batch(convs)
    return {
        "id": [e.id for e in encoded],
        "input_ids": [e.input_ids for e in encoded],
        "labels": [e.labels for e in encoded],
        "truncated": [e.truncated for e in encoded],
        "trained": [e.trained_tokens for e in encoded],
    }


def encode_eager(convs: list[Conversation], encoder: Encoder, num_proc: int) -> tuple[Any, Stats]:
    """A `datasets.Dataset` with columns id, input_ids, labels (samples with no trained token removed)."""
    import datasets

    columns = {
        "id": [c.id for c in convs],
        "system": [c.system for c in convs],
        "users": [[u for u, _ in c.turns] for c in convs],
        "replies": [[r for _, r in c.turns] for c in convs],
    }
    ds = datasets.Dataset.from_dict(columns).map(
        _encode_columns,
        batched=True,
        batch_size=256,
        fn_kwargs={"encoder": encoder},
        num_proc=num_proc if num_proc > 1 and len(convs) >= 2 * num_proc else None,
        remove_columns=["system", "users", "replies"],
        desc="encoding",
    )
    trained = ds["trained"]
    stats = Stats(read=len(convs), truncated=sum(ds["truncated"]))
    keep = [i for i, n in enumerate(trained) if n > 0]
    stats.kept = len(keep)
    if len(keep) < len(convs):
        stats.dropped[NO_TRAINED_TOKENS] = len(convs) - len(keep)
        ds = ds.select(keep)
    stats.tokens = sum(len(x) for x in ds["input_ids"])
    stats.trained_tokens = sum(trained[i] for i in keep)
    return ds.remove_columns(["truncated", "trained"]), stats


class LazyDataset(torch.utils.data.Dataset):
    """Encodes on access (no cache). A sample truncated down to no trained token still yields a
    row whose labels are all ignored (the sampler already chose it); it is logged and counted."""

    def __init__(self, convs: list[Conversation], encoder: Encoder):
        self.convs, self.encoder = convs, encoder
        self.empty_seen: set[str] = set()

    def __len__(self) -> int:
        return len(self.convs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        e = self.encoder.encode(self.convs[i])
        if e.trained_tokens == 0 and e.id not in self.empty_seen:
            self.empty_seen.add(e.id)
            log.warning("sample %s has no trained token left after truncation to %d", e.id, len(e.input_ids))
        return {"input_ids": e.input_ids, "labels": e.labels}


@dataclass
class Records:
    """The data files read, validated and split, not yet encoded: cheap enough to come before
    the choice of a checkpoint, whose run fingerprint holds the files' hashes (`digests`)."""

    train: list[Conversation]
    eval: list[Conversation]
    files: dict[str, Stats]  # path -> what happened to its records

    def digests(self) -> dict[str, str]:
        return {path: s.xxh3_128 for path, s in self.files.items()}


def read_data(cfg: DataConfig, seed: int) -> Records:
    skip = cfg.on_error == OnError["skip"]
    convs, file_stats = load_conversations(cfg.path, skip_errors=skip)
    records = {cfg.path: file_stats}
    if cfg.eval_path:
        train_convs = convs
        eval_convs, records[cfg.eval_path] = load_conversations(cfg.eval_path, skip_errors=skip)
    else:
        train_convs, eval_convs = split_eval(convs, cfg.eval_fraction, seed)
    for path, s in records.items():
        s.kept = s.read - sum(s.dropped.values())
        if s.kept == 0:
            raise DataError(f"{path}: no usable record out of {s.read} (dropped: {dict(s.dropped)})")
    return Records(train_convs, eval_convs, records)


def build_datasets(cfg: DataConfig, tokenizer: Any, seed: int, data: Records | None = None) -> Datasets:
    """Encode `data` (read here when not given) into the train/eval datasets."""
    encoder = Encoder(tokenizer, cfg.max_length)
    data = data or read_data(cfg, seed)
    train_convs, eval_convs, records = data.train, data.eval, data.files
    record_keys = ("xxh3_128", "read", "kept", "dropped", "adjusted")  # token counts belong to the splits
    stats: dict[str, Any] = {
        "records": {p: {k: v for k, v in s.as_dict().items() if k in record_keys} for p, s in records.items()}
    }
    splits = {}
    for name, split in (("train", train_convs), ("eval", eval_convs)):
        if not split:
            splits[name] = None
        elif cfg.lazy:
            splits[name] = LazyDataset(split, encoder)
            # encoded on access: samples truncated to no trained token are counted as they are met
            # (Datasets.seen_stats) and contribute no loss
            stats[name] = {"samples": len(split), "lazy": True}
        else:
            splits[name], s = encode_eager(split, encoder, cfg.num_proc)
            stats[name] = s.as_dict()
    if not splits["train"]:
        raise DataError(f"{cfg.path}: every sample was dropped: {stats}")
    collator = Collator(pad_id_for(tokenizer), cfg.padding, cfg.max_length)
    return Datasets(splits["train"], splits["eval"], collator, stats)
