"""The layering rule and the code digests the flow's cache keys on, both read from the import graph.

Order: pipeline < ingest < features < models < inference < catalogs < flows < clustermass (the CLI). A module may
import its own package and those below it, with no exception (the one entry script, ``clustermass/__main__.py``,
is in the top package).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import flows.tasks as tasks
from flows.keys import task_code_digest, task_modules
from pipeline.imports import LAYERS, ROOT, closure, imports_in, imports_of, layer, modules

TASKS = [tasks.synth_box, tasks.ingest_catalogs, tasks.plan_features, tasks.observe_region_task,
         tasks.assemble_features, tasks.train_models, tasks.write_catalogs, tasks.validate_models]


def _first_cycle(graph: dict[str, frozenset[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_module_imports_a_package_above_its_own():
    upward = [(m, i) for m in modules() for i in imports_of(m) if layer(i) > layer(m)]
    assert not upward, f"upward imports (order {' < '.join(LAYERS)}): {upward}"


def test_no_circular_imports_between_modules():
    graph = {m: imports_of(m) for m in modules()}
    assert _first_cycle(graph) is None, f"import cycle: {' -> '.join(_first_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_cycle():
    assert _first_cycle({"a": frozenset({"b"}), "b": frozenset({"c"}), "c": frozenset({"a"})}) == ["a", "b", "c", "a"]
    assert _first_cycle({"a": frozenset({"b"}), "b": frozenset()}) is None


def test_imports_inside_functions_and_relative_imports_count():
    tree = ast.parse("def f():\n    from models.stage import train_stage\nfrom . import spec\n")
    assert imports_in(tree, "models.io") == {"models.stage", "models", "models.spec"}


def test_flows_is_only_prefect_and_the_cli():
    """No stage logic in flows/: its modules are the flow, tasks, keys, runners, deployments and configuration."""
    found = {m for m in modules() if m.startswith("flows.")}
    assert found == {"flows.config", "flows.deploy", "flows.keys", "flows.mass_catalog", "flows.runners",
                     "flows.tasks"}


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")
    for pkg in LAYERS:
        shutil.copytree(ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_editing_any_module_a_stage_uses_changes_its_key(task, tree_copy: Path):
    used = closure(task_modules(task))
    assert used, "a stage task calls some stage code"
    before = task_code_digest(task, root=tree_copy)
    for name in used:
        path = tree_copy.joinpath(*name.split("."))
        path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        original = path.read_bytes()
        try:
            path.write_bytes(original + b"\n# an edit\n")
            assert task_code_digest(task, root=tree_copy) != before, f"editing {name} did not change {task.name}"
        finally:
            path.write_bytes(original)
    assert task_code_digest(task, root=tree_copy) == before


def test_a_stage_key_ignores_code_it_does_not_use(tree_copy: Path):
    synth = closure(task_modules(tasks.synth_box))
    assert "models.training" not in synth and "catalogs.stage" not in synth
    before = task_code_digest(tasks.synth_box, root=tree_copy)
    path = tree_copy / "models" / "training.py"
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        assert task_code_digest(tasks.synth_box, root=tree_copy) == before
        assert task_code_digest(tasks.train_models, root=tree_copy) != task_code_digest(tasks.train_models)
    finally:
        path.write_bytes(original)


def test_every_stage_task_is_keyed():
    """Every task the flow defines is in TASKS (so a new task cannot escape the tests above)."""
    from prefect.tasks import Task

    defined = {name for name, obj in vars(tasks).items() if isinstance(obj, Task)}
    assert defined == {t.fn.__name__ for t in TASKS}
