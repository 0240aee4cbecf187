r"""`python -m vicuna_sft.preprocess [overrides as for training] [preprocess.show=N] [preprocess.out=DIR]`

Encodes the configured data with the configured tokenizer, exactly as a training run with the same
overrides would (same config tree, same `vicuna_sft.data` code), and writes into the output
directory (default: the Hydra run dir `outputs/preprocess/<model>_<data>`, `<data>` as for training):

- `encoded_train.jsonl` (and `encoded_eval.jsonl` when there is an eval split): one JSON object per
  kept sample, `{"id": ..., "input_ids": [...], "labels": [...]}`; labels are -100 where no loss
  is computed.
- `stats.json`: records read / kept / dropped (by reason) / adjusted (by fix-up), tokens, trained
  tokens and truncated samples, in total and per file and split.
- `config.yaml`: the resolved config.

`preprocess.show=N` prints the first N training samples with the trained tokens highlighted:
in color on a terminal, else between `[[` and `]]` (`preprocess.color=true|false` forces either).
Special tokens are shown as `⟨</s>⟩`, so a `</s>` typed in a message (plain text) and the real EOS
differ; control characters (other than newline and tab), bidi controls, `\` and `⟨⟩` in the text are
escaped (`\x00`, `\u202e`, `\\`), so nothing in the data acts on the terminal.

Config: the training schema (`vicuna_sft.config.Config`) extended by one `preprocess` node; the
extension lives in this process only, so the training app never sees the key.
"""

import itertools
import json
import os
import sys
import unicodedata
from dataclasses import dataclass, field, replace
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .config import SCHEMA_NAME, Config, register_configs, save_config, schema_node
from .data.encode import IGNORE_INDEX
from .errors import UserError
from .validation import checked

ENCODED_FILE = "encoded_{split}.jsonl"
STATS_FILE = "stats.json"
MARK_OPEN, MARK_CLOSE = "[[", "]]"
ANSI_TRAINED, ANSI_RESET = "\033[1;32m", "\033[0m"
SPECIAL_OPEN, SPECIAL_CLOSE = "\u27e8", "\u27e9"  # ⟨ ⟩ around a special token, e.g. ⟨</s>⟩


@dataclass
class PreprocessOptions:
    out: str | None = None  # None: the Hydra run dir (outputs/preprocess/<model>_<data>)
    show: int = 0  # print this many training samples with the trained tokens highlighted
    color: bool | None = None  # None: ANSI color when stdout is a terminal, else [[...]] markers


@dataclass
class PreprocessConfig(Config):
    preprocess: PreprocessOptions = field(default_factory=PreprocessOptions)


HYDRA_SETTINGS = {
    "job": {"name": "preprocess"},
    "run": {
        # per model and tokenizer (config.model_run_name): one model's encoding never overwrites another's
        "dir": "outputs/preprocess/${vicuna_sft_model_name:${hydra.runtime.choices.model}}_"
        "${vicuna_sft_data_name:${hydra.runtime.choices.data}}"
    },
    "sweep": {"dir": "multirun/preprocess/${now:%Y-%m-%d_%H-%M-%S}"},
    "help": {
        "app_name": "vicuna_sft.preprocess",
        "header": "${hydra.help.app_name}: encode the configured data with the configured tokenizer as "
        "training would,\nwrite encoded_{train,eval}.jsonl and stats.json, and show samples with the "
        "trained tokens highlighted.\nTakes the same overrides as `python -m vicuna_sft`, plus "
        "preprocess.out=DIR, preprocess.show=N, preprocess.color=true|false.\n",
        "footer": "Examples:\n"
        "  python -m vicuna_sft.preprocess preprocess.show=3\n"
        "  python -m vicuna_sft.preprocess experiment=vicuna_7b data.path=/data/sharegpt.json "
        "preprocess.out=/data/encoded\n",
    },
}


def register_preprocess_configs() -> None:
    """The training configs, with the root schema extended by `preprocess` and a primary config
    `preprocess` = the training `config` + this command's Hydra settings (run dir, job name, help)."""
    register_configs()
    cs = ConfigStore.instance()
    # conf/config.yaml starts from `config_schema`; in this process it is the extended schema
    cs.store(name=SCHEMA_NAME, node=schema_node(PreprocessConfig))
    cs.store(name="preprocess", node={"defaults": ["config", "_self_"], "hydra": HYDRA_SETTINGS})


