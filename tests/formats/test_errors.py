"""Bad input gets a ValueError or TypeError whose message names the parameter.

Covers format fields (E, M, bias, specials, overflow, rounding, bits,
scaling, grad), Scaling fields, per-call amax (<= 0, NaN, Inf, empty, wrong
count, not a number), tensors of the wrong type or dtype, names, backends;
then a wrong type for every field of every format value (FloatFormat,
IntFormat, Scaling, GradSpec, BlockFormat, IntElement, ABFP, CallableFormat),
by hand and by hypothesis (any value of any type in any field: a TypeError
or ValueError naming the class, never another exception).
Ragged blocks are not an error (tested in test_integer.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qsim_hooks.formats import CallableFormat, FloatFormat, GradSpec, IntFormat, Scaling, get, kernels, register
from qsim_hooks.formats.block import ABFP, BlockFormat, IntElement


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


# ---------------------------------------------------------------------------
# Every field of every format value checks its type (and range) when the value is made
# ---------------------------------------------------------------------------
TYPE_ERRORS = {
    # (what, exception, message pattern, factory)
    "float-subnormals": (TypeError, r"FloatFormat\.subnormals must be a bool.*'no'",
                         lambda: FloatFormat(4, 3, subnormals="no")),
    "float-subnormals-int": (TypeError, r"FloatFormat\.subnormals", lambda: FloatFormat(4, 3, subnormals=1)),
    "float-bias-huge": (ValueError, r"FloatFormat\.bias=-1000000 is out of range.*allowed -113\.\.147",
                        lambda: FloatFormat(4, 3, bias=-10**6)),
    "float-bias-big": (ValueError, r"FloatFormat\.bias=10000000000 is out of range",
                       lambda: FloatFormat(4, 3, bias=10**10)),
    "float-specials-int": (TypeError, r"FloatFormat\.specials must be a str", lambda: FloatFormat(4, 3, specials=1)),
    "float-overflow-none": (TypeError, r"FloatFormat\.overflow must be a str",
                            lambda: FloatFormat(4, 3, overflow=None)),
    "float-name": (TypeError, r"FloatFormat\.name must be a str", lambda: FloatFormat(4, 3, name=3)),
    "float-rounding-none": (ValueError, r"FloatFormat\.rounding=None", lambda: FloatFormat(4, 3, rounding=None)),
    "int-signed": (TypeError, r"IntFormat\.signed must be a bool.*'no'", lambda: IntFormat(8, signed="no")),
    "int-narrow": (TypeError, r"IntFormat\.narrow must be a bool.*'x'", lambda: IntFormat(8, narrow="x")),
    "int-name": (TypeError, r"IntFormat\.name must be a str", lambda: IntFormat(8, name=8)),
    "int-bits-float": (TypeError, r"IntFormat\.bits must be an int", lambda: IntFormat(8.0)),
    "scaling-block_size-bool": (TypeError, r"Scaling\.block_size must be an int", lambda: Scaling(block_size=True)),
    "scaling-block_size-float": (TypeError, r"Scaling\.block_size must be an int", lambda: Scaling(block_size=32.0)),
    "scaling-percentile-str": (TypeError, r"Scaling\.percentile must be a number", lambda: Scaling(percentile="99")),
    "scaling-amax-str": (TypeError, r"Scaling\.amax must be a number", lambda: Scaling(amax="1")),
    "scaling-amax-bool": (TypeError, r"Scaling\.amax must be a number", lambda: Scaling(amax=True)),
    "scaling-amax-1e39": (ValueError, r"Scaling\.amax=1e\+39 is not a usable amax", lambda: Scaling(amax=1e39)),
    "scaling-granularity-int": (TypeError, r"Scaling\.granularity must be a str", lambda: Scaling(granularity=1)),
    "scaling-mode-none": (TypeError, r"Scaling\.mode must be a str", lambda: Scaling(mode=None)),
    "scaling-axis-bool": (TypeError, r"Scaling\.axis must be an int", lambda: Scaling(axis=True)),
    "grad-estimator-int": (TypeError, r"GradSpec\.estimator must be a str", lambda: GradSpec(estimator=1)),
    "grad-format-name": (ValueError, r"GradSpec\.format: unknown format 'e4m9x'", lambda: GradSpec(format="e4m9x")),
    "block-block_size-float": (TypeError, r"BlockFormat\.block_size must be an int",
                          lambda: BlockFormat(block_size=32.0)),
    "block-tensor_scale": (TypeError, r"BlockFormat\.tensor_scale must be a bool",
                          lambda: BlockFormat(tensor_scale="yes")),
    "block-qtorch_compat": (TypeError, r"BlockFormat\.qtorch_compat must be a bool",
                          lambda: BlockFormat(qtorch_compat=1)),
    "block-grouping-int": (TypeError, r"BlockFormat\.grouping must be a str", lambda: BlockFormat(grouping=0)),
    "block-scale_rounding-int": (TypeError, r"BlockFormat\.scale_rounding must be a str",
                                 lambda: BlockFormat(scale_rounding=1)),
    "block-name": (TypeError, r"BlockFormat\.name must be a str", lambda: BlockFormat(name=1)),
    "block-axis-str": (TypeError, r"BlockFormat\.axis must be an int", lambda: BlockFormat(axis="0")),
    "element-narrow": (TypeError, r"IntElement\.narrow must be a bool", lambda: IntElement(narrow="no")),
    "element-per_unit-str": (TypeError, r"IntElement\.per_unit must be a number", lambda: IntElement(per_unit="64")),
    "abfp-gain-str": (TypeError, r"ABFP\.gain must be a number", lambda: ABFP(gain="2")),
    "abfp-gain-nan": (ValueError, r"ABFP\.gain=nan", lambda: ABFP(gain=float("nan"))),
    "abfp-tile-float": (TypeError, r"ABFP\.tile must be an int", lambda: ABFP(tile=128.0)),
    "abfp-scale": (TypeError, r"ABFP\.scale must be an unscaled FloatFormat", lambda: ABFP(scale="bf16")),
    "abfp-bits-bool": (TypeError, r"ABFP\.bits must be an int", lambda: ABFP(bits=True)),
    "callable-name": (TypeError, r"CallableFormat\.name must be a str", lambda: CallableFormat(abs, name=1)),
    "callable-grad": (TypeError, r"CallableFormat\.grad must be a GradSpec", lambda: CallableFormat(abs, grad="ste")),
}


@pytest.mark.parametrize("case", list(TYPE_ERRORS))
def test_every_field_checks_its_type(case: str) -> None:
    exc, match, fn = TYPE_ERRORS[case]
    _raises(exc, match, fn)


_JUNK = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                  st.text(max_size=6), st.just([1]), st.just(object()), st.just(b"x"))


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _valid(cls: type) -> dict[str, Any]:
    return {"exp_bits": 4, "man_bits": 3} if cls is FloatFormat else {}


@settings(max_examples=200, deadline=None, derandomize=True)
@given(cls=st.sampled_from([FloatFormat, IntFormat, Scaling, GradSpec, BlockFormat, IntElement, ABFP]),
       data=st.data())
def test_any_wrong_value_gets_a_named_type_or_value_error(cls: type, data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(_fields(cls)), label="field")
    value = data.draw(_JUNK, label="value")
    kwargs = {**_valid(cls), field: value}
    try:
        cls(**kwargs)
    except (TypeError, ValueError) as exc:
        assert f"{cls.__name__}." in str(exc), f"{cls.__name__}({field}={value!r}): {exc}"
    # anything else (OverflowError, AttributeError, ...) fails the test by propagating
