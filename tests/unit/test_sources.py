"""Several sources in data.path: a file, a list of files, or {path, weight, system} mappings."""

import json
import os

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from vicuna_sft.config import DataConfig, register_configs, to_config
from vicuna_sft.data.dataset import build_datasets, report_data
from vicuna_sft.data.sources import apply_weights, data_digests, file_digest
from vicuna_sft.data.templates import VICUNA_SYSTEM
from vicuna_sft.errors import UserError
from vicuna_sft.validation import ConfigError, validate


def write(path, n, prefix, system=None):
    recs = []
    for i in range(n):
        conv = [{"from": "human", "value": f"{prefix} q{i}"}, {"from": "gpt", "value": f"{prefix} a{i}"}]
        if system:
            conv.insert(0, {"from": "system", "value": system})
        recs.append({"id": f"{prefix}{i}", "conversations": conv})
    path.write_text(json.dumps(recs))
    return str(path)


def compose_cfg(*overrides):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vicuna_sft.conf", version_base="1.3"):
        return to_config(compose("config", overrides=["trainer.output_dir=/tmp/x", *overrides]))


def test_path_forms_from_the_command_line(tmp_path):
    a, b = write(tmp_path / "a.json", 2, "a"), write(tmp_path / "b.json", 2, "b")
    assert [s.path for s in compose_cfg(f"data.path={a}").data.sources()] == [a]
    assert [s.path for s in compose_cfg(f"data.path=[{a},{b}]").data.sources()] == [a, b]
    cfg = compose_cfg(f"data.path=[{a},{{path:{b},weight:2.5,system:'Be brief.'}}]")
    srcs = cfg.data.sources()
    assert (srcs[1].path, srcs[1].weight, srcs[1].system) == (b, 2.5, "Be brief.")
    assert (srcs[0].weight, srcs[0].system) == (1.0, None)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ([], "empty list"),
        ([{"path": "a.json", "wieght": 2}], r"data.path\[0\]: .*wieght"),
        ([{"path": "a.json", "weight": 0}], r"data.path\[0\]: weight must be a positive number, got 0"),
        ([{"path": "a.json", "weight": "lots"}], r"data.path\[0\]: .*weight"),
        ([{"weight": 2}], r"data.path\[0\]: .*path"),
        ([3], r"data.path\[0\]: expected a file path or a mapping"),
    ],
)
def test_bad_sources_fail_validation_naming_the_item(path, message):
    cfg = compose_cfg("data.path=x.json")
    cfg.data.path = path
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_lazy_split_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"data.long=split needs the samples up front"):
        validate(compose_cfg("data.lazy=true", "data.long=split"))


def test_weights_repeat_and_subsample_train_only_and_system_per_source(bpe_tokenizer, tmp_path):
    main = write(tmp_path / "main.json", 10, "m")
    ident = write(tmp_path / "ident.json", 4, "i")
    own = write(tmp_path / "own.json", 2, "o", system="Record's own system.")
    cfg = DataConfig(
        path=[
            main,
            {"path": ident, "weight": 3, "system": "You are Ada."},
            {"path": own, "weight": 0.5, "system": "X"},
        ],
        max_length=256,
        eval_fraction=0.2,
        cache=False,
    )
    data = build_datasets(cfg, bpe_tokenizer, seed=0)
    train, evals = list(data.train["id"]), list(data.eval["id"])
    assert len(evals) == round(0.2 * 16) and not set(evals) & set(train)  # eval: each record once
    ids = [f"m{i}" for i in range(10)] + [f"i{i}" for i in range(4)]
    for rid in ids:
        assert train.count(rid) == (0 if rid in evals else {"m": 1, "i": 3}[rid[0]])
    o_train = [r for r in ("o0", "o1") if r not in evals]
    assert sum(train.count(r) for r in o_train) == round(0.5 * len(o_train))
    assert all(train.count(r) <= 1 for r in o_train)
    text = {r["id"]: bpe_tokenizer.decode(r["input_ids"]) for r in data.train}
    assert all("You are Ada." in t for rid, t in text.items() if rid.startswith("i"))
    assert all(VICUNA_SYSTEM in t for rid, t in text.items() if rid.startswith("m"))
    assert all("Record's own system." in t for rid, t in text.items() if rid.startswith("o"))
    assert set(data.stats["records"]) == {main, ident, own}


def test_each_source_reports_its_weighted_samples_and_one_that_vanishes_warns(
    bpe_tokenizer, tmp_path, caplog
):
    """Issue 19: a fractional weight on a small file (one record x 0.4 rounds to none) used to
    contribute no sample without a word. Every training source now reports what it contributes."""
    import logging

    main = write(tmp_path / "main.json", 10, "m")
    ident = write(tmp_path / "ident.json", 4, "i")
    one = write(tmp_path / "one_record.json", 1, "x")
    cfg = DataConfig(
        path=[main, {"path": ident, "weight": 2.5}, {"path": one, "weight": 0.4}],
        max_length=256,
        cache=False,
    )
    with caplog.at_level(logging.INFO, logger="vicuna_sft.data.dataset"):
        data = build_datasets(cfg, bpe_tokenizer, seed=0)
        report_data(data.stats, str(tmp_path))
    contributed = {
        p: (s["weight"], s["train_records"], s["train_samples"]) for p, s in data.stats["records"].items()
    }
    assert contributed == {main: (1.0, 10, 10), ident: (2.5, 4, 10), one: (0.4, 1, 0)}
    assert len(data.train) == 20 == sum(n for _, _, n in contributed.values())
    assert json.loads((tmp_path / "data_stats.json").read_text())["records"][one]["train_samples"] == 0
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert (
        f"data {ident}: 4 records read, 4 kept; weight 2.5: 10 training samples from 4 training records"
        in infos
    )
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == (
        f"data {one} contributes no training sample (1 training records after the eval split, weight 0.4): "
        "raise its weight, or drop the source"
    )


def test_apply_weights_is_seeded_and_exact():
    convs = list(range(10))
    out = apply_weights(convs, [2.5] * 10, seed=1)
    assert len(out) == 25 and all(out.count(c) in (2, 3) for c in convs)
    assert out == apply_weights(convs, [2.5] * 10, seed=1) != apply_weights(convs, [2.5] * 10, seed=2)


def test_file_digest_is_of_the_content(tmp_path):
    a = write(tmp_path / "a.json", 3, "a")
    d = file_digest(a)
    assert d == data_digests(DataConfig(path=a))[a]
    with open(a, "rb") as f:
        raw = bytearray(f.read())
    before = os.stat(a)
    raw[-2] = ord(" ")  # same size; then the old mtime back: the stamp a memo would key on
    (tmp_path / "a.json").write_bytes(bytes(raw))
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(a).st_size == before.st_size and os.stat(a).st_mtime_ns == before.st_mtime_ns
    assert file_digest(a) != d
    with pytest.raises(UserError, match="data file not found"):
        file_digest(str(tmp_path / "missing.json"))