def split_config(dcfg: DictConfig) -> tuple[Config, PreprocessOptions]:
    """The training `Config` (typed and checked as for training) and this command's options."""
    options = OmegaConf.to_object(dcfg.preprocess) if "preprocess" in dcfg else PreprocessOptions()
    body = OmegaConf.masked_copy(dcfg, [k for k in dcfg if k != "preprocess"])
    return checked(body), options


# ---------------------------------------------------------------------------------------------
# highlighting


def trained_spans(labels: list[int]) -> list[tuple[int, int, bool]]:
    """Maximal runs `(start, end, trained)` of tokens with / without a label."""
    spans: list[tuple[int, int, bool]] = []
    for i, label in enumerate(labels):
        trained = label != IGNORE_INDEX
        if spans and spans[-1][2] == trained:
            spans[-1] = (spans[-1][0], i + 1, trained)
        else:
            spans.append((i, i + 1, trained))
    return spans


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens (BOS, EOS, UNK, pad, added special tokens)."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    return ids


# Shown as \xNN / \uNNNN: control characters other than newline and tab (NUL, ESC, CR, ... would
# act on the terminal), line/paragraph separators, bidi controls (reorder what is shown), and the
# characters the preview itself uses to mark special tokens and escapes, so the output is unambiguous.
_BIDI = {0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)}
_MARKERS = {ord(SPECIAL_OPEN), ord(SPECIAL_CLOSE)}


def escape(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) in ("Cc", "Zl", "Zp") or code in _BIDI or code in _MARKERS:
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def highlight(tokenizer: Any, input_ids: list[int], labels: list[int], color: bool) -> str:
    """The sample's text with its trained tokens marked (ANSI color or `[[...]]`), special tokens
    shown as `⟨</s>⟩` (a `</s>` typed in a message stays plain text), and `escape`d text.

    Each piece is decoded as the difference of two prefix decodes, so the spaces a tokenizer only
    shows in context (SentencePiece `▁`) stay where they are."""

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    specials = special_ids(tokenizer)
    opening, closing = (ANSI_TRAINED, ANSI_RESET) if color else (MARK_OPEN, MARK_CLOSE)
    out, before = [], ""
    for start, end, trained in trained_spans(labels):
        text = []
        # within a span: runs of ordinary tokens, and each special token on its own
        cuts = {start, end}
        cuts.update(j for i in range(start, end) if input_ids[i] in specials for j in (i, i + 1))
        bounds = sorted(cuts)
        for a, b in itertools.pairwise(bounds):
            upto = decode(input_ids[:b])
            piece = upto[len(before) :] if upto.startswith(before) else decode(input_ids[a:b])
            before = upto
            if b - a == 1 and input_ids[a] in specials:
                token = tokenizer.convert_ids_to_tokens(input_ids[a])
                lead, found, tail = piece.partition(token)
                if not found:
                    lead = tail = ""
                text.append(f"{escape(lead)}{SPECIAL_OPEN}{escape(token)}{SPECIAL_CLOSE}{escape(tail)}")
            else:
                text.append(escape(piece))
        joined = "".join(text)
        out.append(f"{opening}{joined}{closing}" if trained else joined)
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# the command


