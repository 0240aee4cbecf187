"""`vicuna_sft.check`: passes for every CPU-runnable variant on the tiny model, fails naming the
difference when a wrong attention function is plugged in (registered into this process through
transformers' AttentionInterface, no switch in the package), refuses what the device cannot run
before any work. The CLI itself: tests/integration/test_check_cli.py."""

from __future__ import annotations

import pathlib

import pytest
import torch

from vicuna_sft.check import TOLERANCES, CheckOptions, check, print_report, reference_config
from vicuna_sft.config import (
    AttentionConfig,
    AttentionImpl,
    Config,
    DataConfig,
    Dtype,
    FsdpConfig,
    ModelConfig,
    OptimizerConfig,
    Padding,
    Precision,
    TrainerConfig,
)
from vicuna_sft.errors import UserError

OPTIONS = CheckOptions(samples=4)


def make_cfg(
    model_dir: pathlib.Path,
    data: pathlib.Path,
    impl: AttentionImpl = AttentionImpl.sdpa,
    padding: Padding = Padding.packed,
    dtype: Dtype = Dtype.float32,
    precision: Precision = Precision.fp32,
) -> Config:
    return Config(
        model=ModelConfig(name_or_path=str(model_dir), dtype=dtype),
        data=DataConfig(path=str(data), max_length=256, padding=padding, eval_fraction=0.1),
        attention=AttentionConfig(implementation=impl),
        fsdp=FsdpConfig(),
        optimizer=OptimizerConfig(),
        trainer=TrainerConfig(output_dir="unused", precision=precision, use_cpu=True),
    )


def quantities(report) -> dict:
    return {q.name: q for q in report.quantities}


@pytest.mark.parametrize("padding", list(Padding))
@pytest.mark.parametrize("impl", [AttentionImpl.eager, AttentionImpl.sdpa])
def test_cpu_variants_pass(tiny_dir, sample_path, impl, padding):
    cfg = make_cfg(tiny_dir, sample_path, impl, padding)
    report = check(cfg, OPTIONS)
    assert report.ok, report.failures()
    q = quantities(report)
    assert report.precision == "float32" and report.samples == 4 and report.trained_tokens > 0
    assert all(
        x.tolerance == getattr(TOLERANCES["float32"], k)
        for k, x in zip(("loss", "logits", "grads"), q.values())
    )
    # the measured fp32 differences (docs/check.md): far inside the tolerances
    assert q["loss"].relative < 1e-6 and q["logits"].relative < 2e-6 and q["gradients"].relative < 2e-6
    if (impl, padding) == (AttentionImpl.eager, Padding.longest):
        # the reference's own model and batch: identical logits (the default chunked loss sums in
        # another order than the reference's full one, hence loss and gradients only within rounding)
        assert q["logits"].max_abs == 0


def test_bf16_uses_its_tolerances(tiny_dir, sample_path):
    cfg = make_cfg(tiny_dir, sample_path, AttentionImpl.sdpa, Padding.packed, Dtype.bfloat16, Precision.bf16)
    report = check(cfg, OPTIONS)
    assert report.precision == "bfloat16" and report.ok, report.failures()
    q = quantities(report)
    assert q["logits"].tolerance == TOLERANCES["bfloat16"].logits
    assert q["logits"].max_abs > 0  # bf16 rounding differs between the kernels: a real comparison


