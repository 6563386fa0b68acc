"""examples/tiny_lm: metrics by hand, the data split, the weight cache and its key, a smoke run."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import pytest
import torch

import qsim_hooks as qh
from examples.tiny_lm import data as D
from examples.tiny_lm import evaluate as E
from examples.tiny_lm import run as cli
from examples.tiny_lm import train as T

TINY = dataclasses.replace(T.SMOKE_SPEC, steps=3)


class _FixedLM(torch.nn.Module):
    """Logits that depend only on the position's token: log-probabilities known in closed form."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table  # (vocab, vocab): row = current token, logits of the next

    def forward(self, input_ids):
        return type("Out", (), {"logits": self.table[input_ids]})()


# --- metrics against hand-computed values --------------------------------------------------------------
def test_perplexity_by_hand():
    table = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    batch = torch.tensor([[0, 2, 1, 0], [1, 1, 2, 2]])
    logp = torch.log_softmax(table.double(), dim=-1)
    pairs = [(0, 2), (2, 1), (1, 0), (1, 1), (1, 2), (2, 2)]  # (current, next); each row's first is not predicted
    expected = math.exp(-sum(float(logp[a, b]) for a, b in pairs) / len(pairs))
    assert E.perplexity(_FixedLM(table), batch) == pytest.approx(expected, rel=1e-12)
    uniform = _FixedLM(torch.zeros(256, 256))
    assert E.perplexity(uniform, torch.randint(0, 256, (3, 9))) == pytest.approx(256.0)


def test_generation_match_counts_up_to_the_first_difference():
    ref = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, 8]])
    sim = torch.tensor([[1, 2, 3, 4], [1, 9, 3, 4], [0, 6, 7, 8]])
    assert E.generation_match(ref, sim) == [4, 1, 0]


def test_windows():
    ids = torch.arange(10)
    assert E.windows(ids, 4, 5).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert E.windows(ids, 3, 1).tolist() == [[0, 1, 2]]
    with pytest.raises(ValueError, match="fewer than one window"):
        E.windows(ids, 11, 1)


# --- data ------------------------------------------------------------------------------------------------
def test_bytes_round_trip_and_the_split():
    text = "Beautiful is better than ugly — 100%."
    assert D.decode(D.encode(text)) == text and int(D.encode(text).max()) < D.VOCAB
    docs = ["a" * 50, "b" * 5, "c" * 40, "d" * 4, "e" * 100]
    train, held = D.split_documents(docs, 0.1)  # held out while held <= 10% of the bytes so far: 5 <= 5.5, 9 <= 9.9
    assert held == ["b" * 5, "d" * 4] and train == ["a" * 50, "c" * 40, "e" * 100]
    corpus = D.load_corpus()
    share = len(corpus.held_out) / (len(corpus.held_out) + len(corpus.train))
    assert 0.05 < share <= 0.1 + 1e-3 and corpus.held_out_documents >= 10
    assert D.decode(corpus.held_out[:2000]) not in D.decode(corpus.train)  # whole documents the model never sees
    ids = D.encode("Intro\n\nFirst para.\n\n  code\n\nSecond.")
    assert [D.decode(ids[i:i + 3]) for i in D.paragraph_starts(ids)] == ["Fir", "Sec"]


# --- the cache of trained weights -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_corpus():
    return D.load_corpus(max_bytes=4096)


def test_version_key_changes_with_what_the_weights_depend_on(small_corpus):
    key = T.version_key(TINY, small_corpus)
    assert key == T.version_key(dataclasses.replace(TINY), small_corpus) and len(key) == 16
    for change in ({"steps": 4}, {"lr": 1e-3}, {"hidden": 48}, {"seed": 1}, {"threads": 1}):
        assert T.version_key(dataclasses.replace(TINY, **change), small_corpus) != key, change
    other_text = dataclasses.replace(small_corpus, train=small_corpus.train.flip(0))
    assert T.version_key(TINY, other_text) != key


def test_cache_trains_once_then_loads(tmp_path, small_corpus):
    first = T.load_or_train(TINY, small_corpus, cache_dir=tmp_path, progress=False)
    assert not first.cached and first.note is None and (tmp_path / first.key / "weights.pt").is_file()
    meta = json.loads((tmp_path / first.key / "meta.json").read_text())
    assert meta["key"] == first.key and meta["spec"] == dataclasses.asdict(TINY)
    second = T.load_or_train(TINY, small_corpus, cache_dir=tmp_path, progress=False)
    assert second.cached and second.final_loss == first.final_loss
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)
    retrained = T.load_or_train(TINY, small_corpus, cache_dir=tmp_path / "elsewhere", progress=False)
    for a, b in zip(first.model.state_dict().values(), retrained.model.state_dict().values()):
        assert torch.equal(a, b)  # the same seed trains the same weights


