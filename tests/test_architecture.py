"""The package's layering: modules import each other in one direction only (no circle, not
even through imports inside functions), and no module outgrows one sitting's reading."""

import ast
import pathlib

import fastmlp

PACKAGE = pathlib.Path(fastmlp.__file__).parent


def imports_of(path: pathlib.Path) -> set[str]:
    """The fastmlp modules that `path` imports anywhere (top level or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastmlp"):
            if node.module == "fastmlp":
                found |= {alias.name for alias in node.names}
            else:
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names
                      if alias.name.startswith("fastmlp.")}
    return found


def test_module_imports_form_no_cycle():
    modules = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    graph = {name: imports_of(path) & set(modules) - {name} for name, path in modules.items()}
    assert graph["model"] and graph["io"], "the scan found nothing: it is broken"
    finished, on_path = set(), []

    def visit(name):
        if name in on_path:
            raise AssertionError("import cycle: " + " -> ".join(on_path[on_path.index(name):]
                                                                + [name]))
        if name in finished:
            return
        on_path.append(name)
        for dependency in sorted(graph[name]):
            visit(dependency)
        on_path.pop()
        finished.add(name)

    for name in sorted(graph):
        visit(name)
    # The layering docs/architecture.md describes.
    for lower in ("io", "torch_interop", "onnx_export", "_training", "optim", "_validation"):
        assert "model" not in graph[lower], f"{lower} must not import model"


def test_no_module_is_longer_than_700_lines():
    lengths = {path.name: len(path.read_text().splitlines()) for path in PACKAGE.glob("*.py")}
    assert max(lengths.values()) <= 700, sorted(lengths.items(), key=lambda item: -item[1])[:3]
