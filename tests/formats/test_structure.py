"""The formats package's shape: imports go one way, modules stay short, names have one source.

The import graph is read from the source (every ``import``, function-local ones
included, ``TYPE_CHECKING`` blocks excluded since they never run), so a cycle
hidden inside a function is found too.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import qsim_hooks.formats as F
from qsim_hooks.formats import block, floating, registry

PKG = pathlib.Path(F.__file__).parent
MODULES = sorted(p.stem for p in PKG.glob("*.py"))


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: pathlib.Path) -> tuple[set[str], list[str]]:
    """(formats modules ``path`` imports, descriptions of the function-local imports)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(n) for n in ast.walk(node))
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    deps: set[str] = set()
    local_found = []
    for node in ast.walk(tree):
        if id(node) in skip or not isinstance(node, ast.ImportFrom) or node.level != 1:
            continue
        targets = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        deps.update(t for t in targets if t in MODULES)
        if id(node) in local:
            local_found.append(f"{path.stem}: from .{node.module or ''} import ...")
    return deps, local_found


def test_no_import_cycle_and_no_function_local_imports() -> None:
    graph = {m: _imports(PKG / f"{m}.py")[0] - {m} for m in MODULES}
    local = [d for m in MODULES for d in _imports(PKG / f"{m}.py")[1]]
    assert local == [], f"function-local imports inside formats/: {local}"
    # Kahn's algorithm: every module must come out; what is left sits on a cycle
    left = {m: set(d) for m, d in graph.items()}
    while True:
        free = [m for m, d in left.items() if not d]
        if not free:
            break
        for m in free:
            del left[m]
        for d in left.values():
            d.difference_update(free)
    assert not left, f"import cycle among {sorted(left)}: {left}"
    bottom = ("_checks", "_exmy", "_compile_cost", "_split", "_fused_call")
    assert all(graph[m] == set() for m in bottom), f"the bottom modules {bottom} import nothing above"
    assert graph["kernels"] == {"_exmy", "_compile_cost", "_split", "_fused_call"}, graph["kernels"]
    assert "registry" not in graph["base"], "base must not import the registry (names resolve through a slot)"


@pytest.mark.parametrize("module", MODULES)
def test_modules_are_short(module: str) -> None:
    n = len((PKG / f"{module}.py").read_text().splitlines())
    assert n <= 400, f"formats/{module}.py has {n} lines"


def test_named_formats_are_the_module_constants() -> None:
    # one source: the registry serves the very objects floating.py and block.py define
    for name, const in [("e4m3", F.E4M3), ("e5m2", F.E5M2), ("e3m4", F.E3M4), ("e3m2", F.E3M2),
                        ("e2m3", F.E2M3), ("e2m1", F.E2M1), ("fp16", F.FP16), ("bf16", F.BF16),
                        ("tf32", F.TF32), ("fp32", F.FP32), ("mxfp4", F.MXFP4), ("nvfp4", F.NVFP4),
                        ("mxint8", F.MXINT8), ("abfp8", F.ABFP8), ("mxfp8_e4m3", F.MXFP8_E4M3)]:
        assert F.get(name) is const, name
    assert block.ELEMENTS["e4m3"] is floating.E4M3 and block.ELEMENTS["e2m1"] is floating.E2M1
    assert F.NVFP4.scale is floating.E4M3 and F.NVFP4.element is floating.E2M1
    assert F.ABFP8.scale is floating.BF16
    assert set(block.NAMED) <= set(registry.names())


def test_format_info_is_the_one_source_of_figures() -> None:
    for name in F.names():
        fmt = F.get(name)
        info = fmt.info
        assert isinstance(info, F.FormatInfo)
        assert (fmt.bits, fmt.max, fmt.min_subnormal, fmt.spacing_at_one, fmt.is_scaled, fmt.granularity,
                fmt.bits_per_value) == (info.bits, info.max, info.min_subnormal, info.spacing_at_one,
                                        info.is_scaled, info.granularity, info.bits_per_value), name
    cf = F.as_format(lambda t: t)
    assert cf.info == F.FormatInfo() and cf.bits is None and cf.max == float("inf")
