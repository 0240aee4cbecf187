"""Seams of the attention package: the Trainer flow never sees the variant, option files / Enum
members / modules match one to one, and a variant that cannot run here fails before any weights
load, with a message that says what to do."""

from __future__ import annotations

import ast
import pathlib
from types import SimpleNamespace

import pytest
from conftest import conf_dir

import vicuna_sft
from vicuna_sft.config import AttentionImpl, Dtype, Padding, Precision

PKG = pathlib.Path(vicuna_sft.__file__).parent
CONF = conf_dir()


def _module_file(name: str) -> pathlib.Path | None:
    parts = name.split(".")[1:]
    if not parts:
        return PKG / "__init__.py"
    rel = pathlib.Path(*parts)
    for cand in (PKG / rel.with_suffix(".py"), PKG / rel / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(name: str) -> set[str]:
    """vicuna_sft modules imported (anywhere in the file, lazily too) by module `name`."""
    path = _module_file(name)
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vicuna_sft")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("vicuna_sft"):
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names if _module_file(f"{mod}.{a.name}")}
    return {m for m in found if _module_file(m)}


def test_trainer_flow_imports_nothing_from_attention():
    seen, todo = set(), ["vicuna_sft.run"]
    while todo:
        mod = todo.pop()
        if mod in seen or mod == "vicuna_sft.model.loading":  # where the variant is applied
            continue
        seen.add(mod)
        todo += sorted(_imports(mod))
    assert "vicuna_sft.training.arguments" in seen and "vicuna_sft.data.collate" in seen  # the walk works
    assert not [m for m in seen if m.startswith("vicuna_sft.attention")], sorted(seen)


def test_run_has_no_branch_on_attention_or_padding():
    tree = ast.parse((PKG / "run.py").read_text())
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert not names & {"AttentionImpl", "Padding", "attention"}
    assert not attrs & {"attention", "padding", "implementation"}


def test_options_enum_modules_one_to_one():
    options = {p.stem for p in (CONF / "attention").glob("*.yaml")}
    members = {m.value for m in AttentionImpl}
    modules = {p.stem for p in (PKG / "attention").glob("*.py") if not p.stem.startswith("_")}
    assert options == members == modules == {"eager", "sdpa", "flash", "xformers"}
    from omegaconf import OmegaConf

    from vicuna_sft import attention

    for impl in AttentionImpl:
        assert OmegaConf.load(CONF / "attention" / f"{impl.value}.yaml").implementation == impl.value
        mod = attention.get(impl)
        assert all(
            callable(getattr(mod, f, None)) for f in ("check", "check_model", "implementation", "prepare")
        )


def _cfg(**over):
    cfg = SimpleNamespace(
        model=SimpleNamespace(
            dtype=Dtype.float32, trust_remote_code=False, name_or_path="/nonexistent/model"
        ),
        data=SimpleNamespace(padding=Padding.longest),
        trainer=SimpleNamespace(precision=Precision.bf16, use_cpu=None),
    )
    for path, value in over.items():
        group, key = path.split("__")
        setattr(getattr(cfg, group), key, value)
    return cfg


def test_flash_and_xformers_need_cuda(monkeypatch):
    import torch

    from vicuna_sft.attention import AttentionUnavailable, flash, xformers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AttentionUnavailable, match="attention=flash needs a CUDA GPU"):
        flash.check(_cfg())
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())  # "xformers installed"
    with pytest.raises(AttentionUnavailable, match="attention=xformers needs a CUDA GPU"):
        xformers.check(_cfg())


def test_flash_refused_when_the_run_computes_on_the_cpu(monkeypatch):
    """Issue 17: the kernels' check asked only whether CUDA is visible; under trainer.use_cpu=true
    the run plan puts the run on the CPU, where flash cannot run."""
    import torch

    from vicuna_sft.attention import AttentionUnavailable, flash

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(flash, "has_flash_attn", lambda: True)
    with pytest.raises(
        AttentionUnavailable, match=r"attention=flash needs a CUDA GPU, but trainer\.use_cpu=true"
    ):
        flash.check(_cfg(trainer__use_cpu=True))


def test_xformers_missing_names_the_extra(monkeypatch):
    import importlib.util

    from vicuna_sft.attention import AttentionUnavailable, xformers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "xformers" else real(n, *a))
    with pytest.raises(AttentionUnavailable, match=r"pip install 'vicuna_sft\[xformers\]'"):
        xformers.check(_cfg())


def test_flash_needs_half_precision_and_packing_kernel(monkeypatch):
    import torch

    from vicuna_sft.attention import AttentionUnavailable, flash

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    flash.check(_cfg())  # bf16 autocast
    flash.check(_cfg(trainer__precision=Precision.fp32, model__dtype=Dtype.bfloat16))
    with pytest.raises(AttentionUnavailable, match=r"fp16/bf16.*trainer\.precision=bf16"):
        flash.check(_cfg(trainer__precision=Precision.fp32))
    monkeypatch.setattr(flash, "has_flash_attn", lambda: False)
    monkeypatch.setattr(flash, "has_torch_varlen", lambda: False)
    flash.check(_cfg())  # padded: SDPA's flash backend is enough
    with pytest.raises(AttentionUnavailable, match=r"packed.*varlen"):
        flash.check(_cfg(data__padding=Padding.packed))


def test_torch_varlen_is_present_in_this_torch():
    from vicuna_sft.attention import flash

    assert flash.has_torch_varlen()


@pytest.mark.parametrize("impl", ["flash", "xformers"])
def test_load_model_fails_before_touching_the_model(impl):
    """The model path does not exist: a variant check that ran later would say so instead."""
    from vicuna_sft.attention import AttentionUnavailable
    from vicuna_sft.config import (
        AttentionConfig,
        Config,
        DataConfig,
        FsdpConfig,
        ModelConfig,
        OptimizerConfig,
    )
    from vicuna_sft.model.loading import load_model

    cfg = Config(
        model=ModelConfig(name_or_path="/nonexistent/model"),
        data=DataConfig(path="x.json"),
        attention=AttentionConfig(implementation=AttentionImpl(impl)),
        fsdp=FsdpConfig(),
        optimizer=OptimizerConfig(),
    )
    with pytest.raises(AttentionUnavailable):
        load_model(cfg)
