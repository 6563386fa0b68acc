"""The "auto" backend's choice between eager and compiled kernels, and what a cold start says.

torch.compile is replaced by a recorder here (compiling for real takes 15-20 s and is tested in
test_kernels.py / test_compile.py): these tests check *when* a kernel is compiled, that a compile
leaves a marker a later process reads as "cached", and the one line a cold start logs.
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from qsim_hooks.formats import _compile_cost, kernels


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path) -> list[str]:
    """A new process's state, an empty inductor cache dir, and torch.compile recording what it compiles."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(_compile_cost, "_spent", {})
    monkeypatch.setattr(_compile_cost, "_rate", {})
    monkeypatch.setattr(_compile_cost, "_markers", None)
    monkeypatch.setattr(_compile_cost, "_told", False)
    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(kernels, "_backend", "auto")
    compiled: list[str] = []

    def fake_compile(fn, **kw):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", fake_compile)
    return compiled


def _double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_small_jobs_stay_eager_until_compiling_pays(fresh: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.ones(kernels.COMPILE_MIN_NUMEL)
    monkeypatch.setattr(_compile_cost, "LOAD_S", 0.0)
    monkeypatch.setattr(_compile_cost, "COLD_S", 1.0)
    ticks = iter(range(1000))
    monkeypatch.setattr(kernels.time, "perf_counter", lambda: 0.3 * next(ticks))  # every eager call: 0.3 s
    for _ in range(2):
        assert torch.equal(kernels.run("k", _double, x), x * 2)
    assert fresh == []  # 0.6 s spent, 0.9 s with the next call: still under the 1 s compile
    kernels.run("k", _double, x)
    assert fresh == []
    kernels.run("k", _double, x)  # 0.9 s spent + 0.3 s predicted >= 1 s: compile now
    assert fresh == ["_double"] and "k" in kernels._compiled
    assert os.path.exists(os.path.join(_compile_cost.marker_dir(), "k"))


def test_one_big_tensor_is_fused_at_once(fresh: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compile_cost, "LOAD_S", 0.0)
    # the prior (100 ns per element on CPU) predicts 21 s for 2^28 elements: above a cold compile
    big = torch.zeros(1).expand(1 << 28)  # numel is all pays() reads (a real one would be 1 GiB)
    assert _compile_cost.pays("k", big)
    assert not _compile_cost.pays("k", torch.zeros(kernels.COMPILE_MIN_NUMEL))


def test_tensors_below_the_threshold_never_compile(fresh: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_compile_cost, "COLD_S", 0.0)
    monkeypatch.setattr(_compile_cost, "LOAD_S", 0.0)
    kernels.run("k", _double, torch.ones(kernels.COMPILE_MIN_NUMEL - 1))
    assert fresh == []


def test_a_cached_compile_is_expected_to_be_cheaper(fresh: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    cold = _compile_cost.expected_cost("k")
    assert not _compile_cost.cached("k")
    monkeypatch.setattr(kernels, "_backend", "compiled")
    kernels.run("k", _double, torch.ones(8))
    monkeypatch.setattr(_compile_cost, "_markers", None)  # a later process reads the markers again
    assert _compile_cost.cached("k") and not _compile_cost.cached("other")
    assert _compile_cost.expected_cost("k") == pytest.approx(cold - _compile_cost.COLD_S + _compile_cost.WARM_S)


def test_a_cold_start_says_what_it_does_once(fresh: list[str], monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(kernels, "_backend", "compiled")
    with caplog.at_level(logging.WARNING, logger="qsim_hooks"):
        kernels.run("k1", _double, torch.ones(8))
        kernels.run("k2", _double, torch.ones(8))
    lines = [r.getMessage() for r in caplog.records if r.name == "qsim_hooks"]
    assert len(lines) == 1 and "compiling fused kernels with torch.compile" in lines[0]
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] in lines[0]


def test_the_no_cuda_runtime_line_is_dropped_only_while_compiling(
        fresh: list[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    ext = logging.getLogger("torch.utils.cpp_extension")

    def noisy(x: torch.Tensor) -> torch.Tensor:
        ext.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/usr/local")
        ext.warning("something else")
        return x

    monkeypatch.setattr(kernels, "_backend", "compiled")
    with caplog.at_level(logging.WARNING, logger="torch.utils.cpp_extension"):
        kernels.run("k", noisy, torch.ones(8))
        ext.warning("No CUDA runtime is found, using CUDA_HOME='%s'", "/opt")  # not ours: kept
    msgs = [r.getMessage() for r in caplog.records if r.name == "torch.utils.cpp_extension"]
    assert msgs == ["something else", "No CUDA runtime is found, using CUDA_HOME='/opt'"]
