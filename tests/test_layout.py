"""Tables that fit: every table of the report rendered by rich at 80 and 200 columns (and narrower), read back
as text, and checked cell by cell: no line wider than the console, every module name whole (or folded only
after a dot), every number and header word whole, and what the layout left out named under the table."""

import re

import pytest
import torch
from rich.console import Console
from torch import nn

import qsim_hooks as qh
from qsim_hooks import report, stats
from qsim_hooks.report_layout import FittedTable, Parts, render_text
from qsim_hooks.table_text import GAP, Column, _tokens, fit


@pytest.fixture(autouse=True)
def _eager(eager_kernels):
    yield


def rendered(renderable, width):
    con = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    con.print(renderable)
    return con.export_text()


def whole(token, text):
    """``token`` appears in ``text`` with white space (or a line's end) on both sides."""
    return re.search(r"(?<!\S)" + re.escape(token) + r"(?!\S)", text) is not None


def check_fitted(table: FittedTable, width: int) -> str:
    """Render ``table`` at ``width`` and check it (see the module docstring); returns the text."""
    text = rendered(table, width)
    lines = text.splitlines()
    assert all(len(ln) <= width for ln in lines), [ln for ln in lines if len(ln) > width]
    lay = table.layout(width)
    notes = table.notes(lay)
    if notes:  # the caption lines under the table, as rich wraps them
        tail = render_text("\n".join(notes), width)
        assert text.endswith(tail)
        body = text[: len(text) - len(tail)]
    else:
        body = text
    if lay is None:  # vertical: every value whole, every header named
        for r in table.cells:
            for c, v in zip(table.columns, r):
                for piece, _ in _tokens(v, "dots" if c.wrap_mode != "never" else "never"):
                    assert piece in body, (c.key, v)
        return text
    for i in lay.constant:
        assert f"{table.columns[i].title}: {table.cells[0][i]} in every row" in text
    for i in lay.dropped:
        assert table.columns[i].title in notes[-1]
    assert set(lay.columns) | set(lay.constant) | set(lay.dropped) == set(range(len(table.columns)))
    offsets = [sum(lay.widths[:j]) + GAP * j for j in range(len(lay.columns))]
    rule = next(k for k, ln in enumerate(body.splitlines()) if ln.startswith("─"))
    head = "\n".join(body.splitlines()[:rule])
    rows = body.splitlines()[rule + 1:]
    for j, i in enumerate(lay.columns):
        c = table.columns[i]
        header = c.short if lay.short and c.short else c.header
        for word in header.split():
            assert whole(word, head), (word, head)
        values = [r[i] for r in table.cells]
        frags = [ln[offsets[j]:offsets[j] + lay.widths[j]].strip() for ln in rows]
        frags = [f for f in frags if f]
        _check_column(values, frags, c.wrap_mode if (c.wrap_mode != "dots" or lay.fold) else "never")
    return text


def _check_column(values, frags, mode):
    """The fragments of one column, top to bottom, are its values cut only where ``mode`` lets them break."""
    k = 0
    for v in values:
        if mode == "never":
            assert frags[k] == v, (frags[k], v)
            k += 1
            continue
        pieces = [p for p, _ in _tokens(v, mode)]
        got, flat = [], []
        while len(flat) < len(pieces) and k < len(frags):
            got.append(frags[k])
            flat += [p for p, _ in _tokens(frags[k], mode)]
            k += 1
        assert flat == pieces, (v, got)  # every line holds whole pieces, in order


# ---------------------------------------------------------------------------
# the tables of real models
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval(), torch.randn(2, 3, 32, 32)


CFG = qh.QuantConfig(input="int8", weight="int4", output="fp16",
                     rules=[qh.Rule(match="layer4.*", weight="e4m3"),
                            qh.Rule(types=nn.Linear, weight_scaling="channel")])


def _named(**children):
    m = nn.Module()
    for k, v in children.items():
        m.add_module(k, v)
    return m


