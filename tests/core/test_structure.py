"""The core's shape: modules under ~400 lines, imports among them one way (function-local ones counted),
no function-local import except a deferred optional dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "qsim_hooks"
CORE = ("config", "layers", "planning", "points", "undo", "weights", "activations", "attention",
        "decompose", "offload", "session", "calibration", "calibration.api", "calibration.calibration",
        "calibration.methods", "calibration.observers")
#: (module, imported top-level package) pairs allowed inside a function: heavy optional dependencies
DEFERRED = {("offload", "accelerate")}


def _path(mod: str) -> Path:
    p = PKG.joinpath(*mod.split("."))
    return p / "__init__.py" if p.is_dir() else p.with_suffix(".py")


def _imports(mod: str) -> list[tuple[str, bool]]:
    """(imported module, inside a function) for every import of ``mod``, relative ones resolved."""
    tree = ast.parse(_path(mod).read_text())
    is_pkg = _path(mod).name == "__init__.py"
    here = ["qsim_hooks", *mod.split(".")]
    base = here if is_pkg else here[:-1]
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            parts = base[: len(base) - node.level + 1] if node.level else []
            target = ".".join(parts + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub if _is_module(sub) else target, id(node) in local))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in local) for a in node.names]
    return out


def _is_module(dotted: str) -> bool:
    if not dotted.startswith("qsim_hooks."):
        return False
    p = PKG.joinpath(*dotted.split(".")[1:])
    return p.is_dir() or p.with_suffix(".py").exists()


def _core_edges() -> dict[str, set[str]]:
    edges = {}
    for mod in CORE:
        deps = {t[len("qsim_hooks."):] for t, _ in _imports(mod) if t.startswith("qsim_hooks.")}
        edges[mod] = {d for d in deps if d in CORE and d != mod}
    return edges


@pytest.mark.parametrize("mod", CORE)
def test_core_module_is_short(mod):
    n = len(_path(mod).read_text().splitlines())
    assert n <= 400, f"qsim_hooks/{mod}: {n} lines"


@pytest.mark.parametrize("mod", CORE)
def test_no_function_local_import_but_a_deferred_optional_dependency(mod):
    local = sorted({t for t, inside in _imports(mod) if inside})
    assert all((mod, t.split(".")[0]) in DEFERRED for t in local), f"qsim_hooks/{mod} imports {local} in a function"


def test_core_imports_form_no_cycle():
    edges = _core_edges()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d)
        path.pop()
        state[m] = 2

    for m in CORE:
        if m not in state:
            visit(m)
    # and the graph says what the module docstrings say: the user's types at the bottom, sessions on top
    assert not edges["config"] - {"layers"} and not edges["undo"]
    assert "session" not in set().union(*(edges[m] for m in CORE if not m.startswith("calibration")))


def test_the_checker_sees_cycles_and_local_imports(tmp_path, monkeypatch):
    """The checks above can fail: a planted function-local import and a planted cycle are found."""
    pkg = tmp_path / "qsim_hooks"
    (pkg / "calibration").mkdir(parents=True)
    for mod in CORE:
        _path_in(pkg, mod).write_text("")
    _path_in(pkg, "undo").write_text("def f():\n    from .session import Session\n")
    _path_in(pkg, "session").write_text("from . import undo\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PKG"]), "PKG", pkg)
    assert ("qsim_hooks.session", True) in _imports("undo")
    with pytest.raises(AssertionError, match="import cycle: (undo -> session -> undo|session -> undo -> session)"):
        test_core_imports_form_no_cycle()


def _path_in(pkg: Path, mod: str) -> Path:
    p = pkg.joinpath(*mod.split("."))
    return p / "__init__.py" if mod == "calibration" else p.with_suffix(".py")
