"""The core's layout rules: module imports are acyclic, no module grows past about 450 lines, and
the core never imports ComfyUI or the pack's nodes/training folders."""
import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "vexpress_core"
MAX_LINES = 450


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of everything `path` imports (module-level or inside functions)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = ".".join(filter(None, [base if node.level else "", node.module or ""]))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in CORE.rglob("*.py")}
    return {name: {target for target in imported_modules(path) if target in modules and target != name}
            for name, path in modules.items()}


def test_core_modules_import_acyclically():
    graph = core_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for target in sorted(graph[node]):
            # importing a package imports its __init__, which may import the importer's siblings
            if target.startswith(node + "."):
                continue
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, stack + [target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


def test_no_core_module_is_longer_than_the_limit():
    long = {str(path.relative_to(CORE)): n for path in CORE.rglob("*.py") if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"


def test_core_never_imports_comfyui_nodes_or_training():
    bad = {}
    for path in CORE.rglob("*.py"):
        roots = {name.split(".")[0] for name in imported_modules(path)}
        found = roots & {"comfy", "comfy_api", "folder_paths", "server", "nodes", "training", "vexpress_training"}
        if found:
            bad[str(path.relative_to(CORE))] = sorted(found)
    assert not bad, bad


def test_every_core_package_is_installed():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    config = tomllib.loads((CORE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {module_name(path.parent) for path in CORE.rglob("__init__.py")}
    assert packages <= set(config["packages"]), sorted(packages - set(config["packages"]))
    assert config["package-dir"] == {"vexpress_training": "training"}
    assert not {"nodes", "training"} & set(config["packages"])
