"""The digits CNN's accumulator table: test accuracy when the sums inside every GEMM are rounded.

Operands: E4M3 with a per-tensor scale (the table's ``e4m3`` row) for the float accumulators: FP8 GEMMs are
where the accumulator is the open question (Hopper's FP8 tensor cores keep about 14 bits, fp16 accumulation
is a speed trick); INT8 per-tensor inputs and weights for the integer ones (int8 engines accumulate in
int16 or int32). Every layer's inputs and weights, as in the accuracy table.

Promotion: the reduction lengths are K = 9 (conv1: 1 channel x 3x3), 72 (conv2: 8 x 3x3), 64 (fc1) and 32
(fc2), all below the usual 128, so a chunk of 128 would never promote; a chunk of :data:`CHUNK` = 8 gives
2, 9, 8 and 4 chunks, each summed in the accumulator and added into an fp32 total.

INT8 codes are at most 127 in magnitude (symmetric): a partial sum is at most 72 x 127 x 127 = 1,161,288 <
2**31 - 1, so int32 cannot overflow on this model; int16 (at most 32,767) can after three large products.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from qsim_hooks import QuantConfig

from .. import accumulation
from ..evaluations import pinned
from . import digits

__all__ = ["CHUNK", "AccumulatorResult", "run", "render"]

#: products per chunk before a promotion into fp32 (every layer's K is at most 72)
CHUNK = 8


@dataclass
class AccumulatorResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list, repr=False)  # the logits of each row (tests)
    chunk: int = CHUNK
    seconds: float = 0.0


def run(settings: digits.Settings | None = None, chunk: int = CHUNK) -> AccumulatorResult:
    """Train the CNN as :func:`digits.run` does (same seed, same model), then the table's rows. No output."""
    s = settings or digits.Settings()
    t0 = time.perf_counter()
    with pinned(s.backend, s.threads):
        xtr, ytr, xte, yte = digits.load_data(s.seed, s.test_size)
        model = digits.make_model(s.seed)
        digits.train(model, xtr, ytr, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size, seed=s.seed)
        e4m3 = digits.build_format("e4m3")
        operands = {"e4m3": (QuantConfig(input=e4m3, weight=e4m3), accumulation.float_accumulators(chunk)),
                    "int8": (QuantConfig(input="int8", weight="int8"), accumulation.int_accumulators())}
        rows, outputs = accumulation.evaluate(model, operands, lambda m: accumulation.no_grad(m, xte),
                                              lambda logits: float((logits.argmax(-1) == yte).float().mean()))
    return AccumulatorResult(rows, outputs, chunk, time.perf_counter() - t0)


def render(result: AccumulatorResult, console: Any = None) -> None:
    """The accumulator table, then how long it took."""
    chunk = result.chunk
    accumulation.render(
        result.rows, console, title="Digits CNN: accumulators (sums inside every GEMM)", metric="accuracy\n%",
        fmt_metric=lambda v: f"{100 * v:.2f}",
        caption=f"e4m3: per-tensor scale. K = 9, 72, 64, 32: promotion every {chunk} products into fp32; int "
                "accumulators wrap. Output "
                "SQNR: logits against the exact-sum run of the same operands; sum SQNR: the worst layer's "
                "simulated sums against its exact fp32 GEMM", seconds=result.seconds)