@pytest.mark.parametrize("damage", ["truncated weights", "foreign meta key", "other architecture", "garbage meta"])
def test_a_bad_cache_entry_is_retrained_not_an_error(tmp_path, small_corpus, damage):
    good = T.load_or_train(TINY, small_corpus, cache_dir=tmp_path, progress=False)
    folder = tmp_path / good.key
    if damage == "truncated weights":
        (folder / "weights.pt").write_bytes((folder / "weights.pt").read_bytes()[:100])
    elif damage == "foreign meta key":
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "key": "0" * 16}))
    elif damage == "other architecture":
        torch.save(T.build_model(dataclasses.replace(TINY, hidden=48)).state_dict(), folder / "weights.pt")
    else:
        (folder / "meta.json").write_text("{not json")
    again = T.load_or_train(TINY, small_corpus, cache_dir=tmp_path, progress=False)
    assert not again.cached and "unusable" in again.note and "retrained" in again.note
    assert T.load_or_train(TINY, small_corpus, cache_dir=tmp_path, progress=False).cached  # repaired


def test_an_unwritable_cache_only_costs_the_caching(tmp_path, small_corpus):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    got = T.load_or_train(TINY, small_corpus, cache_dir=blocker, progress=False)
    assert got.path is None and "could not cache" in got.note and not got.cached


# --- the evaluation in smoke mode (a tiny model trained on a few KB of the real text) -------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    cache = tmp_path_factory.mktemp("tiny_lm_cache")
    return E.run(E.Settings(smoke=True, cache_dir=str(cache), progress=False,
                            configs=("e4m3", "int8-static", "nvfp4", "kv-int8", "kv-int4", "attn-e4m3")))


def test_smoke_figures_are_sane(smoke):
    r = smoke
    assert r.fp["sdpa"] < 256 / 4  # far below the uniform byte baseline after a few dozen steps on real text
    assert r.fp["eager"] == pytest.approx(r.fp["sdpa"], rel=1e-5)
    assert [x["config"] for x in r.rows] == ["e4m3", "int8-static", "nvfp4", "kv-int8", "kv-int4", "attn-e4m3"]
    for row in r.rows:
        assert set(row["ppl"]) == {"sdpa", "eager"} and all(math.isfinite(v) and v > 1 for v in row["ppl"].values())
        # the library decomposes SDPA into eager attention's operations: the two agree closely when quantized too
        assert row["ppl"]["eager"] == pytest.approx(row["ppl"]["sdpa"], rel=1e-3)
        if row["kind"] == E.WA:  # generation is for the KV-cache and attention configurations
            assert row["gen_match"] is None
        else:
            assert 0.0 <= row["gen_match"] <= 1.0 and 0 <= row["gen_exact"] <= len(r.prompts)
    rows = {x["config"]: x for x in r.rows}
    assert rows["int8-static"]["calibrated_points"] > 0 and rows["kv-int8"]["calibrated_points"] is None
    assert r.worst in rows and r.report_rows
    if rows[r.worst]["kind"] == E.KV:
        assert {x["point"] for x in r.report_rows} <= {"k", "v"}
    assert r.restored is True and len(r.fp_generated) == len(r.prompts) == 2


def test_kv_config_quantizes_only_k_and_v():
    model = T.build_model(TINY).eval()
    cfg = E.CONFIGS["kv-int8"].build()
    with qh.quantized(model, cfg, stats=True) as qs:
        E.perplexity(model, torch.randint(0, 256, (2, 16)))
    assert {(x["point"], x["format"]) for x in qs.stats()} == {("k", "int8"), ("v", "int8")}


def test_missing_transformers_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(E.Unavailable, match=r"pip install 'transformers"):
        E.run(E.Settings(smoke=True, cache_dir=str(tmp_path), progress=False, configs=("e4m3",)))


def test_settings_are_checked():
    with pytest.raises(ValueError, match="Settings.configs"):
        E.Settings(configs=("e4m3", "fp7"))
    with pytest.raises(ValueError, match="Settings.implementations"):
        E.Settings(implementations=("flash",))
    with pytest.raises(ValueError, match="Settings.new_tokens"):
        E.Settings(new_tokens=0)


def test_smoke_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "lm.json"
    cli.main(["--smoke", "--configs", "kv-e4m3", "--implementations", "sdpa", "--cache-dir", str(tmp_path),
              "--json", str(out)])
    data = json.loads(out.read_text())
    assert [r["config"] for r in data["rows"]] == ["kv-e4m3"] and list(data["fp"]) == ["sdpa"]
    assert "held-out perplexity and greedy generation" in capsys.readouterr().out
