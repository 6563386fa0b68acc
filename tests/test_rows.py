"""qsim_hooks.rows: statistics rows grouped, ordered and filtered by hand-computed figures; point names."""

import math

import pytest

from qsim_hooks import analysis, report
from qsim_hooks.rows import group_stats, select_points, select_stats


def _db(signal, noise):
    return 10 * math.log10(signal / noise)


# ---------------------------------------------------------------------------
# grouping: summed powers, not averaged decibels
# ---------------------------------------------------------------------------
def test_group_stats_sums_powers_and_weights_fractions():
    rows = [
        {"module": "enc.0.fc", "point": "weight", "tensor": "weight", "format": "int4", "granularity": "tensor",
         "calls": 1, "numel": 10, "sqnr_db": 20.0, "saturated": 0.1, "flushed": 0.0, "amax": 2.0,
         "signal_power": 100.0, "noise_power": 1.0},
        {"module": "enc.1.fc", "point": "weight", "tensor": "weight", "format": "int8", "granularity": "tensor",
         "calls": 1, "numel": 30, "sqnr_db": 0.0, "saturated": 0.0, "flushed": 0.5, "amax": 5.0,
         "signal_power": 1.0, "noise_power": 1.0},
        {"module": "head", "point": "weight", "tensor": "weight", "format": "int4", "granularity": "tensor",
         "calls": 1, "numel": 4, "sqnr_db": 10.0, "saturated": 0.0, "flushed": 0.0, "amax": 1.0,
         "signal_power": 10.0, "noise_power": 1.0},
    ]
    g = group_stats(rows, 1)
    assert [(r["module"], r["points"]) for r in g] == [("enc", 2), ("head", 1)]
    enc = g[0]
    assert enc["sqnr_db"] == pytest.approx(_db(101.0, 2.0))  # 17.03 dB, where the dB mean would be 10
    assert enc["saturated"] == pytest.approx(1 / 40) and enc["flushed"] == pytest.approx(15 / 40)
    assert enc["amax"] == 5.0 and enc["calls"] == 2 and enc["numel"] == 40 and enc["format"] == "int4,int8"
    assert g[1]["sqnr_db"] == pytest.approx(10.0)
    assert group_stats(rows, 2)[0]["module"] == "enc.0"
    with pytest.raises(ValueError, match="group="):
        group_stats(rows, 0)


def test_group_stats_without_statistics_and_of_empty_points():
    rows = [{"module": "a.x", "point": "input", "format": "int8", "calls": None},
            {"module": "a.y", "point": "input", "format": "int4", "calls": None},
            {"module": "b", "point": "weight", "format": "int8", "calls": 1, "numel": 0, "signal_power": 0.0,
             "noise_power": 0.0, "amax": None}]
    a, b = group_stats(rows, 1)
    assert a["points"] == 2 and a["format"] == "int8,int4" and a["sqnr_db"] is None and a["calls"] is None
    assert b["numel"] == 0 and b["sqnr_db"] is None and b["saturated"] == 0.0 and b["amax"] is None


def test_select_stats_orders_filters_and_groups():
    rows = [{"module": "m.a", "point": "input", "sqnr_db": 30.0}, {"module": "m.b", "point": "weight", "sqnr_db": 10.0},
            {"module": "n", "point": "input", "sqnr_db": float("nan")}, {"module": "o", "point": "input",
                                                                          "sqnr_db": None},
            {"module": "p", "point": "output", "sqnr_db": 20.0}]
    assert [r["module"] for r in select_stats(rows, sort="sqnr")] == ["m.b", "p", "m.a", "n", "o"]  # no figure last
    assert [r["module"] for r in select_stats(rows, point=["input", "output"], top=2)] == ["m.a", "n"]
    assert [r["module"] for r in select_stats(rows, sqnr_below=25.0)] == ["m.b", "p"]
    assert [(r["module"], r["point"]) for r in select_stats(rows, group=1, point="input")] == [("m", "input"),
                                                                                              ("n", "input"),
                                                                                              ("o", "input")]
    assert report.select_stats is select_stats and analysis.group_stats is group_stats  # re-exported, not copied


KEYS = [("fc1", "input", "input"), ("fc1", "weight", "weight"), ("fc2", "input", "input"),
        ("fc2", "weight", "weight"), ("fc2", "output", "output"), ("", "output", "output")]


@pytest.mark.parametrize("points, want", [
    (None, KEYS),
    ("fc2", KEYS[2:5]),
    ("fc1:weight", [KEYS[1]]),
    (["fc2:output", "fc1:input"], [KEYS[4], KEYS[0]]),  # in the order asked
    (("fc2", "weight"), [KEYS[3]]),
    (("fc2", "weight", "weight"), [KEYS[3]]),
    (["fc1", "fc1:input"], KEYS[:2]),  # each key once
    (":output", [KEYS[5]]),  # the model itself is the module ""
], ids=["all", "module", "module:point", "list", "tuple", "triple", "no-repeats", "model"])
def test_select_points_by_name(points, want):
    assert select_points(KEYS, points) == want


def test_select_points_errors_name_the_point_and_what_exists():
    with pytest.raises(ValueError, match=r"'fc3:input' is not a quantization point.*fc1:input, fc1:weight"):
        select_points(KEYS, ["fc1", "fc3:input"])
    with pytest.raises(TypeError, match="points"):
        select_points(KEYS, [3])
