"""Train/eval datasets from the `data` config: read, validate, split, encode, count.

Eager mode encodes everything up front with the batched fast tokenizer (`datasets.map`, num_proc),
once: the result is stored in the data cache (cache.py) and reused by later runs and other ranks;
lazy mode encodes on access and caches nothing. Every record or sample not trained on is counted
with its reason in the returned stats.
"""

import logging
import random
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import DataConfig, LongMode, OnError
from .collate import Collator, pad_id_for
from .conversation import Conversation
from .encode import Encoder
from .records import DataError, load_conversations
from .sources import apply_weights, describe, file_digest, sources

log = logging.getLogger(__name__)
NO_TRAINED_TOKENS = "no_trained_tokens_after_truncation"


@dataclass
class Datasets:
    train: Any
    eval: Any
    collator: Collator
    stats: dict[str, Any] = field(default_factory=dict)  # {"records": {path: ...}, "train": ..., "eval": ...}
    cache: dict[str, Any] | None = None  # {"hit": bool, "path": entry dir} when the data cache was used

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
        if "train_samples" in s:  # a training source (not data.eval_path)
            msg += f"; weight {s['weight']:g}: {s['train_samples']} training samples"
            msg += f" from {s['train_records']} training records"
        log.info(msg)
        if s.get("train_samples") == 0:
            log.warning(
                "data %s contributes no training sample (%d training records after the eval split, "
                "weight %g): raise its weight, or drop the source",
                path,
                s["train_records"],
                s["weight"],
            )
    for split in ("train", "eval"):
        if split in stats:
            log.info("%s samples: %s", split, stats[split])
    if rank() == 0:
        with open(os.path.join(out, "data_stats.json"), "w") as f:
            json.dump(stats, f, indent=2)


def split_eval(convs: list, fraction: float, seed: int) -> tuple[list, list]:
    if fraction == 0.0:
        return convs, []
    n_eval = max(1, round(len(convs) * fraction))
    if n_eval >= len(convs):
        raise DataError(f"data.eval_fraction={fraction} leaves no training samples out of {len(convs)}")
    held_out = set(random.Random(seed).sample(range(len(convs)), n_eval))
    train = [c for i, c in enumerate(convs) if i not in held_out]
    return train, [c for i, c in enumerate(convs) if i in held_out]


def _encode_columns(batch: dict[str, list], encoder: Encoder) -> dict[str, list]:
    """One row per sample; a conversation split under `long=split` gives several rows."""
    convs = [Conversation.from_json(i, c) for i, c in zip(batch["id"], batch["conversation"])]
    out: dict[str, list] = {
        k: []
        for k in (
            "id",
            "input_ids",
            "labels",
            "truncated",
            "trained",
            "lost",
            "piece",
            "pieces",
            "dropped",
            "layout",
        )
    }
    for pieces in encoder.samples(convs):
        for k, e in enumerate(pieces):
            out["dropped"].append(e.dropped)
            out["layout"].append(e.layout)
            out["id"].append(e.id)
            out["input_ids"].append(e.input_ids)
            out["labels"].append(e.labels)
            out["truncated"].append(e.truncated)
            out["trained"].append(e.trained_tokens)
            out["lost"].append(e.lost_tokens)
            out["piece"].append(k)
            out["pieces"].append(len(pieces))
    return out


@dataclass
class SampleStats:
    """What encoding did to the conversations of one split (train or eval)."""

    read: int = 0  # conversations
    samples: int = 0  # encoded samples: one per conversation, several for a split one
    split: int = 0  # conversations split into several samples (data.long=split)
    kept: int = 0  # samples kept = samples - sum(dropped)
    dropped: dict = field(default_factory=dict)  # reason -> samples
    truncated: int = 0  # samples cut at max_length (split: single turn pairs longer than max_length)
    lost_tokens: int = 0  # trained tokens (reply + EOS) cut off by truncation
    tokens: int = 0  # in kept samples
    trained_tokens: int = 0  # in kept samples
    relaid: dict = field(default_factory=dict)  # data.reasoning: conversations laid out as split/keep

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def encode_eager(convs: list[Conversation], encoder: Encoder, num_proc: int) -> tuple[Any, SampleStats]:
    """A `datasets.Dataset` with columns id, input_ids, labels (samples with no trained token removed)."""
    import datasets

    columns = {"id": [c.id for c in convs], "conversation": [c.to_json() for c in convs]}
    ds = datasets.Dataset.from_dict(columns).map(
        _encode_columns,
        batched=True,
        batch_size=256,
        fn_kwargs={"encoder": encoder},
        num_proc=num_proc if num_proc > 1 and len(convs) >= 2 * num_proc else None,
        remove_columns=list(columns),
        desc=f"encoding ({encoder.long.value})",
    )
    trained, dropped, layout = ds["trained"], ds["dropped"], ds["layout"]
    first = [k == 0 for k in ds["piece"]]
    stats = SampleStats(
        read=len(convs),
        samples=sum(1 for d in dropped if not d),
        split=sum(1 for f, n, lay in zip(first, ds["pieces"], layout) if f and n > 1 and not lay),
        truncated=sum(ds["truncated"]),
        lost_tokens=sum(ds["lost"]),
    )
    for how in ("split", "keep"):  # data.reasoning re-laid these (split: at a token cost)
        n = sum(1 for f, lay in zip(first, layout) if f and lay == how)
        if n:
            stats.relaid[how] = n
    for reason in dropped:
        if reason:
            stats.dropped[reason] = stats.dropped.get(reason, 0) + 1
    empty = sum(1 for n, d in zip(trained, dropped) if n == 0 and not d)
    if empty:
        stats.dropped[NO_TRAINED_TOKENS] = empty
    keep = [i for i, n in enumerate(trained) if n > 0]
    stats.kept = len(keep)
    if len(keep) < len(ds):
        ds = ds.select(keep)
    stats.tokens = sum(len(x) for x in ds["input_ids"])
    stats.trained_tokens = sum(trained[i] for i in keep)
    return ds.select_columns(["id", "input_ids", "labels"]), stats


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


