"""The layers of docs/design.md, section "Layers", as the code's imports show them: no module imports a higher layer,
no import cycle, no entry point imported, every package says what it owns and what it may import.

Read from the source with `ast` (nothing is imported), counting imports inside functions too: a lazy import still
ties two modules together.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mdcns_tf", "pipeline", "serving", "benchmarks")

CORE = {"mdcns_tf", "features", "batch", "config", "registry", "cli", "shipped_configs"}
COMPONENTS = {"losses", "metrics", "data", "config_loader", "backbones", "samplers"}
RECORDS = {"runs", "savedmodel"}
TRAINING = {"training"}
ENTRY_POINTS = {"mdcns_tf.train", "mdcns_tf.evaluate", "mdcns_tf.export", "mdcns_tf.recommend", "pipeline.run"}
LIBRARY_LAYERS = [CORE, COMPONENTS, RECORDS, TRAINING]


def module_name(path: str) -> str:
    name = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def source_modules() -> dict[str, str]:
    """Module name -> file, for every module of the packages (tests and results excluded)."""
    found = {}
    for package in PACKAGES:
        for root, dirs, files in os.walk(os.path.join(REPO, package)):
            dirs[:] = [d for d in dirs if d not in ("results", "__pycache__", "configs")]
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(root, file)
                    found[module_name(path)] = path
    return found


MODULES = source_modules()


def resolve(name: str) -> str | None:
    """The project module an import names (``a.b.c`` -> the longest prefix that is a module), or None."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str) -> Iterator[str]:
    """The project modules ``module`` imports, anywhere in its body."""
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from a import b``: b may be a submodule of a, else a name defined in a
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            target = resolve(name)
            if target is not None and target != module:
                yield target


GRAPH = {module: set(imports_of(module)) for module in MODULES}


def library_layer(module: str) -> int:
    """Index in `LIBRARY_LAYERS` of an ``mdcns_tf`` module (entry points: above every layer)."""
    if module in ENTRY_POINTS:
        return len(LIBRARY_LAYERS)
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "mdcns_tf"
    for index, layer in enumerate(LIBRARY_LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add it to tests/test_architecture.py and docs/design.md")


def test_the_library_imports_only_its_own_layer_and_below():
    wrong = []
    for module, targets in GRAPH.items():
        if not module.startswith("mdcns_tf"):
            continue
        for target in targets:
            if not target.startswith("mdcns_tf"):
                wrong.append(f"{module} -> {target} (outside the library)")
            elif library_layer(target) > library_layer(module):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_pipeline_and_serving_take_only_the_contracts_from_the_library():
    allowed = {
        # pipeline.recommend is a SavedModel client like serving/: the TensorFlow-free contract names and version
        # folders, never the model code
        "pipeline": {
            "mdcns_tf",
            "mdcns_tf.features",
            "mdcns_tf.cli",
            "mdcns_tf.savedmodel.signatures",
            "mdcns_tf.savedmodel.versions",
        },
        "serving": {"mdcns_tf", "mdcns_tf.savedmodel", "mdcns_tf.savedmodel.signatures"},
    }
    wrong = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for package, contracts in allowed.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] != package and target not in contracts
    ]
    assert not wrong, wrong


def test_no_entry_point_and_no_benchmark_is_imported_by_the_product():
    wrong = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if target in ENTRY_POINTS or (target.startswith("benchmarks") and not module.startswith("benchmarks"))
    ]
    assert not wrong, wrong


def test_no_import_cycle():
    """Depth-first search for a back edge; the message shows one cycle."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (cycle := visit(module)):
            pytest.fail(" -> ".join(cycle))


@pytest.mark.parametrize(
    "package",
    sorted(m for m, path in MODULES.items() if path.endswith("__init__.py") and not m.startswith("benchmarks")),
)
def test_every_package_says_what_it_owns_and_what_it_may_import(package: str):
    with open(MODULES[package], encoding="utf-8") as f:
        docstring = ast.get_docstring(ast.parse(f.read())) or ""
    assert len(docstring) > 80, f"{package}: the package docstring says what it owns"
    if package != "mdcns_tf":  # the root is the environment switch and imports nothing
        assert "may import" in docstring.lower() or "imports only" in docstring.lower(), package


def test_the_layers_know_every_library_module():
    for module in MODULES:
        if module.startswith("mdcns_tf"):
            library_layer(module)


# A module a reader takes in at once; the entry points and the schema are read first, so they stay shorter.
MAX_LINES = 400
MAX_LINES_ENTRY = {"mdcns_tf.train": 250, "pipeline.run": 250, "mdcns_tf.config": 250}


def test_modules_stay_short():
    long = []
    for module, path in MODULES.items():
        if module.startswith("benchmarks"):
            continue
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > MAX_LINES_ENTRY.get(module, MAX_LINES):
            long.append(f"{module}: {lines} lines")
    assert not long, long