def long_names():
    """A BERT-shaped stack (encoder.layer.N.attention.self.query ...): names up to 37 characters."""
    torch.manual_seed(0)

    def layer():
        return _named(attention=_named(self=_named(query=nn.Linear(8, 8), key=nn.Linear(8, 8)),
                                       output=_named(dense=nn.Linear(8, 8))),
                      intermediate=_named(dense=nn.Linear(8, 16)), output=_named(dense=nn.Linear(16, 8)))

    class Bertish(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _named(layer=nn.ModuleList([layer() for _ in range(2)]))

        def forward(self, x):
            for lay in self.encoder.layer:
                a = lay.attention
                x = a.output.dense(a.self.query(x) + a.self.key(x))
                x = lay.output.dense(torch.relu(lay.intermediate.dense(x)))
            return x

    return Bertish().eval(), torch.randn(4, 8)


@pytest.mark.parametrize("width", [80, 200])
def test_the_report_of_resnet18(resnet18, width):
    m, x = resnet18
    res = qh.compare(m, CFG, x)
    table = report.stats_table(res.stats)
    text = check_fitted(table, width)
    names = {r["module"] for r in res.stats}
    assert len(names) == 21 and all(whole(n, text) for n in names)  # never folded at these widths
    lay = table.layout(width)
    if width == 200:  # room for everything, one line per row
        assert not lay.dropped and not lay.constant and not lay.short
        assert len(text.splitlines()) == len(res.stats) + 3  # title, header, rule, rows, nothing else
    compare_text = rendered(report.compare_renderable(res), width)
    assert all(len(ln) <= width for ln in compare_text.splitlines())
    for part in report.compare_parts(res):
        assert part in compare_text.replace("\n", " ")  # the summary breaks between its figures only


@pytest.mark.parametrize("width", [80, 200])
def test_the_plan_of_resnet18(resnet18, width):
    m, _ = resnet18
    p = qh.plan(m, CFG)
    text = check_fitted(report.plan_table(p), width)
    assert all(whole(e.module, text) for e in p)
    assert whole("cfg+rule[1]", text)  # the fc weight: int4 from cfg, channel scaling from rule[1]


@pytest.mark.parametrize("width", [80, 200, 44])
def test_long_names_fold_only_at_dots(width):
    m, x = long_names()
    res = qh.compare(m, qh.QuantConfig(input="int8", weight="mxfp4", output="bf16"), x)
    table = report.stats_table(res.stats)
    text = check_fitted(table, width)
    lay = table.layout(width)
    if width >= 80:
        assert all(whole(r["module"], text) for r in res.stats) and not lay.fold
    else:
        assert lay.fold  # 37-character names in 44 columns: folded after a dot, checked piece by piece
        assert "encoder.layer.0.attention.self.query"[:16] not in text.replace("encoder.layer.0.", "")


def test_a_very_narrow_console_gets_one_block_per_row():
    m, x = long_names()
    res = qh.compare(m, qh.QuantConfig(input="int8", weight="int4"), x)
    table = report.stats_table(res.stats, top=3, sort="sqnr")
    assert table.layout(24) is None
    text = check_fitted(table, 24)
    assert "SQNR dB:" in text and all(len(ln) <= 24 for ln in text.splitlines())


@pytest.mark.parametrize("width", [80, 200])
def test_sweep_sensitivity_formats_calibration(resnet18, width):
    m, x = resnet18
    sw = qh.sweep(m, qh.QuantConfig(output="fp16"), ["e4m3", "int8", "mxfp4", "nvfp4"], x, progress=False)
    check_fitted(report.sweep_table(sw.rows), width)
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    xs = torch.randn(2, 3, 32, 32)
    for mode in ("one", "all-but-one"):
        sens = qh.sensitivity(small, qh.QuantConfig(input="int4", weight="int4"), xs, mode=mode, progress=False)
        check_fitted(report.sensitivity_table(sens.rows), width)
    rows = stats.format_rows(samples=4096)
    text = check_fitted(report.formats_table(rows, caption=report.formats_caption(4096, 0)), width)
    assert all(whole(r["name"], text) for r in rows)
    cal = qh.calibrate(m, qh.QuantConfig(input="int8", weight=qh.IntFormat(8, scaling=qh.Scaling("channel"))),
                       [x], method="percentile", progress=False)
    text = check_fitted(report.calibration_table(cal), width)
    assert re.search(r"\d\.\.\d\S* \(64\)", text)  # a per-channel amax: min..max (channels), on one line


def test_short_headers_come_with_a_legend():
    cols = (Column("name", "name", justify="left", priority=0),
            Column("a", "a rather long header", short="long", priority=0),
            Column("b", "another header", priority=1))
    rows = [{"name": f"n{i}", "a": 1000 + i, "b": i} for i in range(3)]
    t = FittedTable(rows, cols)
    lay = t.layout(20)
    assert lay is not None and lay.short and lay.columns == (0, 1, 2)  # "another header" wraps
    text = check_fitted(t, 20)
    assert "long = a rather long header" in text.replace("\n", " ")


def test_parts_break_only_between_pieces():
    parts = ["output SQNR 22.94 dB", "max |error| 0.2188", "top-1 agreement 100.00% (8 of 8)"]
    text = rendered(Parts(parts), 34)
    assert [ln.rstrip(";").strip() for ln in text.splitlines()] == parts
    assert str(Parts(parts)) == "; ".join(parts)


def test_fit_prefers_one_line_rows_over_keeping_a_constant_column():
    cols = (Column("name", "name", justify="left", priority=0), Column("k", "kind", justify="left", priority=3),
            Column("v", "value", priority=0))
    rows = [{"name": "x" * 10, "k": "same", "v": i} for i in range(4)]
    cells = [[c.write(r.get(c.key)) for c in cols] for r in rows]
    assert fit(cols, cells, 40).constant == ()
    assert fit(cols, cells, 18).constant == (1,)  # 10 + 2 + 5 (value): the kind moves to the caption


# ---------------------------------------------------------------------------
# str(plan): the same layouts as plain text, built without rich (planning imports no renderer)
# ---------------------------------------------------------------------------
def check_plain(rows, columns, width) -> str:
    """``table_text.plain_table`` at ``width``, checked as :func:`check_fitted` checks rich's drawing."""
    from qsim_hooks.table_text import plain_table, wrap

    text = plain_table(rows, columns, width)
    lines = text.splitlines()
    assert all(len(ln) <= width for ln in lines) and "\x1b" not in text
    cells = [[c.write(r.get(c.key)) for c in columns] for r in rows]
    lay = fit(columns, cells, width)
    assert lay is not None
    head = max(len(wrap(columns[i].short if lay.short and columns[i].short else columns[i].header, w, "words"))
               for i, w in zip(lay.columns, lay.widths))
    below = [ln for note in FittedTable(rows, columns).notes(lay) for ln in wrap(note, width, "words")]
    assert lines[len(lines) - len(below):] == below  # the caption's lines, wrapped at spaces
    body = lines[head:len(lines) - len(below)]
    offsets = [sum(lay.widths[:j]) + GAP * j for j in range(len(lay.columns))]
    for j, i in enumerate(lay.columns):
        c = columns[i]
        frags = [f for f in (ln[offsets[j]:offsets[j] + lay.widths[j]].strip() for ln in body) if f]
        _check_column([r[i] for r in cells], frags, c.wrap_mode if (c.wrap_mode != "dots" or lay.fold) else "never")
    return text


@pytest.mark.parametrize("width", [80, 200])
def test_str_of_the_plan_of_resnet18_fits_without_rich(resnet18, width):
    from qsim_hooks.planning import PLAN_TABLE_COLUMNS

    m, _ = resnet18
    p = qh.plan(m, CFG)
    text = check_plain(p.to_rows(), PLAN_TABLE_COLUMNS, width)
    assert p.text(width) == text
    assert all(whole(e.module, text) for e in p) and whole("cfg+rule[1]", text)
    assert report.plan_table(p).layout(width) == FittedTable(p.to_rows(), PLAN_TABLE_COLUMNS).layout(width)
    con = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    con.print(p)  # a rich console shows the same columns for its own width
    assert con.export_text().rstrip("\n") == text


def test_str_of_a_plan_with_long_names_folds_at_dots_or_goes_vertical():
    from qsim_hooks.planning import PLAN_TABLE_COLUMNS

    m, _ = long_names()
    p = qh.plan(m, qh.QuantConfig(input="int8", weight="mxfp4"))
    check_plain(p.to_rows(), PLAN_TABLE_COLUMNS, 44)
    narrow = p.text(20)  # no layout of columns fits: one block per point
    assert all(len(ln) <= 20 for ln in narrow.splitlines()) and "decided_by:" in narrow


def test_planning_imports_no_renderer():
    """planning -> table_text (no rich) -> report_values: the plan's text needs neither report nor rich's tables."""
    import ast
    from pathlib import Path

    def imports(module):
        tree = ast.parse(Path(module.__file__).read_text())
        return {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}

    from qsim_hooks import planning, table_text

    assert "report" not in imports(planning) and "report_layout" not in imports(planning)
    assert "table_text" in imports(planning)
    assert not [m for m in imports(table_text) if m.startswith("rich") or m.startswith("report")
                and m != "report_values"]


def test_a_heading_line_breaks_between_its_parts():
    line = "torchvision resnet18 (random weights, seed 0); 1 synthetic N(0,1) batch of 8 x 3 x 64 x 64"
    con = Console(width=80, record=True, color_system=None, file=open("/dev/null", "w"))
    report.render_heading("qsim-hooks report: resnet18", [line, "simulation: input e4m3"], con)
    assert con.export_text().splitlines() == [
        "qsim-hooks report: resnet18", "torchvision resnet18 (random weights, seed 0);",
        "1 synthetic N(0,1) batch of 8 x 3 x 64 x 64", "simulation: input e4m3", ""]
