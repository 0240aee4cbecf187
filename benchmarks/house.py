"""The house, measured before and after a change in one run (issue 17): startup and size.

- `--help` wall time of `python -m vicuna_sft` against a bare `python -c "import torch"` (median of
  --repeat runs; the help needs no torch, so it should cost a fraction of the import);
- lines per module and per function (def to end, methods included): count, median, largest five;
- with --test-fast, the wall time of `make test-fast`, run once, for the working tree only, and only
  while the machine's 1-minute load is below --max-load (2 cores shared: a busy machine's number
  means nothing).

"before" is a git ref (default: the merge base of main and HEAD), exported with `git archive` into a temp dir and imported from
there through PYTHONPATH (its conf/ linked in as vicuna_sft/conf, as the editable install maps it);
"after" is the working tree as installed. Usage:

    python benchmarks/house.py [--before REF] [--repeat 5] [--test-fast] [--json out.json]
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def export(ref: str, into: pathlib.Path) -> pathlib.Path:
    """`ref`'s tree under `into`, importable with PYTHONPATH=into (vicuna_sft/conf -> conf)."""
    data = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    (into / "vicuna_sft" / "conf").symlink_to(into / "conf", target_is_directory=True)
    return into


def env_for(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def run_once(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    # from a neutral directory: `python -c` puts the working directory first on sys.path
    subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), capture_output=True, check=True)
    return time.perf_counter() - start


def imported_from(env: dict[str, str]) -> str:
    code = "import vicuna_sft, os; print(os.path.dirname(vicuna_sft.__file__))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def sizes(package: pathlib.Path) -> dict:
    modules, functions = {}, {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent)
        if rel.parts[1:2] == ("conf",):
            continue
        text = path.read_text()
        modules[str(rel)] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions[f"{rel}:{node.lineno} {node.name}"] = node.end_lineno - node.lineno + 1

    def summary(d: dict[str, int]) -> dict:
        top = sorted(d.items(), key=lambda kv: -kv[1])[:5]
        return {
            "count": len(d),
            "total": sum(d.values()),
            "median": statistics.median(d.values()),
            "largest": top,
        }

    return {"modules": summary(modules), "functions": summary(functions)}


COMMANDS = {"help_s": ["-m", "vicuna_sft", "--help"], "import_torch_s": ["-c", "import torch"]}


def startup(trees: dict[str, str | None], repeat: int) -> dict[str, dict]:
    """Median wall times per tree; one warm-up run each (byte-compiling an exported tree), then the
    trees' runs interleaved, so that a change in the machine's load falls on both alike."""
    envs = {name: env_for(path) for name, path in trees.items()}
    times: dict[str, dict[str, list[float]]] = {name: {k: [] for k in COMMANDS} for name in trees}
    for env in envs.values():
        for args in COMMANDS.values():
            run_once([sys.executable, *args], env)
    for _ in range(repeat):
        for key, args in COMMANDS.items():
            for name, env in envs.items():
                times[name][key].append(run_once([sys.executable, *args], env))
    return {
        name: {"imported_from": imported_from(envs[name]), **{k: statistics.median(v) for k, v in t.items()}}
        for name, t in times.items()
    }


def test_fast(max_load: float) -> dict:
    load = os.getloadavg()[0]
    if load >= max_load:
        return {"skipped": f"1-minute load {load:.1f} >= {max_load}: not measured"}
    start = time.perf_counter()
    r = subprocess.run(["make", "test-fast"], cwd=ROOT, capture_output=True, text=True)
    return {
        "wall_s": time.perf_counter() - start,
        "returncode": r.returncode,
        "load_at_start": load,
        "tail": r.stdout.strip().splitlines()[-1:],
    }


def report(results: dict) -> str:
    lines = ["| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]

    def row(name: str, fn) -> None:
        lines.append(f"| {name} | " + " | ".join(fn(r) for r in results.values()) + " |")

    row("`--help` (s)", lambda r: f"{r['startup']['help_s']:.2f}")
    row("`import torch` (s)", lambda r: f"{r['startup']['import_torch_s']:.2f}")
    row("modules / lines", lambda r: f"{r['sizes']['modules']['count']} / {r['sizes']['modules']['total']}")
    row(
        "functions / median lines",
        lambda r: f"{r['sizes']['functions']['count']} / {r['sizes']['functions']['median']:g}",
    )
    for kind in ("modules", "functions"):
        row(
            f"largest {kind}",
            lambda r, k=kind: "<br>".join(f"{n} ({c})" for n, c in r["sizes"][k]["largest"]),
        )
    if any("test_fast" in r for r in results.values()):
        row(
            "`make test-fast` (s)",
            lambda r: str(r.get("test_fast", {}).get("wall_s", r.get("test_fast", {}).get("skipped", "-"))),
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--before", default=None, help="git ref measured as 'before' (default: where this branch left main)"
    )
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--test-fast", action="store_true", help="also time `make test-fast` (working tree, once)")
    p.add_argument("--max-load", type=float, default=2.0)
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()

    if args.before is None:  # main moves on while a branch is worked on: compare with its start
        base = subprocess.run(["git", "merge-base", "main", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        # a clone without main (CI): the committed tree stands in for it
        args.before = base.stdout.strip()[:10] if base.returncode == 0 else "HEAD"
    before_name, after_name = f"before ({args.before})", "after (working tree)"
    with tempfile.TemporaryDirectory() as tmp:
        before = export(args.before, pathlib.Path(tmp))
        timed = startup({before_name: str(before), after_name: None}, args.repeat)
        results = {
            before_name: {"startup": timed[before_name], "sizes": sizes(before / "vicuna_sft")},
            after_name: {"startup": timed[after_name], "sizes": sizes(ROOT / "vicuna_sft")},
        }
    if args.test_fast:
        results[after_name]["test_fast"] = test_fast(args.max_load)
    print(report(results))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
