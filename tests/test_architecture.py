"""The package's shape, read from its source with ``ast``: imports flow one way, modules stay small.

Rules, each checked per module of ``qsim_hooks`` (so a failure names the module):

* **no import cycle**: the import graph (absolute and relative ``qsim_hooks`` imports, at module level
  or inside functions, ``from . import x`` resolved to the module ``x`` when it is one) has no cycle;
* **function-local imports defer a heavy optional dependency**: an import inside a function is of a
  package in :data:`DEFERRED`, never of ``qsim_hooks`` itself (a lazy import that dodges a cycle hides
  it) nor of what ``import torch`` has loaded already (deferring it saves nothing);
* **size**: no module over :data:`MAX_LINES` lines;
* **environment**: no module sets an environment variable (a library reads them, the user sets them).

The graph builder is tested first on a made-up package with a known cycle and a known local import, so
a checker that sees nothing cannot pass for a clean package.
"""

from __future__ import annotations

import ast
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "qsim_hooks"
MAX_LINES = 400

#: packages a function may import, and why the import is deferred. ``torch.distributed`` is not one:
#: ``import torch`` loads it already, so importing it inside a function defers nothing.
DEFERRED = {
    "qtorch": "compiles a C++ extension when imported",
    "matplotlib": "the [plot] extra",
    "torchvision": "the [vision] extra",
    "accelerate": "a client library (offloaded models), not a dependency",
    "transformers": "a client library, not a dependency",
    "diffusers": "a client library, not a dependency",
    "torch._inductor": "the compiler: loaded only when a fused kernel is built",
    "torch._dynamo": "the compiler: loaded only when a fused kernel is built",
}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int
    imports: list[tuple[str, int, bool]] = field(default_factory=list)  # (absolute target, line, in a function)
    sets_environment: list[int] = field(default_factory=list)