def read_splits(cfg: DataConfig, seed: int) -> tuple[list[Conversation], list[Conversation], dict[str, Any]]:
    """Train and eval conversations of every source (weights applied to train only) and the
    per-file record stats; a training source's stats also say how many training samples it
    contributes once weighted (`weight`, `train_records` after the eval split, `train_samples`)."""
    skip = cfg.on_error == OnError["skip"]
    items, weights, origin, records = [], [], [], {}
    srcs = sources(cfg)
    for k, src in enumerate(srcs):
        if src.path in records:
            raise DataError(f"data.path: {src.path} is listed twice; give it one source with a weight")
        convs, records[src.path] = load_conversations(
            src.path, skip_errors=skip, system=src.system, train_on=cfg.train_on
        )
        items += convs
        weights += [src.weight] * len(convs)
        origin += [k] * len(convs)
    if cfg.eval_path:
        train_items = list(zip(items, weights, origin))
        eval_convs, records[cfg.eval_path] = load_conversations(
            cfg.eval_path, skip_errors=skip, train_on=cfg.train_on
        )
    else:
        train_items, eval_items = split_eval(list(zip(items, weights, origin)), cfg.eval_fraction, seed)
        eval_convs = [c for c, _, _ in eval_items]
    for path, s in records.items():
        s.kept = s.read - sum(s.dropped.values())
        if s.kept == 0:
            raise DataError(f"{path}: no usable record out of {s.read} (dropped: {dict(s.dropped)})")
    # the weights pick positions (the same picks as on the conversations), so that each sample's
    # source is known: a fractional weight on a small source can round to no sample at all
    picked = apply_weights(list(range(len(train_items))), [w for _, w, _ in train_items], seed)
    train_convs = [train_items[i][0] for i in picked]
    record_keys = ("read", "kept", "dropped", "adjusted")  # token counts belong to the splits
    record_stats = {
        p: {"xxh3_128": file_digest(p), **{k: v for k, v in s.as_dict().items() if k in record_keys}}
        for p, s in records.items()
    }
    for k, src in enumerate(srcs):
        record_stats[src.path].update(
            weight=src.weight,
            train_records=sum(1 for _, _, o in train_items if o == k),
            train_samples=sum(1 for i in picked if train_items[i][2] == k),
        )
    return train_convs, eval_convs, record_stats


def encode_splits(cfg: DataConfig, encoder: Encoder, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read, split and encode everything up front: ({"train": ds, "eval": ds | None}, stats)."""
    train_convs, eval_convs, records = read_splits(cfg, seed)
    stats: dict[str, Any] = {"records": records}
    splits: dict[str, Any] = {}
    for name, split in (("train", train_convs), ("eval", eval_convs)):
        splits[name] = None
        if split:
            splits[name], s = encode_eager(split, encoder, cfg.num_proc)
            stats[name] = s.as_dict()
    if not splits["train"]:
        raise DataError(f"{describe(cfg)}: every sample was dropped: {stats}")
    return splits, stats


def build_datasets(cfg: DataConfig, tokenizer: Any, seed: int) -> Datasets:
    from .templates import add_missing_tokens, resolve

    # before anything is keyed or encoded: ChatML on a base model adds <|im_start|>, <|im_end|>
    added = add_missing_tokens(tokenizer, resolve(cfg.template, tokenizer))
    if added:
        log.info(
            "data.template=%s: added %s to the tokenizer (the embeddings grow to match)", cfg.template, added
        )
    collator = Collator(pad_id_for(tokenizer), cfg.padding, cfg.max_length)
    if cfg.lazy:
        if cfg.long == LongMode.split:  # validate() refuses the config before this
            raise DataError("data.long=split needs data.lazy=false")
        encoder = Encoder.for_data(cfg, tokenizer)
        train_convs, eval_convs, records = read_splits(cfg, seed)
        stats: dict[str, Any] = {"records": records}
        splits = {}
        for name, split in (("train", train_convs), ("eval", eval_convs)):
            splits[name] = LazyDataset(split, encoder) if split else None
            if split:
                # encoded on access: samples truncated to no trained token are counted as they are
                # met (Datasets.seen_stats) and contribute no loss
                stats[name] = {"samples": len(split), "lazy": True}
        return Datasets(splits["train"], splits["eval"], collator, stats)
    if not cfg.cache:
        splits, stats = encode_splits(cfg, Encoder.for_data(cfg, tokenizer), seed)
        return Datasets(splits["train"], splits["eval"], collator, stats)
    from . import cache

    entry = cache.load_or_build(
        cache.directory(cfg),
        cache.key_inputs(cfg, tokenizer, seed),
        # the Encoder (it copies the tokenizer twice) is only made on a miss
        lambda: encode_splits(cfg, Encoder.for_data(cfg, tokenizer), seed),
    )
    # the key is content-based: the same files under other paths hit; name them as configured now
    paths = [src.path for src in sources(cfg)] + ([cfg.eval_path] if cfg.eval_path else [])
    stats = {**entry.stats, "records": dict(zip(paths, entry.stats["records"].values()))}
    return Datasets(entry.splits["train"], entry.splits.get("eval"), collator, stats, cache=entry.info())
