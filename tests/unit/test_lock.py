"""The locks say what is installed, and agree with pyproject's ranges (issue 16).

requirements/cpu.lock (the newest releases, `make install`) and requirements/oldest.lock (the oldest
supported pins, CI's second job) are written by `make lock`; a lock that drifts from pyproject, or
an environment that drifts from its lock, fails here."""

from __future__ import annotations

import importlib.metadata as md
import pathlib
import re
import sys

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = pathlib.Path(__file__).resolve().parents[2]
LOCKS = ["cpu.lock", "oldest.lock"]


def pins(lock: str) -> dict[str, Version]:
    text = (ROOT / "requirements" / lock).read_text()
    found = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", text, flags=re.M)
    return {canonicalize_name(n): Version(v) for n, v in found}


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["dev"], *extras["qlora"]]]


def makefile(var: str) -> str:
    return re.search(rf"^{var} \?= (\S+)$", (ROOT / "Makefile").read_text(), flags=re.M)[1]


@pytest.mark.parametrize("lock", LOCKS)
def test_every_requirement_is_locked_inside_its_range(lock):
    locked = pins(lock)
    assert "torch" not in locked  # the bootstrap's CPU wheel, never the lock's
    for req in requirements():
        name = canonicalize_name(req.name)
        if name == "torch":
            assert Version(makefile("TORCH_VERSION")) in req.specifier, req
            continue
        assert name in locked, f"{req} is not in requirements/{lock}: run `make lock`"
        assert locked[name] in req.specifier, (
            f"requirements/{lock} has {name}=={locked[name]}, pyproject wants {req}"
        )
    # every lock entry hashed (pip --require-hashes refuses the install otherwise)
    text = (ROOT / "requirements" / lock).read_text()
    hashed = re.findall(r"^\S+==\S+ \\\n\s+--hash=sha256:", text, re.M)
    assert len(hashed) == len(locked)


def test_the_oldest_lock_holds_the_oldest_pins():
    oldest, newest = pins("oldest.lock"), pins("cpu.lock")
    stated = [
        Requirement(line)
        for line in (ROOT / "requirements" / "oldest.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {canonicalize_name(r.name) for r in stated} >= {"transformers", "accelerate"}
    for req in stated:
        name = canonicalize_name(req.name)
        assert oldest[name] in req.specifier, (name, oldest[name])
        assert oldest[name] <= newest[name]
        floor = next(r for r in requirements() if canonicalize_name(r.name) == name)
        assert oldest[name] in floor.specifier  # the oldest pin is inside pyproject's range


def test_this_environment_is_exactly_its_lock():
    """`make install` records which lock it installed (the stamp file): the environment running
    the tests holds exactly that closure, plus torch (the bootstrap's), pip and vicuna_sft."""
    stamp = pathlib.Path(sys.prefix) / ".vicuna_sft-installed"
    if not stamp.is_file():
        pytest.skip(f"{sys.prefix} was not created by `make install`")
    lock = pathlib.Path(stamp.read_text().strip()).name
    installed = {canonicalize_name(d.metadata["Name"]): Version(d.version) for d in md.distributions()}
    assert installed.pop("vicuna-sft") and installed.pop("torch").base_version == makefile("TORCH_VERSION")
    assert installed.pop("pip") == Version(makefile("PIP_VERSION"))
    expected = pins(lock)
    extra = sorted(set(installed) - set(expected))
    missing = sorted(set(expected) - set(installed))
    differ = sorted(n for n in set(installed) & set(expected) if installed[n] != expected[n])
    assert not (extra or missing or differ), {
        "not in the lock": extra,
        "missing": missing,
        "other version": differ,
    }