def totals(data_stats: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """Totals over files and splits: read == kept + sum(dropped) (record-level problems and samples
    left without a trained token after truncation both count as dropped) with data.long=truncate;
    with split, each split's samples == kept + its dropped."""
    from collections import Counter

    dropped: Counter = Counter()
    adjusted: Counter = Counter()
    read = 0
    for s in data_stats["records"].values():
        read += s["read"]
        dropped.update(s["dropped"])
        adjusted.update(s["adjusted"])
    splits = {}
    for name in ("train", "eval"):
        s = data_stats.get(name)
        if s is None:
            continue
        dropped.update(s["dropped"])
        splits[name] = {
            "conversations": s["read"],
            "samples": s["samples"],  # several per conversation under data.long=split
            "split": s["split"],
            "kept": s["kept"],
            "dropped": s["dropped"],
            "truncated": s["truncated"],
            "lost_tokens": s["lost_tokens"],
            "tokens": s["tokens"],
            "trained_tokens": s["trained_tokens"],
            "file": files[name],
        }
    return {
        "read": read,
        "kept": sum(s["kept"] for s in splits.values()),
        "dropped": dict(dropped),
        "adjusted": dict(adjusted),
        "truncated": sum(s["truncated"] for s in splits.values()),
        "split": sum(s["split"] for s in splits.values()),
        "lost_tokens": sum(s["lost_tokens"] for s in splits.values()),
        "tokens": sum(s["tokens"] for s in splits.values()),
        "trained_tokens": sum(s["trained_tokens"] for s in splits.values()),
        "files": {
            path: {k: s[k] for k in ("read", "kept", "dropped", "adjusted")}
            for path, s in data_stats["records"].items()
        },
        "splits": splits,
    }


def write_jsonl(dataset: Any, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in dataset:
            record = {"id": row["id"], "input_ids": row["input_ids"], "labels": row["labels"]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def preprocess(dcfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from .data.dataset import build_datasets
    from .model.loading import load_tokenizer

    cfg, options = split_config(dcfg)
    if options.show < 0:
        raise UserError(f"preprocess.show must be >= 0, got {options.show}")
    out = options.out or HydraConfig.get().runtime.output_dir
    save_config(cfg, out)

    tokenizer = load_tokenizer(cfg.model)
    # everything is encoded up front here, whatever data.lazy says for training
    data = build_datasets(replace(cfg.data, lazy=False), tokenizer, seed=cfg.trainer.seed)
    files = {}
    for name, dataset in (("train", data.train), ("eval", data.eval)):
        if dataset is not None:
            files[name] = os.path.join(out, ENCODED_FILE.format(split=name))
            write_jsonl(dataset, files[name])
    stats = {
        "model": cfg.model.name_or_path,
        "tokenizer": cfg.model.tokenizer or cfg.model.name_or_path,
        "template": cfg.data.template,
        "long": cfg.data.long.value,
        "max_length": cfg.data.max_length,
        **totals(data.stats, files),
    }
    stats_path = os.path.join(out, STATS_FILE)
    with open(stats_path, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=2, ensure_ascii=False)

    if options.show:
        color = sys.stdout.isatty() if options.color is None else options.color
        show(tokenizer, data.train, options.show, color)
    print_summary(stats, stats_path)
    return stats


def show(tokenizer: Any, dataset: Any, n: int, color: bool) -> None:
    legend = f"{ANSI_TRAINED}like this{ANSI_RESET}" if color else f"{MARK_OPEN}like this{MARK_CLOSE}"
    print(
        f"trained tokens (labels != {IGNORE_INDEX}) are shown {legend}, special tokens as "
        f"{SPECIAL_OPEN}</s>{SPECIAL_CLOSE} (a typed </s> is plain text), control characters as \\xNN\n"
    )
    for i in range(min(n, len(dataset))):
        row = dataset[i]
        n_trained = sum(1 for x in row["labels"] if x != IGNORE_INDEX)
        print(f"--- sample {i}  id={row['id']}  tokens={len(row['input_ids'])}  trained={n_trained}")
        print(highlight(tokenizer, row["input_ids"], row["labels"], color))
        print()


def print_summary(stats: dict[str, Any], stats_path: str) -> None:
    lines = [
        f"vicuna_sft.preprocess: {stats['read']} records read, {stats['kept']} samples kept"
        + (f", dropped {stats['dropped']}" if stats["dropped"] else "")
        + (f", adjusted {stats['adjusted']}" if stats["adjusted"] else ""),
        f"  template {stats['template']}, max_length {stats['max_length']}, data.long={stats['long']}, "
        f"tokenizer {stats['tokenizer']}",
    ]
    for name, s in stats["splits"].items():
        lines.append(
            f"  {name:<5} {s['kept']} samples, {s['tokens']} tokens, {s['trained_tokens']} trained, "
            f"{s['split']} conversations split, {s['truncated']} truncated "
            f"({s['lost_tokens']} trained tokens cut) -> {s['file']}"
        )
    lines.append(f"  stats {stats_path}")
    print("\n".join(lines), flush=True)


@hydra.main(version_base="1.3", config_path="pkg://vicuna_sft.conf", config_name="preprocess")
def _hydra_main(dcfg: DictConfig) -> dict[str, Any]:
    try:
        return preprocess(dcfg)
    except UserError as e:
        print(f"vicuna_sft: error: {e}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    """Console script `vicuna-sft-preprocess` and `python -m vicuna_sft.preprocess`."""
    register_preprocess_configs()
    _hydra_main()


if __name__ == "__main__":
    main()
