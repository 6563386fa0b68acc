"""The family examples' task metrics, as their reference implementations compute them.

Perplexity (``run_clm``'s evaluation and the sliding-window recipe), HumanEval's pass/fail by running a
program in a fresh interpreter, mIoU (mmseg's accumulation), torchmetrics' CLIP score, ROC-AUC by the rank
statistic. Each is checked against a hand computation or an independent library in
``tests/examples/test_metrics.py``; :mod:`examples.common` re-exports them.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["perplexity", "run_program", "IoU", "clip_score", "roc_auc"]


def perplexity(model: Any, ids: Any, *, seq_len: int, stride: int | None = None, device: Any = None) -> float:
    """exp(mean token NLL) of a causal LM over ``ids`` (1-D), in windows of ``seq_len`` tokens.

    ``stride=None`` (or ``== seq_len``): non-overlapping blocks (``run_clm``'s evaluation, INT-FP-QSim's);
    a smaller stride slides the window and scores only the tokens not scored before (the Hugging Face
    "perplexity of fixed-length models" recipe).
    """
    import torch

    stride = seq_len if stride is None else stride
    if not 0 < stride <= seq_len:
        raise ValueError(f"stride={stride} must be in [1, seq_len={seq_len}]")
    ids = ids.reshape(-1)
    n = ids.numel()
    if n < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, n, stride):
        end = min(begin + seq_len, n)
        target_len = end - prev_end  # tokens not scored by an earlier window
        window = ids[begin:end].unsqueeze(0).to(device)
        logits = model(input_ids=window).logits[0].float()
        # position i predicts token i+1; score only the last target_len tokens of the window
        logp = torch.log_softmax(logits[:-1], dim=-1)
        tgt = window[0, 1:]
        tok_nll = -logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
        k = min(target_len, tok_nll.numel())
        nll += float(tok_nll[-k:].sum()) if k else 0.0
        count += k
        prev_end = end
        if end == n:
            break
    return math.exp(nll / count)


def run_program(program: str, timeout: float = 10.0) -> tuple[bool, str]:
    """Execute ``program`` in a fresh Python subprocess (own temp dir, isolated mode) -> (passed, reason)."""
    with tempfile.TemporaryDirectory(prefix="qsim-exec-") as d:
        path = Path(d) / "program.py"
        path.write_text(program)
        try:
            res = subprocess.run([sys.executable, "-I", str(path)], cwd=d, capture_output=True, text=True,
                                 timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:g} s"
    if res.returncode == 0:
        return True, "passed"
    last = (res.stderr.strip().splitlines() or [f"exit code {res.returncode}"])[-1]
    return False, last[:200]


class IoU:
    """Intersection and union per class, accumulated over images (mIoU as in mmseg / MIT's semseg code)."""

    def __init__(self, num_classes: int, ignore_index: int = -1) -> None:
        import numpy as np

        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)
        self.correct = 0
        self.labelled = 0

    def update(self, pred: Any, label: Any) -> None:
        import numpy as np

        pred = np.asarray(pred).astype(np.int64).reshape(-1)
        label = np.asarray(label).astype(np.int64).reshape(-1)
        if pred.shape != label.shape:
            raise ValueError(f"prediction has {pred.size} pixels, the label {label.size}")
        keep = (label != self.ignore_index) & (label >= 0) & (label < self.num_classes)
        p, t = pred[keep], label[keep]
        c = self.num_classes
        inter = np.bincount(t[p == t], minlength=c)[:c]
        area_p = np.bincount(p[(p >= 0) & (p < c)], minlength=c)[:c]
        area_t = np.bincount(t, minlength=c)[:c]
        self.intersection += inter
        self.union += area_p + area_t - inter
        self.correct += int((p == t).sum())
        self.labelled += int(t.size)

    def miou(self) -> float:
        """Mean IoU over the classes present in the labels or the predictions (union > 0)."""
        present = self.union > 0
        if not present.any():
            return math.nan
        return float((self.intersection[present] / self.union[present]).mean())

    def pixel_accuracy(self) -> float:
        return self.correct / self.labelled if self.labelled else math.nan


def clip_score(image_embeds: Any, text_embeds: Any) -> Any:
    """torchmetrics' CLIP score per pair: ``100 * max(cos(image, text), 0)``."""
    import torch.nn.functional as F

    cos = F.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return 100.0 * cos.clamp(min=0)


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (ogbg-molhiv's metric) by the rank statistic; ties get half credit."""
    pairs = sorted(zip(scores, labels))
    pos = sum(1 for _, y in pairs if y)
    neg = len(pairs) - pos
    if pos == 0 or neg == 0:
        return math.nan
    # average ranks over ties
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j + 1 < len(pairs) and pairs[j + 1][0] == pairs[i][0]:
            j += 1
        avg = (i + j) / 2 + 1
        rank_sum += avg * sum(1 for k in range(i, j + 1) if pairs[k][1])
        i = j + 1
    return (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
