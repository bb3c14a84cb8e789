"""README.md and docs/ stay true: the first screen holds the two start commands, every pipeline step the
Kubeflow UI shows is in the steps table with its component file and library modules, every docs/ page is
linked, every link resolves, and every `make` target, `python -m` module and tool flag they name exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FIRST_SCREEN_LINES = 50
START_COMMANDS = ("make setup && make test", "make pipeline-run DATASET=demo")


def _readme() -> str:
    return README.read_text()


def _pages() -> list[Path]:
    return [README, *DOCS]


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_first_screen_holds_the_two_start_commands():
    first_screen = "\n".join(_readme().splitlines()[:FIRST_SCREEN_LINES])
    block = re.search(r"```bash\n(.*?)```", first_screen, flags=re.S)
    assert block, f"no bash block in the first {FIRST_SCREEN_LINES} lines"
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == list(START_COMMANDS)


def _ui_steps() -> dict[str, str]:
    """UI name -> component function name, for every task of the compiled pipeline (loop bodies too)."""
    spec = next(yaml.safe_load_all((ROOT / "pipelines" / "sam2_finetune.yaml").read_text()))
    executors = {name: comp.get("executorLabel") for name, comp in spec["components"].items()}
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    steps = {}
    for dag in dags:
        for task in dag["tasks"].values():
            label = executors.get(task["componentRef"]["name"])
            if label:  # a loop's task is a sub-DAG, not a step
                steps[task["taskInfo"]["name"]] = label.removeprefix("exec-").replace("-", "_")
    return steps


def _steps_table() -> dict[str, tuple[str, list[str]]]:
    rows = {}
    for line in _readme().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[1].startswith("`components/"):
            rows[cells[0]] = (cells[1].strip("`"), re.findall(r"`(sam2(?:\.\w+)+)`", cells[2]))
    return rows


def _referenced_modules(path: Path) -> set[str]:
    """Dotted names a component imports (``from a import b`` gives ``a.b``) or runs (``"sam2.x.y"``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("sam2.")
        ):
            names.add(node.value)
    return names


def test_every_ui_step_is_in_the_table_with_its_component_and_library():
    steps, table = _ui_steps(), _steps_table()
    assert len(steps) >= 9, steps
    assert set(table) == set(steps), f"README table {sorted(table)} vs the pipeline's steps {sorted(steps)}"
    for name, function in steps.items():
        component, modules = table[name]
        source = ROOT / component
        assert source.is_file(), f"{name}: {component} does not exist"
        assert re.search(rf"^def {function}\(", source.read_text(), flags=re.M), (
            f"{name}: {component} does not define the step's component {function}"
        )
        assert modules, f"{name}: no library module listed"
        missing = [m for m in modules if _module_file(m) is None]
        assert not missing, f"{name}: no such module {missing}"
        assert _referenced_modules(source) & set(modules), f"{name}: {component} uses none of {modules}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = set(re.findall(r"\]\(docs/([\w.-]+\.md)(?:#[\w-]*)?\)", _readme()))
    assert {page.name for page in DOCS} <= linked, f"not linked: {sorted({p.name for p in DOCS} - linked)}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link {target} points at nothing"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: no heading #{anchor} in {resolved.name}"


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_make_targets_exist(page):
    used = set(re.findall(r"\bmake ([a-z][\w-]*)", page.read_text()))
    if page == README:
        assert used, "the README names no make target"
    assert used <= _makefile_targets(), (
        f"{page.name}: no such make target {sorted(used - _makefile_targets())}"
    )


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_python_modules_and_their_flags_exist(page):
    text = page.read_text().replace("\\\n", " ")
    for module, args in re.findall(r"python -m ((?:sam2|pipelines)(?:\.\w+)+)([^\n`|]*)", text):
        source = _module_file(module)
        assert source is not None, f"{page.name}: python -m {module}: no such module"
        if source.name == "__init__.py":  # a package runs its __main__
            source = source.with_name("__main__.py")
            assert source.is_file(), f"{page.name}: python -m {module}: the package has no __main__.py"
        code = source.read_text()
        for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", args):
            assert f'"{flag}"' in code or f"'{flag}'" in code, f"{page.name}: {module} has no flag {flag}"
