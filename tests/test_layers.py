"""The layers of src/t2i (DESIGN.md, "Dependencies point one way"): no import cycle between its
packages and none of the forbidden imports, counting every import at any depth — a function-level
import that hides a cycle is still one. The graph is read from the source (ast), so nothing is
imported and the test needs no torch.

A package is a first-level subpackage or module of t2i (`t2i.models`, `t2i.prompts`, ...);
`t2i/__init__.py`, the public facade, is the package "t2i".
"""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "t2i"

# Architecture parts -> their package (the "parts" of ../shared/architecture.json).
PARTS = {"Interfaces": "interfaces", "Pipelines": "pipelines", "Training": "training",
         "ExtraNetworks": "extra_networks", "Evaluate": "evaluate", "Checkpoints": "checkpoints",
         "Models": "models", "Diffusion": "diffusion", "Prompts": "prompts", "Data": "data"}

# Imports that must never exist, at any depth, with the reason (the "never" list of
# ../shared/architecture.json, copied: CI may not have that folder).
NEVER = [
    ("Models", "Checkpoints", "models do no I/O"),
    ("Models", "Pipelines", "one-way: pipelines use models"),
    ("Models", "Training", "models know no training"),
    ("Diffusion", "ExtraNetworks", "sampling knows no LoRA files"),
    ("Diffusion", "Models", "the loop takes a denoiser, not a model family"),
    ("Training", "Pipelines", "trainers sample through a Session handed in"),
    ("ExtraNetworks", "Pipelines", "extra networks know no pipeline"),
    ("Checkpoints", "Pipelines", "formats know no pipeline"),
    ("Pipelines", "Interfaces", "pipelines know no front end"),
    ("Data", "Models", "data knows no model"),
]


@dataclass(frozen=True)
class Import:
    file: Path  # relative to the source root's parent, e.g. t2i/models/ar.py
    line: int
    target: str  # the module imported, e.g. t2i.checkpoints.family_file

    def __str__(self) -> str:
        return f"{self.file}:{self.line} -> {self.target}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path, modules: set[str]) -> list[Import]:
    """Every t2i import in one file, at any depth (functions, classes, TYPE_CHECKING blocks);
    relative imports resolved; `from pkg import name` means the submodule pkg.name if there is one."""
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    rel = path.relative_to(root.parent)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        else:
            continue
        found += [Import(rel, node.lineno, t) for t in dict.fromkeys(targets)  # one per module per statement
                  if t == root.name or t.startswith(root.name + ".")]
    return found


def package_of(module: str) -> str:
    """t2i.models.ar -> "models"; t2i (the facade) -> "t2i"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(root: Path) -> dict[tuple[str, str], list[Import]]:
    """(importing package, imported package) -> the imports that make that edge."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    edges: dict[tuple[str, str], list[Import]] = {}
    for path in files:
        source = package_of(module_name(path, root))
        for imp in imports_of(path, root, modules):
            target = package_of(imp.target)
            if target != source:
                edges.setdefault((source, target), []).append(imp)
    return edges


def package_cycles(edges: dict[tuple[str, str], list[Import]]) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan), each sorted."""
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
        succ.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(succ):
        if v not in index:
            visit(v)
    return found


def cycle_report(edges: dict[tuple[str, str], list[Import]], cycle: list[str], shown: int = 6) -> str:
    """The cycle and, per package edge inside it, the file -> module imports that make it."""
    members = set(cycle)
    lines = [f"package cycle: {' <-> '.join(cycle)}; the imports that make it:"]
    for (a, b), imps in sorted(edges.items()):
        if a in members and b in members:
            lines += [f"  {a} -> {b}: {imp}" for imp in imps[:shown]]
            if len(imps) > shown:
                lines.append(f"  {a} -> {b}: ... and {len(imps) - shown} more")
    return "\n".join(lines)


def forbidden_report(edges: dict[tuple[str, str], list[Import]]) -> list[str]:
    problems = []
    for source, target, reason in NEVER:
        for imp in edges.get((PARTS[source], PARTS[target]), []):
            problems.append(f"{source} must not import {target} ({reason}): {imp}")
    return problems


# --------------------------------------------------------------------------- the real tree


@pytest.fixture(scope="module")
def edges():
    return package_graph(SRC)


def test_graph_sees_the_packages(edges):
    # a sanity floor: a parser that found nothing would pass everything below
    packages = {p for edge in edges for p in edge}
    assert set(PARTS.values()) <= packages | {"prompts"}
    assert ("pipelines", "diffusion") in edges and ("checkpoints", "models") in edges


def test_no_package_cycle(edges):
    cycles = package_cycles(edges)
    assert not cycles, "\n\n".join(cycle_report(edges, c) for c in cycles)


def test_no_forbidden_import(edges):
    problems = forbidden_report(edges)
    assert not problems, "\n".join(problems)


def test_import_t2i_and_errors_need_no_torch():
    # the facade and the error types sit at the bottom: the CLI's argument errors and `t2i --help`
    # must not pay for torch
    code = "import sys, t2i, t2i.errors; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "t2i"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_hidden_in_a_function(tmp_path):
    root = _tree(tmp_path, {
        "models/__init__.py": "",
        "models/ldm.py": "def save():\n    from t2i.checkpoints.folder import write\n",
        "checkpoints/__init__.py": "",
        "checkpoints/folder.py": "from ..models import ldm\n",  # relative, resolved to t2i.models.ldm
    })
    edges = package_graph(root)
    assert package_cycles(edges) == [["checkpoints", "models"]]
    report = cycle_report(edges, ["checkpoints", "models"])
    assert "t2i/models/ldm.py:2 -> t2i.checkpoints.folder" in report
    assert "t2i/checkpoints/folder.py:1 -> t2i.models.ldm" in report
    assert forbidden_report(edges) == [
        "Models must not import Checkpoints (models do no I/O): t2i/models/ldm.py:2 -> t2i.checkpoints.folder"]


def test_checker_passes_a_layered_tree(tmp_path):
    root = _tree(tmp_path, {
        "errors.py": "",
        "pipelines/__init__.py": "",
        "pipelines/run.py": "from t2i.models import ldm\nfrom t2i import errors\n",
        "models/__init__.py": "",
        "models/ldm.py": "from t2i.errors import T2IError\nfrom . import text\n",
        "models/text.py": "",
    })
    edges = package_graph(root)
    assert set(edges) == {("pipelines", "models"), ("pipelines", "errors"), ("models", "errors")}
    assert package_cycles(edges) == [] and forbidden_report(edges) == []
