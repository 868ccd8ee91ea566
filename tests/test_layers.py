"""The package's layers, read from the source: lower layers never import higher ones, and no import cycle exists.

Every ``import`` statement counts, the ones inside functions too (they are how cycles used to hide). The layers,
bottom first, are the ones ``docs/CONTRIBUTING.md`` draws.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import patseg

ROOT = Path(patseg.__file__).parent

# Bottom first. A module may import its own layer and the layers below; within a layer, the pairs in SAME_LAYER_ORDER
# may only point one way.
LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "patseg.errors",
        "patseg.allocator",
        "patseg.config",
        "patseg.atomic",
        "patseg.paths",
        "patseg.images",
        "patseg.resources",
        "patseg.resize",
        "patseg.distributed",
    ),
    ("patseg.models", "patseg.losses"),
    ("patseg.weights",),
    ("patseg.build", "patseg.convert"),
    ("patseg.precision", "patseg.predictor"),
    ("patseg.data", "patseg.evaluation"),
    ("patseg.engine", "patseg.mini"),
    ("patseg.tokenizer", "patseg.visualize", "patseg.bench", "patseg.folder"),
    ("patseg.reproduce", "patseg.demo"),
    ("patseg.cli", "patseg.__main__"),
)
SAME_LAYER_ORDER = (  # (lower, higher): the lower one never imports the higher one
    ("patseg.errors", "patseg.config"),
    ("patseg.losses", "patseg.models"),
    ("patseg.build", "patseg.convert"),
    ("patseg.precision", "patseg.predictor"),
    ("patseg.data", "patseg.evaluation"),
    ("patseg.engine", "patseg.mini"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    return imports_in(path.read_text(encoding="utf-8"), package, modules)


def imports_in(source: str, package: str, modules: dict[str, Path]) -> set[str]:
    """patseg modules imported anywhere in ``source`` (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules)
    return {m for m in found if m == "patseg" or m.startswith("patseg.")}


def layer_of(module: str) -> tuple[int, str]:
    for rank, layer in enumerate(LAYERS):
        for top in layer:
            if module == top or module.startswith(top + "."):
                return rank, top
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/CONTRIBUTING.md)")


MODULES = all_modules()
GRAPH = {name: imports_of(path, MODULES) - {"patseg", name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n != "patseg"))
def test_module_imports_only_its_layer_and_below(name: str) -> None:
    rank, top = layer_of(name)
    for imported in sorted(GRAPH[name]):
        other_rank, other_top = layer_of(imported)
        assert other_rank <= rank, f"{name} (layer {top}) imports the higher layer {imported}"
        assert (top, other_top) not in SAME_LAYER_ORDER, f"{name} imports {imported}, which sits above it"


def test_no_import_cycles() -> None:
    seen: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if seen.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for start in sorted(GRAPH):
        if start not in seen:
            visit(start, [start])


def test_the_scanner_sees_imports_inside_functions_and_relative_imports() -> None:
    source = "import os\n\ndef f():\n    from patseg.cli import main\n    from ..build import build_model\n"
    found = imports_in(source, "patseg.models.pat", MODULES)
    assert found == {"patseg.cli", "patseg.models.build"}  # level 2 from patseg.models.pat is patseg.models
    assert layer_of("patseg.cli")[0] > layer_of("patseg.models.pat.model")[0]
