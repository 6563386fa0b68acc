"""Graphormer's attention under qsim-hooks, run with transformers 4.57 (``.venv-tf457``; transformers 5 removed it).

Run by tests/attention/test_graphormer.py as ``.venv-tf457/bin/python tools/graphormer_check.py``; prints one
JSON line with the measurements and exits non-zero (an AssertionError) when a check fails:

  (a) the plan finds GraphormerMultiheadAttention (a leaf) in every encoder layer, nothing else as attention;
  (b) the six points at the identity format fp32 reproduce the un-instrumented model bit for bit (its
      attention is eager: torch.bmm, a += of the graph bias, masked_fill of padded keys, softmax, torch.bmm);
  (c) every point of every attention module fired;
  (d) a real format changes the result, and the ``scores`` point is the raw bmm (before the graph bias);
  (e) after exit the model is unchanged and no torch function mode is left.

The graphs are synthetic but preprocessed as GraphormerDataCollator does (its Cython floyd_warshall and
gen_edge_input, re-written in NumPy in examples/graphormer/run.py),
two graphs of different sizes so the batch is padded.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import transformers  # noqa: E402

import qsim_hooks as qh  # noqa: E402
from examples.graphormer.run import floyd_warshall, gen_edge_input  # noqa: E402  (GraphormerDataCollator in NumPy)
from tests.core.model_check import snapshot, verify_unchanged  # noqa: E402

POINTS = ("q", "k", "scores", "probs", "v", "context")


def _graph(num_nodes: int, edge_index: np.ndarray, rng: np.random.Generator) -> dict:
    """GraphormerDataCollator's preprocess_item for one graph (node and edge features: 2 and 1 ints)."""
    node_feat = rng.integers(0, 8, (num_nodes, 2))
    edge_attr = rng.integers(0, 3, (edge_index.shape[1], 1))
    single = lambda x, offset=512: x + 1 + np.arange(0, x.shape[1] * offset, offset)  # convert_to_single_emb
    attn_edge_type = np.zeros((num_nodes, num_nodes, 1), dtype=np.int64)
    attn_edge_type[edge_index[0], edge_index[1]] = single(edge_attr) + 1
    adj = np.zeros((num_nodes, num_nodes), dtype=bool)
    adj[edge_index[0], edge_index[1]] = True
    dist, path = floyd_warshall(adj)
    return {"input_nodes": single(node_feat) + 1 + 1, "attn_bias": np.zeros((num_nodes + 1,) * 2, np.float32),
            "attn_edge_type": attn_edge_type, "spatial_pos": dist + 1, "in_degree": adj.sum(1) + 1,
            "input_edges": gen_edge_input(int(dist.max()), path, attn_edge_type) + 1}


def _collate(items: list[dict]) -> dict:
    """GraphormerDataCollator.__call__ (zero padding) without labels."""
    n = max(len(i["input_nodes"]) for i in items)
    d = max(i["input_edges"].shape[2] for i in items)
    b = len(items)
    batch = {"attn_bias": torch.zeros(b, n + 1, n + 1), "attn_edge_type": torch.zeros(b, n, n, 1, dtype=torch.long),
             "spatial_pos": torch.zeros(b, n, n, dtype=torch.long), "in_degree": torch.zeros(b, n, dtype=torch.long),
             "input_nodes": torch.zeros(b, n, 2, dtype=torch.long),
             "input_edges": torch.zeros(b, n, n, d, 1, dtype=torch.long)}
    for ix, f in enumerate(items):
        for k, t in batch.items():
            v = torch.as_tensor(f[k])
            t[(ix, *(slice(0, s) for s in v.shape))] = v
    batch["out_degree"] = batch["in_degree"]
    return batch


def _inputs() -> dict:
    rng = np.random.default_rng(0)
    ring = np.array([[0, 1, 2, 3, 1, 2, 3, 0], [1, 2, 3, 0, 0, 1, 2, 3]])  # 4 nodes, undirected ring
    chain = np.array([[0, 1, 2, 3, 4, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0, 1, 2, 3, 4]])  # 6 nodes, a path
    return _collate([_graph(4, ring, rng), _graph(6, chain, rng)])


def _model() -> torch.nn.Module:
    from transformers import GraphormerConfig, GraphormerForGraphClassification

    torch.manual_seed(0)
    cfg = GraphormerConfig(num_classes=3, num_atoms=512 * 2, num_edges=64, num_in_degree=16, num_out_degree=16,
                           num_spatial=16, num_edge_dis=16, multi_hop_max_dist=5, max_nodes=16,
                           num_hidden_layers=2, embedding_dim=16, ffn_embedding_dim=32, num_attention_heads=2,
                           dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return GraphormerForGraphClassification(cfg).eval()


def _run(m: torch.nn.Module, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return m(**batch).logits


def main() -> dict:
    m, batch = _model(), _inputs()
    ref = _run(m, batch)
    assert ref.shape == (2, 3) and torch.isfinite(ref).all()
    names = {n for n, x in m.named_modules() if type(x).__name__ == "GraphormerMultiheadAttention"}
    assert len(names) == 2
    identity = qh.QuantConfig(rules=[qh.Rule(**{p: "fp32" for p in POINTS})])
    # (a)
    plan = qh.plan(m, identity)
    attn = {e.module: e.module_type for e in plan if e.point in POINTS}
    assert set(attn) == names and set(attn.values()) == {"GraphormerMultiheadAttention"}, attn
    # (b) (c) (e)
    snap = snapshot(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with qh.quantized(m, identity, stats=True) as qs:
            got = _run(m, batch)
    verify_unchanged(m, snap)
    assert torch._C._len_torch_function_stack() == 0
    assert torch.equal(got, ref), (got - ref).abs().max().item()
    calls = {(r["module"], r["point"]): r["calls"] for r in qs.stats() if r["point"] in POINTS}
    assert set(calls) == {(n, p) for n in names for p in POINTS} and all(c == 1 for c in calls.values()), calls
    # (d) a real format, and the scores point sees the raw q·kᵀ (graph bias and padding mask come after it)
    with qh.quantized(m, qh.QuantConfig(input="e4m3", output="fp16")):
        full = _run(m, batch)
    with qh.quantized(m, qh.QuantConfig(rules=[qh.Rule(k="e4m3", v="e4m3")])):
        kv = _run(m, batch)
    with qh.quantized(m, qh.QuantConfig(rules=[qh.Rule(scores="e4m3")]), stats=True) as qs:
        _run(m, batch)
    verify_unchanged(m, snap)
    assert torch._C._len_torch_function_stack() == 0
    scale = ref.abs().max().item()
    full_rel, kv_rel = (full - ref).abs().max().item() / scale, (kv - ref).abs().max().item() / scale
    assert torch.isfinite(full).all() and full_rel > 1e-3 and kv_rel > 0
    amax = [r["amax"] for r in qs.stats()]
    assert all(a is not None and np.isfinite(a) for a in amax), amax  # -inf padding is added after the point
    return {"transformers": transformers.__version__, "torch": torch.__version__,
            "attention_modules": sorted(names), "identity_bit_identical": True,
            "full_e4m3_rel": full_rel, "kv_e4m3_rel": kv_rel}


if __name__ == "__main__":
    print(json.dumps(main()))
