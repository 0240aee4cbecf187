"""The package's architecture, checked: imports run one way and nothing cycles (issue 7).

Every `import` and `from ... import` of a vicuna_sft module counts, at module level or inside a
function: a lazy import still ties two modules together."""

from __future__ import annotations

import ast
import pathlib
import subprocess

import vicuna_sft

PKG = pathlib.Path(vicuna_sft.__file__).parent

# layers, lowest first: a module may import its own layer's modules and lower layers only
LAYERS = [
    {"errors", "process", "compat", "files"},
    {"config"},
    {"validation"},
    {"plan"},  # the run plan: device, layout, dtypes (after validation, before anything builds)
    {"attention", "data"},
    {"model"},
    {"training"},
    {"run"},
    {"launch"},
    {"__main__", "preprocess", "chat", "check", "commands"},  # the commands
]


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in PKG.rglob("*.py") if "conf" not in p.relative_to(PKG).parts[:1]}


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    # `from . import x` names a module; `from .x import f` names x; a package import means its __init__
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(g):
        if n not in state and (c := visit(n)):
            return c
    return None


def layer(module: str) -> int:
    parts = module.split(".")
    part = parts[1] if len(parts) > 1 else "__init__"
    if parts[-1] == "__main__":  # `python -m vicuna_sft.<pkg>`: a command, whatever package holds it
        part = "__main__"
    for i, names in enumerate(LAYERS):
        if part in names:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/unit/test_layout.py; place it there")


def test_the_walk_sees_the_package():
    g = graph()
    assert "vicuna_sft.training.arguments" in g["vicuna_sft.run"]
    assert "vicuna_sft.launch.entry" in g["vicuna_sft.__main__"]  # a function-level import counts
    assert len(g) > 30


def test_no_import_cycle():
    assert find_cycle(graph()) is None, f"import cycle: {' -> '.join(find_cycle(graph()) or [])}"


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_run_one_way():
    wrong = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph().items()
        for b in targets
        if a != "vicuna_sft" and b != "vicuna_sft" and layer(b) > layer(a)
    ]
    assert not wrong, "\n".join(wrong)


def test_no_test_switch_in_the_package():
    r = subprocess.run(
        ["git", "grep", "-n", "VICUNA_SFT_TEST", "--", "vicuna_sft"],
        cwd=PKG.parent,
        capture_output=True,
        text=True,
    )
    assert r.stdout == "", r.stdout


# `x._name` outside vicuna_sft/compat/: only the package's own private names (issue 16: every use of a
# library's private attribute sits in compat/, one module per library, with its tested range)
OWN_PRIVATE = {"_exit", "_encode_untruncated", "_store", "_vicuna_sft_loss", "_vicuna_sft_packed_guard"}


def test_library_internals_are_reached_only_from_compat():
    found = []
    for name, path in modules().items():
        if name.startswith("vicuna_sft.compat"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr not in OWN_PRIVATE
            ):
                found.append(f"{name}:{node.lineno} .{node.attr}")
    assert not found, found


def calls(path: pathlib.Path, name: str) -> list[int]:
    """Lines where `name(...)` or `x.name(...)` is called."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            called = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if called == name:
                found.append(node.lineno)
    return found


def test_configured_data_is_read_in_one_place():
    """Issue 17: every command reads `data.*` through `data.dataset.read_splits` (the check once read
    files on its own path and broke on a list of sources)."""
    readers = {
        name: lines
        for name, path in modules().items()
        if (lines := calls(path, "load_conversations")) and name != "vicuna_sft.data.dataset"
    }
    assert not readers, readers


def attribute_uses(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every `a.b.c` attribute chain in the module."""

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Attribute) and (base := dotted(node.value)):
            return f"{base}.{node.attr}"
        return None

    return [
        (node.lineno, name)
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and (name := dotted(node))
    ]


PLAN = "vicuna_sft.plan"
# the checkpoint manifest's safe unpickler resolves the torch dtypes a pickle names, by name
TORCH_BY_NAME = {"vicuna_sft.training.manifest"}


def test_only_the_run_plan_decides_device_and_dtypes():
    """Issue 17: the device was decided three times (one copy disagreed with training) and a
    precision mapped to a dtype three times. Only vicuna_sft/plan.py asks whether CUDA is visible,
    maps a precision (bf16/fp16) to a dtype, or turns a dtype name into a torch dtype."""
    found = []
    for name, path in modules().items():
        if name == PLAN:
            continue
        for line, attr in attribute_uses(path):
            if attr.endswith("cuda.is_available") or attr in ("Precision.bf16", "Precision.fp16"):
                found.append(f"{name}:{line} {attr}")
        if name in TORCH_BY_NAME:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "getattr"
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id == "torch"
            ):
                found.append(f"{name}:{node.lineno} getattr(torch, ...)")
    assert not found, found


def test_renames_and_hashes_live_in_files():
    """Issue 17: "write aside, then rename" was written by hand about eight times, and a file hash
    twice with different return types. Renames go through files.replacing / files.move, and
    xxhash is used by files.hash_file alone."""
    found = []
    for name, path in modules().items():
        if name == "vicuna_sft.files":
            continue
        found += [
            f"{name}:{line} {a}" for line, a in attribute_uses(path) if a in ("os.replace", "os.rename")
        ]
        found += [f"{name}: imports {m}" for m in imports_of(path) if m.split(".")[0] == "xxhash"]
    assert not found, found


def imports_of(path: pathlib.Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module)
    return out