def _module_name(root: Path, path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


class _Visitor(ast.NodeVisitor):
    def __init__(self, mod: Module) -> None:
        self.mod = mod
        self.depth = 0

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.mod.imports.append((alias.name, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _resolve(self.mod.name, self.mod.is_package, node.level, node.module)
        for alias in node.names:  # ``from pkg import sub`` imports the module pkg.sub when there is one
            self.mod.imports.append((f"{target}.{alias.name}" if alias.name != "*" else target, node.lineno,
                                     self.depth > 0))

    def visit_Call(self, node: ast.Call) -> None:  # os.environ.setdefault / update / pop, os.putenv
        f = node.func
        if isinstance(f, ast.Attribute):
            if _is_environ(f.value) and f.attr in ("setdefault", "update", "pop", "clear", "__setitem__"):
                self.mod.sets_environment.append(node.lineno)
            if f.attr in ("putenv", "unsetenv") and isinstance(f.value, ast.Name) and f.value.id == "os":
                self.mod.sets_environment.append(node.lineno)
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:  # os.environ[...] = / del os.environ[...]
        if isinstance(node.ctx, (ast.Store, ast.Del)) and _is_environ(node.value):
            self.mod.sets_environment.append(node.lineno)
        self.generic_visit(node)


def _is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and (
        isinstance(node.value, ast.Name) and node.value.id == "os")


def load_package(root: Path) -> dict[str, Module]:
    mods = {}
    for path in sorted(root.rglob("*.py")):
        name, is_package = _module_name(root, path)
        text = path.read_text(encoding="utf-8")
        mod = Module(name, path, is_package, len(text.splitlines()))
        _Visitor(mod).visit(ast.parse(text, filename=str(path)))
        mods[name] = mod
    return mods


def _target_module(target: str, mods: dict[str, Module]) -> str | None:
    """The package module an import target lands in: itself, or the longest known prefix (``pkg.attr``)."""
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in mods:
            return ".".join(parts[:n])
    return None


def import_graph(mods: dict[str, Module]) -> dict[str, set[str]]:
    """Module -> the package modules it imports; importing ``a.b.c`` also runs ``a.b`` unless the importer
    is inside ``a.b`` (then that package is already being initialised)."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, mod in mods.items():
        own = name if mod.is_package else name.rpartition(".")[0]
        for target, _, _ in mod.imports:
            hit = _target_module(target, mods)
            if hit is None:
                continue
            graph[name].add(hit)
            parts = hit.split(".")
            for n in range(1, len(parts)):
                parent = ".".join(parts[:n])
                if parent in mods and not (own == parent or own.startswith(parent + ".")):
                    graph[name].add(parent)
        graph[name].discard(name)
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest import path from ``start`` back to itself, or ``None``."""
    frontier, seen = [[start]], {start}
    while frontier:
        nxt = []
        for path in frontier:
            for dep in sorted(graph[path[-1]]):
                if dep == start:
                    return [*path, start]
                if dep not in seen:
                    seen.add(dep)
                    nxt.append([*path, dep])
        frontier = nxt
    return None


def local_imports(mod: Module) -> Iterator[tuple[str, int]]:
    for target, line, in_function in mod.imports:
        if in_function:
            yield target, line


def deferred_ok(target: str, root_name: str) -> bool:
    if target == root_name or target.startswith(root_name + "."):
        return False
    return any(target == d or target.startswith(d + ".") for d in DEFERRED)


# ---------------------------------------------------------------------------
# The checker itself, on a made-up package
# ---------------------------------------------------------------------------
FAKE = {
    "__init__.py": "from .a import f\nfrom . import b\n",
    "a.py": "import os\nfrom .c import g\n\ndef f():\n    import matplotlib.pyplot\n    from . import b\n",
    "b.py": "from fakepkg.sub import h\n",
    "c.py": "X = 1\n",
    "d.py": "import fakepkg.sub.inner\n",
    "sub/__init__.py": "from .inner import h\n",
    "sub/inner.py": "import os\nfrom .. import a\n\ndef h():\n    os.environ['X'] = '1'\n",
}


def test_the_checker_finds_a_known_cycle_local_import_and_environment_write(tmp_path):
    root = tmp_path / "fakepkg"
    for rel, text in FAKE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    mods = load_package(root)
    assert set(mods) == {"fakepkg", "fakepkg.a", "fakepkg.b", "fakepkg.c", "fakepkg.d", "fakepkg.sub",
                         "fakepkg.sub.inner"}
    graph = import_graph(mods)
    assert graph["fakepkg"] == {"fakepkg.a", "fakepkg.b"}  # `from . import b` is the module b
    assert graph["fakepkg.a"] == {"fakepkg.c", "fakepkg.b"}  # the function-local import counts
    assert graph["fakepkg.b"] == {"fakepkg.sub"}  # h is a name in sub/__init__, not a module
    assert graph["fakepkg.d"] == {"fakepkg.sub.inner", "fakepkg.sub"}  # the package runs first
    assert graph["fakepkg.sub"] == {"fakepkg.sub.inner"}
    assert graph["fakepkg.sub.inner"] == {"fakepkg.a"}  # `from .. import a` from inside sub/
    # a -> b -> sub -> sub.inner -> a; c and d are in no cycle
    assert cycle_through(graph, "fakepkg.a") == ["fakepkg.a", "fakepkg.b", "fakepkg.sub", "fakepkg.sub.inner",
                                                 "fakepkg.a"]
    assert cycle_through(graph, "fakepkg.c") is None and cycle_through(graph, "fakepkg.d") is None
    assert list(local_imports(mods["fakepkg.a"])) == [("matplotlib.pyplot", 5), ("fakepkg.b", 6)]
    assert [deferred_ok(t, "fakepkg") for t, _ in local_imports(mods["fakepkg.a"])] == [True, False]
    assert mods["fakepkg.sub.inner"].sets_environment == [5] and mods["fakepkg.a"].sets_environment == []
    assert mods["fakepkg.a"].lines == 6


# ---------------------------------------------------------------------------
# The rules, per module of qsim_hooks
# ---------------------------------------------------------------------------
MODULES = load_package(ROOT)
GRAPH = import_graph(MODULES)
NAMES = sorted(MODULES)


def test_the_package_was_read():
    assert {"qsim_hooks", "qsim_hooks.session", "qsim_hooks.report", "qsim_hooks.formats"} <= set(MODULES)
    assert "qsim_hooks.session" in GRAPH["qsim_hooks"]


@pytest.mark.parametrize("name", NAMES)
def test_no_import_cycle(name):
    cycle = cycle_through(GRAPH, name)
    assert cycle is None, f"{name} imports itself through {' -> '.join(cycle)}"


@pytest.mark.parametrize("name", NAMES)
def test_function_local_imports_defer_a_heavy_optional_dependency(name):
    mod = MODULES[name]
    bad = [f"{mod.path.relative_to(ROOT.parent)}:{line} imports {target}"
           for target, line in local_imports(mod) if not deferred_ok(target, ROOT.name)]
    assert not bad, ("import at the top of the module; a function may import only "
                     f"{', '.join(sorted(DEFERRED))}: " + "; ".join(bad))


@pytest.mark.parametrize("name", NAMES)
def test_module_size(name):
    lines, path = MODULES[name].lines, MODULES[name].path.relative_to(ROOT.parent)
    assert lines <= MAX_LINES, f"{path} has {lines} lines (at most {MAX_LINES})"


@pytest.mark.parametrize("name", NAMES)
def test_no_module_sets_the_environment(name):
    where, path = MODULES[name].sets_environment, MODULES[name].path.relative_to(ROOT.parent)
    assert not where, f"{path} sets os.environ at lines {where}: a library reads the environment, it does not set it"


# ---------------------------------------------------------------------------
# docs/ARCHITECTURE.md names every module a reader meets first
# ---------------------------------------------------------------------------
ARCHITECTURE = (ROOT.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")


def _named_in_architecture(rel: str) -> bool:
    """``rel`` (``x.py`` or ``x/``) appears in the map as a word, or a ``prefix*.py`` pattern there covers it."""
    if re.search(r"(?<![\w./])" + re.escape(rel) + r"(?!\w)", ARCHITECTURE):
        return True
    patterns = re.findall(r"([\w.]*)\*\.py", ARCHITECTURE)
    return rel.endswith(".py") and any(pat and rel.startswith(pat) for pat in patterns)


def _map_entry(mod: Module) -> str:
    return f"{mod.path.parent.name}/" if mod.is_package else mod.path.name


#: the top level of the package (modules and sub-packages) and every module of ``formats/``
_MAPPED = sorted(_map_entry(m) for m in MODULES.values()
                 if m.name.count(".") == 1 or m.name.startswith(f"{ROOT.name}.formats."))


@pytest.mark.parametrize("rel", _MAPPED)
def test_every_module_is_on_the_architecture_map(rel):
    assert _named_in_architecture(rel), f"docs/ARCHITECTURE.md does not name {rel}: say what it owns"
