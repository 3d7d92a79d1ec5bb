"""The package's shape, as docs/ARCHITECTURE.md draws it: commands at the top, the library in
subpackages, no import circle between modules or between subpackages, no library module that
imports a command, and the public API of ``import edsr_jax``.

Imports are read from the source (``ast``), both top-level and inside functions: a lazy import
is still a dependency, and a circle through one is still a circle."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGE = ROOT / "edsr_jax"
# The subpackages and the ones each may import (besides the package root's constants). A new
# dependency between wings is a design decision: add it here and in docs/ARCHITECTURE.md.
WINGS = {
    "io": set(),
    "nets": set(),
    "degradation": {"io"},
    "evaluation": {"io", "degradation"},
    "data": {"io", "degradation"},
    "inference": {"io", "nets", "training", "evaluation", "degradation"},
    "training": {"io", "nets", "data", "degradation", "evaluation"},
}


def module_name(path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, object]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path, known: set[str]) -> set[str]:
    """The edsr_jax modules ``path`` imports (a ``from pkg import name`` counts as ``pkg.name``
    when that is a module, else as ``pkg``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("edsr_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edsr_jax"):
            assert node.level == 0, f"{path}: relative import"
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
    return found & known


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def wing(module: str) -> str | None:
    """The subpackage of a library module, None for the root and the commands."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in WINGS) else None


def commands() -> set[str]:
    return {m for m in modules() if m.count(".") == 1 and m.split(".")[1] not in WINGS}


def test_find_cycle_finds_a_cycle_and_none_in_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_graph_reads_lazy_imports():
    g = graph()
    # edsr_jax/training/config.py imports the model's presets; the reader must see such edges.
    assert any(dep.startswith("edsr_jax.nets") for dep in g["edsr_jax.training.config"])


def test_no_import_circle_between_modules():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_subpackages_import_only_the_wings_they_may():
    g = graph()
    wrong = []
    for m, deps in g.items():
        w = wing(m)
        if w is None:
            continue
        for d in deps:
            dw = wing(d)
            if d in commands():
                wrong.append(f"{m} imports the command {d}")
            elif dw is not None and dw != w and dw not in WINGS[w]:
                wrong.append(f"{m} imports {d} ({w} -> {dw} is not in WINGS)")
    assert not wrong, "\n".join(wrong)
    assert find_cycle({w: set(v) for w, v in WINGS.items()}) is None


def test_every_subpackage_is_a_wing_and_the_top_holds_commands_only():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert subpackages == set(WINGS), subpackages ^ set(WINGS)
    for command in commands():
        source = (PACKAGE / f"{command.split('.')[1]}.py").read_text()
        assert "def main(" in source, f"{command}: a top-level module is a command with main()"


def test_library_modules_stay_small():
    # docs/ARCHITECTURE.md names any module allowed past ~500 lines and why.
    allowed: set[str] = set()  # none today
    long = {m: n for m, p in modules().items()
            if (n := len(p.read_text().splitlines())) > 520 and m not in allowed}
    assert not long, long


PUBLIC = ("EDSR", "MDSR", "ModelConfig", "MDSRConfig", "preset", "apply", "Upscaler", "AutoUpscaler",
          "choose_model", "restore_for_inference", "base_config", "make_optimizer", "create_train_state",
          "compile_train_step", "degrade_batch", "SCALES")


def test_public_api_at_the_top():
    import edsr_jax

    assert set(PUBLIC) <= set(edsr_jax.__all__)
    for name in edsr_jax.__all__:
        obj = getattr(edsr_jax, name)
        assert obj is not None, name
        assert name in dir(edsr_jax)
    with pytest.raises(AttributeError, match="no_such_name"):
        edsr_jax.no_such_name  # noqa: B018


def test_importing_the_package_is_light():
    # The commands start by importing edsr_jax; the public API is resolved lazily, so that
    # e.g. `python -m edsr_jax.diagnose --help` does not pay for jax and flax.
    code = "import sys, edsr_jax; print(sorted(m for m in ('jax', 'flax', 'optax') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", sorted(modules()))
def test_every_module_imports_on_its_own(module):
    importlib.import_module(module)


def test_no_merge_conflict_markers_left_in_the_project_text():
    """A merge's conflict markers (a line starting with seven '<', '=' then '>') committed by
    mistake: none in the package, tests, experiments, benchmarks, docs or the top-level text."""
    paths = [p for d in ("edsr_jax", "tests", "experiments", "benchmarks", "docs")
             for p in (ROOT / d).rglob("*") if p.suffix in (".py", ".md", ".toml", ".txt", ".json")]
    paths += [p for p in ROOT.glob("*") if p.suffix in (".md", ".toml")] + [ROOT / ".ci" / "run"]
    marked = [f"{p.relative_to(ROOT)}:{i}" for p in paths if p.is_file()
              for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
              if line.startswith(("<" * 7 + " ", ">" * 7 + " ")) or line == "=" * 7]
    assert not marked, marked