def sdpa_forward(*args, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(*args, **kwargs)


def ignores_mask(module, query, key, value, attention_mask, **kwargs):
    """Causal attention over the whole row: samples packed in one row see each other."""
    return sdpa_forward(module, query, key, value, None, **kwargs)


def scales_off_by_1pct(module, query, key, value, attention_mask, scaling=None, **kwargs):
    return sdpa_forward(module, query, key, value, attention_mask, scaling=scaling * 1.01, **kwargs)


@pytest.fixture
def plug_sdpa(monkeypatch):
    """Replace what attn_implementation="sdpa" runs, in this process only (undone after the test)."""
    from transformers import AttentionInterface

    def plug(fn):
        monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", fn)

    return plug


def test_leaking_packed_attention_fails_naming_logits(tiny_dir, sample_path, plug_sdpa, capsys):
    plug_sdpa(ignores_mask)
    report = check(make_cfg(tiny_dir, sample_path, AttentionImpl.sdpa, Padding.packed), OPTIONS)
    assert not report.ok
    q = quantities(report)
    assert not q["logits"].ok and q["logits"].relative > 100 * q["logits"].tolerance
    assert not q["gradients"].ok and not q["loss"].ok
    # the first sample of the row attends only to itself: the worst token is in a later one
    assert not q["logits"].where.startswith("sample 0,"), q["logits"].where
    print_report(report, make_cfg(tiny_dir, sample_path), None)
    out = capsys.readouterr().out
    assert "vicuna_sft.check: FAILED: logits differ from the reference by" in out
    assert "vicuna_sft.check: FAILED: gradients differ" in out and "passed" not in out

    # right-padded rows: pads follow the real tokens, so causal attention alone is exact for them
    assert check(make_cfg(tiny_dir, sample_path, AttentionImpl.sdpa, Padding.longest), OPTIONS).ok


@pytest.mark.parametrize("padding", [Padding.packed, Padding.longest])
def test_subtly_wrong_scaling_fails(tiny_dir, sample_path, plug_sdpa, padding):
    plug_sdpa(scales_off_by_1pct)
    report = check(make_cfg(tiny_dir, sample_path, AttentionImpl.sdpa, padding), OPTIONS)
    q = quantities(report)
    assert not q["logits"].ok and not q["gradients"].ok, report.quantities


def test_reference_is_eager_and_padded(tiny_dir, sample_path):
    ref = reference_config(make_cfg(tiny_dir, sample_path, AttentionImpl.flash, Padding.packed))
    assert ref.attention.implementation == AttentionImpl.eager and ref.data.padding == Padding.longest


@pytest.mark.parametrize("impl", [AttentionImpl.flash, AttentionImpl.xformers])
def test_gpu_variants_refused_on_cpu_before_any_work(tiny_dir, tmp_path, impl):
    if torch.cuda.is_available():
        pytest.skip("CUDA is visible")
    missing = tmp_path / "no-such-data.json"  # never read: the refusal comes first
    cfg = make_cfg(tiny_dir, missing, impl, Padding.packed, precision=Precision.bf16)
    with pytest.raises(UserError, match=f"attention={impl.value} needs (a CUDA GPU|the xformers package)"):
        check(cfg, OPTIONS)


def test_bad_options(tiny_dir, sample_path):
    with pytest.raises(UserError, match=r"check\.samples must be >= 1"):
        check(make_cfg(tiny_dir, sample_path), CheckOptions(samples=0))


def test_compare_nan_fails_and_names_the_parameter():
    """A NaN anywhere fails its quantity (NaN compares false with every tolerance) and is the worst."""
    from vicuna_sft.check import Pass, Tolerance, compare

    tol = Tolerance(loss=1e-5, logits=1e-5, grads=1e-4)
    logits = torch.randn(5, 7)
    ref = Pass(2.0, logits, {"a": torch.ones(3), "b": torch.ones(3), "c": torch.ones(3)})
    got = Pass(
        2.0,
        logits.clone(),
        {"a": torch.ones(3), "b": torch.tensor([1.0, float("nan"), 1.0]), "c": 2 * torch.ones(3)},
    )
    q = {x.name: x for x in compare(got, ref, tol, [2, 3])}
    assert q["loss"].ok and q["logits"].ok and q["logits"].max_abs == 0
    assert not q["gradients"].ok and q["gradients"].where == "b"
    got.logits[3, 4] += 1.0  # token 3 of the row = sample 1, token 1
    got.loss = float("nan")
    q = {x.name: x for x in compare(got, ref, tol, [2, 3])}
    assert not q["loss"].ok and not q["logits"].ok and q["logits"].where == "sample 1, token 1"


def test_wrong_loss_fails_naming_it(tiny_dir, sample_path, monkeypatch):
    """A chunked loss that loses one trained token: the loss and the gradients say so."""
    from dataclasses import replace

    from vicuna_sft.config import LossConfig, LossKind
    from vicuna_sft.model import loss

    real = loss.chunked_cross_entropy_sum

    def drops_last_token(hidden, weight, bias, targets, chunk_tokens):
        return real(hidden[:-1], weight, bias, targets[:-1], chunk_tokens)

    cfg = replace(make_cfg(tiny_dir, sample_path), loss=LossConfig(kind=LossKind.chunked, chunk_tokens=64))
    assert check(cfg, OPTIONS).ok
    monkeypatch.setattr(loss, "chunked_cross_entropy_sum", drops_last_token)
    report = check(cfg, OPTIONS)
    q = quantities(report)
    assert report.configured["loss"] == "chunked" and report.reference["loss"] == "full"
    assert not q["loss"].ok and not q["gradients"].ok
    assert q["logits"].ok  # the logits come from the model, not from the loss


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_use_cpu_false_on_a_cpu_machine_checks_where_training_computes(tiny_dir, sample_path):
    """Issue 17: the check decided the device on its own and chose CUDA under trainer.use_cpu=false
    on a CPU machine (a crash moving the model), where training computes on the CPU."""
    from dataclasses import replace

    from vicuna_sft.training.arguments import to_training_arguments

    cfg = make_cfg(tiny_dir, sample_path)
    cfg = replace(cfg, trainer=replace(cfg.trainer, use_cpu=False))
    report = check(cfg, OPTIONS)
    assert report.ok, report.failures()
    assert report.device == to_training_arguments(cfg).device.type == "cpu"
