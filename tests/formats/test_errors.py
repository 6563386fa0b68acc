"""Bad input gets a ValueError or TypeError whose message names the parameter.

Covers format fields (E, M, bias, specials, overflow, rounding, bits,
scaling, grad), Scaling fields, per-call amax (<= 0, NaN, Inf, empty, wrong
count, not a number), tensors of the wrong type or dtype, names, backends.
Ragged blocks are not an error (tested in test_integer.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from qsim_hooks.formats import FloatFormat, GradSpec, IntFormat, Scaling, get, kernels, register


def _raises(exc: type[Exception], match: str, fn: Callable[[], Any]) -> None:
    with pytest.raises(exc, match=match):
        fn()


FIELD_ERRORS = {
    "E=0": (ValueError, r"exp_bits=0 .*1\.\.8", lambda: FloatFormat(0, 3)),
    "E=9": (ValueError, r"exp_bits=9 .*1\.\.8", lambda: FloatFormat(9, 3)),
    "M=24": (ValueError, r"man_bits=24 .*0\.\.23", lambda: FloatFormat(4, 24)),
    "M=-1": (ValueError, r"man_bits=-1", lambda: FloatFormat(4, -1)),
    "E-float": (TypeError, "exp_bits must be an int", lambda: FloatFormat(4.0, 3)),
    "M-bool": (TypeError, "man_bits must be an int", lambda: FloatFormat(4, True)),
    "bias-float": (TypeError, "bias", lambda: FloatFormat(4, 3, bias=1.5)),
    "bias-range": (ValueError, "bias", lambda: FloatFormat(8, 7, bias=100)),
    "specials": (ValueError, "specials='x'", lambda: FloatFormat(4, 3, specials="x")),
    "overflow": (ValueError, "overflow='wrap'", lambda: FloatFormat(4, 3, overflow="wrap")),
    "overflow-none": (ValueError, "overflow='special'", lambda: FloatFormat(2, 1, specials="none",
                                                                           overflow="special")),
    "rounding-float": (ValueError, r"rounding='banker'.*nearest_even", lambda: FloatFormat(4, 3, rounding="banker")),
    "rounding-int": (ValueError, r"IntFormat.rounding=3", lambda: IntFormat(8, rounding=3)),
    "float-scaling": (TypeError, "FloatFormat.scaling", lambda: FloatFormat(4, 3, scaling="tensor")),
    "float-grad": (TypeError, "FloatFormat.grad", lambda: FloatFormat(4, 3, grad="ste")),
    "bits=1": (ValueError, r"bits=1 .*2\.\.16", lambda: IntFormat(1)),
    "bits=17": (ValueError, r"bits=17", lambda: IntFormat(17)),
    "bits-bool": (TypeError, "bits must be an int", lambda: IntFormat(True)),
    "int-scaling": (TypeError, "IntFormat.scaling", lambda: IntFormat(8, scaling=None)),
    "int-grad": (TypeError, "IntFormat.grad", lambda: IntFormat(8, grad=None)),
    "estimator": (ValueError, "estimator='sgd'", lambda: GradSpec("sgd")),
    "grad-format": (TypeError, "GradSpec.format", lambda: GradSpec(format=1.5)),
    "granularity": (ValueError, "granularity='row'", lambda: Scaling("row")),
    "axis": (TypeError, "axis", lambda: Scaling(axis=1.0)),
    "block_size": (ValueError, "block_size=0", lambda: Scaling(block_size=0)),
    "mode": (ValueError, "mode='x'", lambda: Scaling(mode="x")),
    "method": (ValueError, "method='mse'", lambda: Scaling(method="mse")),
    "percentile=0": (ValueError, "percentile=0", lambda: Scaling(percentile=0)),
    "percentile=101": (ValueError, "percentile=101", lambda: Scaling(percentile=101)),
    "scaling-amax=0": (ValueError, r"amax=0\.0", lambda: Scaling(amax=0.0)),
    "scaling-amax<0": (ValueError, r"amax=-1\.0", lambda: Scaling(amax=-1.0)),
    "scaling-amax=nan": (ValueError, "amax=nan", lambda: Scaling(amax=float("nan"))),
    "scaling-amax=inf": (ValueError, "amax=inf", lambda: Scaling(amax=float("inf"))),
}


@pytest.mark.parametrize("case", list(FIELD_ERRORS))
def test_field_errors(case: str) -> None:
    exc, match, fn = FIELD_ERRORS[case]
    _raises(exc, match, fn)


X = torch.randn(4, 6)

CALL_ERRORS = {
    "amax=0": (ValueError, "amax must be finite and > 0", lambda: IntFormat(8)(X, amax=0)),
    "amax<0": (ValueError, "amax", lambda: IntFormat(8)(X, amax=-1.0)),
    "amax=nan": (ValueError, "amax", lambda: IntFormat(8)(X, amax=float("nan"))),
    "amax=inf": (ValueError, "amax", lambda: FloatFormat(4, 3, scaling=Scaling())(X, amax=float("inf"))),
    "amax-one-bad-channel": (ValueError, "amax", lambda: IntFormat(8, scaling=Scaling("channel"))(
        X, amax=torch.tensor([1.0, 0.0, 1.0, 1.0]))),
    "amax-empty": (ValueError, "amax is empty", lambda: IntFormat(8)(X, amax=[])),
    "amax-str": (TypeError, "amax must be a number", lambda: IntFormat(8)(X, amax="abc")),
    "amax-count-tensor": (ValueError, "amax", lambda: IntFormat(8)(X, amax=torch.ones(3))),
    "amax-count-channel": (ValueError, "amax", lambda: IntFormat(8, scaling=Scaling("channel", axis=0))(
        X, amax=torch.ones(3))),
    "amax-count-block": (ValueError, "amax", lambda: IntFormat(8, scaling=Scaling("block", block_size=4, axis=1))(
        X, amax=torch.ones(3))),
    "static-without-amax": (ValueError, "amax", lambda: IntFormat(8, scaling=Scaling(mode="static"))(X)),
    "axis-out-of-range": (ValueError, "axis=2", lambda: IntFormat(8, scaling=Scaling("channel", axis=2))(X)),
    "channel-0d": (ValueError, "channel", lambda: IntFormat(8, scaling=Scaling("channel"))(torch.tensor(1.0))),
    "int64-tensor": (TypeError, r"x has dtype torch\.int64", lambda: IntFormat(8)(torch.arange(4))),
    "int32-tensor-float-format": (TypeError, r"x has dtype torch\.int32",
                                  lambda: get("e4m3")(torch.arange(4, dtype=torch.int32))),
    "uint8-tensor": (TypeError, "dtype", lambda: get("e2m1")(torch.ones(3, dtype=torch.uint8))),
    "bool-tensor": (TypeError, "dtype", lambda: get("e4m3")(torch.ones(3, dtype=torch.bool))),
    "complex-tensor": (TypeError, "dtype", lambda: get("int8")(torch.ones(3, dtype=torch.complex64))),
    "fp8-tensor": (TypeError, "dtype", lambda: get("e4m3")(torch.ones(3).to(torch.float8_e4m3fn))),
    "list": (TypeError, "x must be a torch.Tensor, got list", lambda: get("e4m3")([1.0, 2.0])),
    "ndarray": (TypeError, "x must be a torch.Tensor, got ndarray", lambda: get("int8")(np.ones(3))),
    "float": (TypeError, "x must be a torch.Tensor, got float", lambda: get("fp16")(1.0)),
    "none": (TypeError, "x must be a torch.Tensor", lambda: get("e5m2")(None)),
}


@pytest.mark.parametrize("case", list(CALL_ERRORS))
def test_call_errors(case: str) -> None:
    exc, match, fn = CALL_ERRORS[case]
    _raises(exc, match, fn)


def test_name_errors() -> None:
    _raises(TypeError, "format name must be a str", lambda: get(3))
    _raises(ValueError, "exp_bits=9", lambda: get("e9m2"))
    _raises(ValueError, "man_bits=30", lambda: get("e4m30"))
    _raises(ValueError, "bits=17", lambda: get("int17"))
    _raises(ValueError, "bits=1", lambda: get("uint1"))
    with pytest.raises(ValueError, match="unknown format 'int8x'") as info:
        get("int8x")
    assert "did you mean" in str(info.value) and "'int8'" in str(info.value)
    with pytest.raises(ValueError, match="unknown format") as info:
        get("e4m")
    assert "'e4m3'" in str(info.value)
    with pytest.raises(ValueError, match="unknown format") as info:
        get("bf61")
    assert "'bf16'" in str(info.value)


def test_backend_and_register_errors() -> None:
    _raises(ValueError, "backend='gpu'", lambda: kernels.set_backend("gpu"))
    _raises(TypeError, "name", lambda: register("", lambda: get("int8")))
    _raises(TypeError, "factory", lambda: register("my_int8", 3))


def test_valid_edge_values_accepted() -> None:
    # the boundaries of every range are allowed
    FloatFormat(1, 0, specials="none")
    FloatFormat(8, 23)
    FloatFormat(1, 23, specials="none")
    IntFormat(2)
    IntFormat(16)
    Scaling(percentile=100.0)
    assert torch.equal(IntFormat(8)(torch.zeros(0)), torch.zeros(0))
    assert IntFormat(8)(X, amax=torch.tensor(1e-30)).isfinite().all()
    assert IntFormat(8)(X.double()).dtype == torch.float64
