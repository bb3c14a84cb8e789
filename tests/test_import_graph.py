"""The import graph of sam2/, components/ and pipelines/ has no cycles and keeps its layers.

Every ``import`` and ``from ... import`` counts, at the top of a module or deferred inside a function: a
deferred import only hides a cycle (the two modules still need each other), it does not remove one. Imports
under ``if TYPE_CHECKING:`` do not run and do not count. Importing ``a.b.c`` also runs ``a/__init__.py``
and ``a/b/__init__.py``; those implicit parent-package imports are left out (an edge goes to the module
named, ``a.b.c``, or for ``from a.b import c`` to ``a.b.c`` when that is a module and to ``a.b`` when ``c``
is a name defined there), so a package's ``__init__`` may import its own submodules.

Layers: the library (sam2/) never imports the pipeline steps (components/) or the pipeline (pipelines/),
and the training stack (sam2.training) does not reach up into the job launchers (sam2.launch), which
start it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("sam2", "components", "pipelines")
# (importer prefix, imported prefix, why the importer must not depend on it)
FORBIDDEN = [
    ("sam2", "components", "the library must not depend on the pipeline steps that call it"),
    ("sam2", "pipelines", "the library must not depend on the pipeline that calls it"),
    ("sam2.training", "sam2.launch", "the training stack must not depend on the launchers that start it"),
]


def module_files(root: Path, packages: tuple[str, ...] = TOP_PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under ``root/<package>`` (packages as their name)."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")


def _imported_names(module: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Each module name an import statement of the module reaches for: ``a.b`` for ``from a import b``
    when ``a.b`` is a module, else ``a``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    pending: list[ast.AST] = [ast.parse(path.read_text(), filename=str(path))]
    while pending:
        node = pending.pop()
        for child in ast.iter_child_nodes(node):
            if _is_type_checking_block(child):
                continue
            if isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([child.module] if child.module else []))
                for alias in child.names:
                    yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
            pending.append(child)


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (names resolved to the deepest module that exists)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {resolve(name) for name in _imported_names(module, path, modules)}
        graph[module] = {target for target in targets if target and target != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    def within(module: str, prefix: str) -> bool:
        return module == prefix or module.startswith(prefix + ".")

    return [
        f"{src} imports {dst}: {why}"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        for low_layer, high_layer, why in FORBIDDEN
        if within(src, low_layer) and within(dst, high_layer)
    ]


def test_project_has_no_import_cycles():
    graph = import_graph(module_files(ROOT))
    assert len(graph) > 100, "the walk found too few modules: is ROOT right?"
    assert import_cycles(graph) == []


def test_library_layers_are_kept():
    assert layer_violations(import_graph(module_files(ROOT))) == []


def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return module_files(root, ("pkg",))


@pytest.mark.parametrize(
    "files, cycle",
    [
        (  # build_sam <-> sam2_video_predictor: both imports deferred inside functions
            {
                "pkg/__init__.py": "",
                "pkg/build.py": "def build():\n    from pkg import predictor\n    return predictor\n",
                "pkg/predictor.py": "def load():\n    from pkg.build import build\n    return build()\n",
            },
            ["pkg.build", "pkg.predictor"],
        ),
        (  # data/coco <-> data/validation: one at the top, one deferred, relative import
            {
                "pkg/__init__.py": "",
                "pkg/data/__init__.py": "",
                "pkg/data/coco.py": "def check():\n    from .validation import Report\n    return Report\n",
                "pkg/data/validation.py": "from pkg.data.coco import check\nclass Report: ...\n",
            },
            ["pkg.data.coco", "pkg.data.validation"],
        ),
    ],
)
def test_a_cycle_is_found_at_the_top_or_deferred(tmp_path, files, cycle):
    assert import_cycles(import_graph(_write(tmp_path, files))) == [cycle]


def test_type_checking_imports_and_parent_packages_make_no_cycle(tmp_path):
    files = {
        "pkg/__init__.py": "from pkg.a import A\n",  # a package exporting its submodule's name
        "pkg/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\nclass A: ...\n",
        "pkg/b.py": "from pkg.a import A\nclass B(A): ...\n",
    }
    assert import_cycles(import_graph(_write(tmp_path, files))) == []


def test_training_importing_a_launcher_is_a_layer_violation(tmp_path):
    graph = {
        "sam2.training.train": {"sam2.launch.launcher", "sam2.utils.network"},
        "sam2.utils.network": set(),
    }
    assert layer_violations(graph) == [
        "sam2.training.train imports sam2.launch.launcher: "
        "the training stack must not depend on the launchers that start it"
    ]
