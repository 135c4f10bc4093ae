"""Imports inside jedi_pipe form no circle (DESIGN.md: data flows one way, no module reaches back).

The graph is read from the source with `ast`, not by importing: every `import` and `from ... import`
anywhere in a module (top level, inside functions, under `if`) that names a jedi_pipe module is an
edge, so a circle hidden behind a function-level import is found too. Imports made by name at run
time (`importlib.import_module(...)` in `jedi_pipe/__init__.py`'s lazy API) are not edges: they
run only when an attribute is asked for, after every module has loaded.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "jedi_pipe"


def modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every .py file of the package."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return found


def imported(name: str, path: Path, is_pkg: bool, known: set[str]) -> set[str]:
    """The package modules that module `name` imports, at any depth of its code."""
    root = name.split(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in known}
        elif isinstance(node, ast.ImportFrom):
            if node.level:   # relative: `.` is the module's own package
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != root:
                continue
            for a in node.names:   # `from . import shards` imports the submodule, `from .x import f` x
                sub = f"{target}.{a.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    mods = modules(package_dir)
    return {name: imported(name, path, is_pkg, set(mods)) for name, (path, is_pkg) in mods.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Circles found by depth-first search, as paths like ['a', 'b', 'a']: at least one in every group
    of modules that reach each other, so an empty list means the graph has none."""
    state, stack, found = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_jedi_pipe_has_no_import_circle():
    graph = import_graph(PACKAGE_DIR)
    assert len(graph) > 20 and "jedi_pipe.trainer" in graph["jedi_pipe.cli"] | graph["jedi_pipe.demo"]
    found = circles(graph)
    assert not found, "import circles in jedi_pipe: " + "; ".join(" -> ".join(c) for c in found)


# ---- the checker itself, on small packages written here

def _package(tmp_path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


@pytest.mark.parametrize("a_imports", [
    "from .b import f",                          # module level, relative
    "def g():\n    from pkg.b import f",         # function level, absolute
    "def g():\n    from . import b",             # function level, the submodule by name
    "import pkg.b",
])
def test_a_circle_is_found_wherever_the_import_is(tmp_path, a_imports):
    pkg = _package(tmp_path, {"a.py": a_imports + "\n", "b.py": "from .sub.c import h\ndef f(): pass\n",
                              "sub/__init__.py": "", "sub/c.py": "from ..a import g\ndef h(): pass\n"})
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.sub.c"] == {"pkg.a"}
    assert circles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_one_way_imports_are_no_circle(tmp_path):
    pkg = _package(tmp_path, {"a.py": "import os\nfrom . import b\nfrom .b import f\n",
                              "b.py": "from .sub import c\ndef f(): pass\n",
                              "sub/__init__.py": "from .c import h\n", "sub/c.py": "import json\ndef h(): pass\n"})
    graph = import_graph(pkg)
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.sub.c"},
                     "pkg.sub": {"pkg.sub.c"}, "pkg.sub.c": set()}
    assert circles(graph) == []


def test_the_api_names_stay_functions_after_every_module_is_imported():
    """jedi_pipe's lazy API (`jedi_pipe.predict`, ...) must survive `import jedi_pipe.<module>` of every
    module: a name shared with a submodule is replaced by the module on its first import (the
    second `jedi_pipe.predict(...)` of a notebook once failed with "'module' object is not callable")."""
    import importlib

    import jedi_pipe
    clashes = sorted(set(jedi_pipe._API) & {name.split(".")[1] for name in modules(PACKAGE_DIR) if "." in name})
    assert not clashes, f"API names that are also submodules of jedi_pipe: {clashes}"
    for module, _ in set(jedi_pipe._API.values()):
        importlib.import_module(f"jedi_pipe.{module}")
    for name in jedi_pipe._API:
        assert callable(getattr(jedi_pipe, name)) and not isinstance(getattr(jedi_pipe, name), type(jedi_pipe)), name
