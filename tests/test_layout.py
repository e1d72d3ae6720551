"""The package's shape: sub-packages in the request's order, and no import cycles between its modules, lazy
imports included (an import inside a function is a cycle that waits to bite); ``if TYPE_CHECKING:``
imports are annotations only and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "mooltiproxy"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The modules of this package that ``path`` imports at run time (at the top or inside functions)."""
    tree = ast.parse(path.read_text())
    here = _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                found.add(f"{target}.{alias.name}")  # a submodule, when that is what is imported
                found.add(target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m.startswith("mooltiproxy")}


def test_no_module_of_the_package_imports_itself_back_through_another() -> None:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # A package's __init__ re-exports its modules; importing it is importing them (the edge into the package).
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            cycle = [*trail[trail.index(node):], node]
            if not any(set(cycle) == set(c) for c in cycles):
                cycles.append(cycle)
            return
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*trail, node])
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name != "mooltiproxy":  # the top package re-exports the public API from everywhere: it is the root, never imported back
            visit(name, [])
    cycles = [c for c in cycles if "mooltiproxy" not in c]
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_sub_packages_follow_the_request() -> None:
    found = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert found == sorted(["http", "guard", "routing", "backends", "translate", "proxy", "upstream", "dataset", "review", "state",
                            "ops", "config", "cli"])
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "__main__.py", "app.py", "errors.py"]


def test_ci_runs_the_readmes_test_command_with_every_debian_package_the_tests_name() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    intro = readme.index("Install what the tests need and run them")
    command = readme[readme.index("```sh\n", intro) + 6:readme.index("\n```", intro)]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert command in ci.splitlines()
    installed = set(ci.split("packages=(", 1)[1].split(")", 1)[0].split())
    named = set()
    for test in (ROOT / "tests").rglob("*.py"):
        for call in ast.walk(ast.parse(test.read_text(encoding="utf-8"))):
            # program("wrk", "wrk"), missing("chromium", "chromium"): the package is the second argument.
            if (isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", "")) in ("program", "missing")
                    and len(call.args) > 1 and isinstance(call.args[1], ast.Constant)):
                named.add(call.args[1].value)
    assert named and named <= installed, named - installed
    assert {"cmake", "make", "g++"} <= installed  # llama-server's build (tests/backends/llama_server.py)
