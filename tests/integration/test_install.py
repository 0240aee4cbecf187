"""vicuna_sft installed as users install it: a wheel, non-editable, in a fresh virtualenv, run from
outside the checkout. `conf/` must come from the installed package (issue 7)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import sysconfig

import pytest

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("install")
    dist = tmp / "dist"
    # offline: the build backend already installed here, no dependency resolution
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, ROOT],
        check=True,
        cwd=tmp,
    )
    (wheel,) = dist.glob("vicuna_sft-*.whl")
    env_dir = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # reuse the installed dependencies: this environment's site-packages as a plain path entry
    # (a path entry, not a site dir: its .pth files, e.g. the editable vicuna_sft, stay inactive)
    deps = sysconfig.get_paths()["purelib"]
    pathlib.Path(purelib, "deps.pth").write_text(deps + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", purelib, wheel],
        check=True,
    )
    return env_dir


def run(
    venv: pathlib.Path, *args: str, cwd: pathlib.Path, env: dict | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [venv / "bin" / "python", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**clean, **(env or {})},
        timeout=600,
    )


def test_installed_package_is_the_wheel_not_the_checkout(venv, tmp_path):
    r = run(
        venv,
        "-c",
        "import vicuna_sft, vicuna_sft.conf; print(vicuna_sft.__file__); print(vicuna_sft.conf.__file__)",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    pkg, conf = r.stdout.split()
    assert pkg.startswith(str(venv)) and conf.startswith(str(venv)), r.stdout
    assert pathlib.Path(conf).with_name("config.yaml").is_file()


def test_cfg_job_from_outside_the_checkout(venv, tmp_path):
    r = run(venv, "-m", "vicuna_sft", "--cfg", "job", "attention=eager", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "  implementation: eager" in r.stdout and "name_or_path: ${vicuna_sft_builtin:tiny}" in r.stdout


def test_tiny_training_run_from_outside_the_checkout(venv, tmp_path, cache_dir):
    out = tmp_path / "run"
    r = run(
        venv,
        "-m",
        "vicuna_sft",
        "trainer.max_steps=2",
        "trainer.logging_steps=1",
        "data.eval_fraction=0",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
        env={"VICUNA_SFT_CACHE": cache_dir},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["global_step"] == 2 and (out / "final" / "model.safetensors").is_file()


def test_installed_optuna_sweeper_is_discovered_from_outside_the_checkout(venv, tmp_path):
    """`hydra/sweeper=optuna` instantiates hydra_plugins.vicuna_sft_sweeper.OptunaSearch: Hydra
    only accepts plugin classes it discovered under `hydra_plugins`, here from the wheel."""
    code = (
        "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
        "print(' '.join(f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Sweeper)))"
    )
    r = run(venv, "-c", code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "hydra_plugins.vicuna_sft_sweeper.OptunaSearch" in r.stdout.split(), r.stdout
