"""`python -m vicuna_sft.data COMMAND`: FastChat's data preparation, done as training needs it.

    clean IN OUT [--drop-word W ...]   ShareGPT HTML export -> markdown records, deduplicated,
                                       wrong-format records dropped and counted (data/clean.py)
    identity OUT --name NAME --org ORG identity conversations ("I am NAME, trained by ORG")
    stats [training overrides ...]     records, turns, token-length percentiles with the configured
                                       tokenizer, and how many samples would be split or truncated

Long-conversation splitting is not a separate step: `data.long=split` does it while encoding.
This module is a command (the top layer): it may use the model and validation modules.
"""

import argparse
import json
import sys
from typing import Any

from ..errors import UserError


def _write_json(records: list[Any], out: str) -> None:
    """Written next to its place and renamed: OUT is never half-written."""
    from ..files import replacing

    with replacing(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False, indent=1)


def clean(args: argparse.Namespace) -> dict[str, Any]:
    from .clean import clean_records
    from .records import read_records

    records, stats = clean_records(read_records(args.input)[0], args.input, tuple(args.drop_word))
    _write_json(records, args.output)
    s = stats.as_dict()
    print(
        f"vicuna_sft.data clean: {s['read']} records read, {s['kept']} kept -> {args.output}"
        + (f", dropped {s['dropped']}" if s["dropped"] else "")
        + f"; {s['converted_html']} messages converted from HTML",
        flush=True,
    )
    return s


def identity(args: argparse.Namespace) -> dict[str, Any]:
    from .identity import identity_records

    try:
        records = identity_records(args.name, args.org)
    except ValueError as e:
        raise UserError(str(e)) from None
    _write_json(records, args.output)
    print(f"vicuna_sft.data identity: {len(records)} conversations -> {args.output}", flush=True)
    return {"records": len(records)}


def _percentiles(values: list[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    a = np.asarray(values)
    return {
        **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 95, 99)},
        "mean": float(a.mean()),
        "max": int(a.max()),
    }


def compute_stats(cfg: Any, tokenizer: Any, seed: int) -> dict[str, Any]:
    """What training with `cfg` would see, before encoding anything for real."""
    from dataclasses import replace

    from ..config import LongMode
    from .dataset import read_splits
    from .encode import IGNORE_INDEX, Encoder

    d = replace(cfg, lazy=False)
    train, evals, records = read_splits(d, seed)
    out: dict[str, Any] = {
        "records": records,
        "max_length": d.max_length,
        "long": d.long.value,
        "template": d.template,
        "tokenizer": tokenizer.name_or_path,
    }
    whole = Encoder.for_data(d, tokenizer, max_length=1 << 40, long=LongMode.truncate)  # never cuts
    splitter = Encoder.for_data(d, tokenizer, long=LongMode.split)
    n = d.max_length
    for name, convs in (("train", train), ("eval", evals)):
        if not convs:
            continue
        truncated = lost_truncate = 0
        split_convs = pieces = pairs_cut = lost_split = 0
        full = []
        for start in range(0, len(convs), 256):
            batch = convs[start : start + 256]
            for samples in whole.samples(batch):
                for e in samples:
                    if e.dropped:
                        continue
                    full.append(len(e.input_ids))
                    truncated += len(e.input_ids) > n
                    lost_truncate += sum(1 for t in e.labels[n:] if t != IGNORE_INDEX)
            for conv_pieces in splitter.samples(batch):
                conv_pieces = [p for p in conv_pieces if not p.dropped]
                split_convs += len(conv_pieces) > 1
                pieces += len(conv_pieces)
                pairs_cut += sum(p.truncated for p in conv_pieces)
                lost_split += sum(p.lost_tokens for p in conv_pieces)
        out[name] = {
            "conversations": len(convs),
            "turns": _percentiles([len(c.turns) for c in convs]),
            "tokens": _percentiles(full),
            "longer_than_max_length": sum(n > d.max_length for n in full),
            "truncate": {"truncated": truncated, "lost_reply_tokens": lost_truncate},
            "split": {
                "conversations_split": split_convs,
                "samples": pieces,
                "pairs_truncated": pairs_cut,
                "lost_reply_tokens": lost_split,
            },
        }
    return out


def print_stats(s: dict[str, Any]) -> None:
    lines = [
        f"vicuna_sft.data stats: max_length {s['max_length']}, data.long={s['long']}, tokenizer {s['tokenizer']}"
    ]
    for path, r in s["records"].items():
        lines.append(
            f"  {path}: {r['read']} records, {r['kept']} usable"
            + (f", dropped {r['dropped']}" if r["dropped"] else "")
            + (
                f"; weight {r['weight']:g}: {r['train_samples']} training samples"
                if "train_samples" in r
                else ""
            )
        )
    for name in ("train", "eval"):
        if name not in s:
            continue
        x = s[name]
        t = x["tokens"]
        lines += [
            f"  {name}: {x['conversations']} conversations, turns p50 {x['turns']['p50']:.0f} max {x['turns']['max']}",
            f"    tokens p50 {t['p50']:.0f}  p90 {t['p90']:.0f}  p95 {t['p95']:.0f}  p99 {t['p99']:.0f}  max {t['max']}"
            f"  ({x['longer_than_max_length']} longer than {s['max_length']})",
            f"    data.long=truncate: {x['truncate']['truncated']} truncated, {x['truncate']['lost_reply_tokens']} reply tokens lost",
            f"    data.long=split: {x['split']['conversations_split']} split into {x['split']['samples']} samples in all, "
            f"{x['split']['pairs_truncated']} single pairs truncated, {x['split']['lost_reply_tokens']} reply tokens lost",
        ]
    print("\n".join(lines), flush=True)


def stats(args: argparse.Namespace) -> dict[str, Any]:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from ..config import register_configs
    from ..model.loading import load_tokenizer
    from ..validation import checked

    overrides = list(args.overrides)
    if not any(o.startswith("trainer.output_dir=") for o in overrides):
        overrides.append("trainer.output_dir=.")  # nothing is written; the interpolation needs a value
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        cfg = checked(compose("config", overrides=overrides))
    result = compute_stats(cfg.data, load_tokenizer(cfg.model), cfg.trainer.seed)
    print_stats(result)
    if args.json:
        _write_json(result, args.json)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m vicuna_sft.data",
        description=__doc__.split("\nThis module")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("clean", help="ShareGPT HTML export -> clean markdown records")
    c.add_argument("input", help="raw ShareGPT export (JSON array or JSONL)")
    c.add_argument("output", help="cleaned records (JSON array)")
    c.add_argument(
        "--drop-word", action="append", default=[], help="drop records containing WORD (repeatable)"
    )
    c.set_defaults(fn=clean)
    i = sub.add_parser("identity", help="write identity conversations with your names")
    i.add_argument("output")
    i.add_argument("--name", required=True, help="the assistant's name, e.g. Vicuna")
    i.add_argument(
        "--org", required=True, help="who trained it, e.g. 'Large Model Systems Organization (LMSYS)'"
    )
    i.set_defaults(fn=identity)
    s = sub.add_parser("stats", help="lengths and split/truncation counts for a training config")
    s.add_argument("overrides", nargs="*", help="training overrides, e.g. data=sharegpt data.path=x.json")
    s.add_argument("--json", help="also write the numbers to this file")
    s.set_defaults(fn=stats)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        args.fn(args)
    except UserError as e:
        print(f"vicuna_sft: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
