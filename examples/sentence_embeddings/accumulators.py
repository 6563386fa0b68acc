"""all-MiniLM-L6-v2's accumulator table: embedding similarity when the sums inside every GEMM are rounded.

Operands: the ``e4m3`` configuration of the embeddings table (every Linear's input and weight, and the
attention's q, k, probs, v, cast to E4M3) for the float accumulators, FP8 GEMMs being where the accumulator
is the open question; the ``int8`` configuration (weights per output channel, inputs per tensor: both
scales factor out of the sum) for int32 and int16 accumulators. Every GEMM runs through the accumulator:
the Linears and attention's Q·Kᵀ and P·V.

Promotion: the Linears reduce over K = 384 (q, k, v, attention output, FFN up) and 1536 (FFN down): a chunk
of :data:`CHUNK` = 128 gives 3 and 12 chunks added into an fp32 total. Attention reduces over the head size
(32) and the sequence (at most 15 tokens here): one chunk, so promotion changes nothing there.

INT8 codes are at most 127 in magnitude: a partial sum is at most 1536 x 127 x 127 = 24,774,144 < 2**31 - 1,
so int32 cannot overflow; int16 (32,767) can after three large products.

The sentences are :data:`PER_TOPIC` per topic of the table's set (fewer than its 80: the simulated sums run
one product at a time, which costs tens of seconds per accumulator on the whole set).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from qsim_hooks.accumulate import Accumulator

from .. import accumulation
from ..evaluations import pinned
from . import sentences as se

__all__ = ["CHUNK", "PER_TOPIC", "AccumulatorResult", "run", "render"]

#: products per chunk before a promotion into fp32
CHUNK = 128
#: sentences per topic (one: 8 sentences, about 100 tokens)
PER_TOPIC = 1


@dataclass
class AccumulatorResult:
    sentences: int
    tokens: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list, repr=False)  # the embeddings of each row (tests)
    chunk: int = CHUNK
    seconds: float = 0.0


def run(per_topic: int = PER_TOPIC, chunk: int = CHUNK, path: Path | None = None, threads: int | None = 1,
        accumulators: Mapping[str, Sequence[Accumulator]] | None = None) -> AccumulatorResult:
    """The table's rows: the first ``per_topic`` sentences of each topic. ``accumulators``: configuration name
    (of ``sentences.CONFIGS``) -> accumulators, instead of the table's. No output; raises
    :class:`sentences.ModelUnavailable` when the model cannot be loaded."""
    t0 = time.perf_counter()
    with pinned("eager", threads):
        tok, model = se.load(path)
        texts = [s for t in se.TOPICS for s in [x for tp, x in se.SENTENCES if tp == t][:per_topic]]
        enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        ref = se.embed(model, enc)
        kinds = accumulators or {"e4m3": accumulation.float_accumulators(chunk),
                                 "int8": accumulation.int_accumulators()}
        operands = {n: (se.CONFIGS[n][2](), list(accs)) for n, accs in kinds.items()}
        rows, outputs = accumulation.evaluate(model, operands, lambda m: se.embed(m, enc),
                                              lambda e: float((e * ref).sum(-1).mean()))
    return AccumulatorResult(len(texts), int(enc["attention_mask"].sum()), rows, outputs, chunk,
                             time.perf_counter() - t0)


def render(result: AccumulatorResult, console: Any = None) -> None:
    """The accumulator table, then how long it took."""
    accumulation.render(
        result.rows, console, title="all-MiniLM-L6-v2: accumulators (sums inside every GEMM)",
        metric="cosine vs\nfp, mean", fmt_metric=lambda v: f"{v:.5f}",
        caption=f"{result.sentences} sentences ({result.tokens} tokens). e4m3: casts; int8: weights per channel, "
                f"inputs per tensor. Linears' K = 384, 1536: promotion every {result.chunk} products into fp32; "
                "attention's K <= 32: one chunk. Output SQNR: embeddings against the exact-sum run of the same "
                "operands; sum SQNR: the worst GEMM's sums against its exact fp32 GEMM", seconds=result.seconds)
