"""The examples' metric and data code against hand-computed or independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from examples import common
from examples.codegen import run as codegen
from examples.graphormer import run as graphormer
from examples.imagebind.model import MhaCLIP, TowerConfig, from_state_dict


class _FixedLM(torch.nn.Module):
    """Logits that depend only on the position: log-probabilities known in closed form."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids):
        b, n = input_ids.shape
        logits = torch.arange(self.vocab, dtype=torch.float32).expand(b, n, -1) * 0.1
        return type("Out", (), {"logits": logits})()


@pytest.mark.parametrize("seq_len, stride", [(4, None), (4, 2), (5, 1), (16, None)])
def test_perplexity_matches_hand_computation(seq_len, stride):
    vocab = 7
    ids = torch.tensor([3, 1, 4, 1, 5, 2, 6, 5, 3, 5])
    logp = torch.log_softmax(torch.arange(vocab, dtype=torch.float64) * 0.1, dim=0)
    # sliding windows score every token but the very first exactly once; non-overlapping blocks (run_clm's
    # evaluation) cannot score the first token of each block, it has no context there
    scored = [i for i in range(len(ids)) if (i % seq_len if stride is None else i) != 0]
    expected = math.exp(-float(logp[ids[scored]].mean()))
    assert common.perplexity(_FixedLM(vocab), ids, seq_len=seq_len, stride=stride) == pytest.approx(expected, rel=1e-6)


def test_iou_against_hand_counts():
    iou = common.IoU(num_classes=3, ignore_index=-1)
    label = np.array([[0, 0, 1], [1, 2, -1]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    iou.update(pred, label)
    # class 0: I=1, U=2; class 1: I=2, U=3; class 2: I=1, U=1 (the ignored pixel counts nowhere)
    assert iou.intersection.tolist() == [1, 2, 1] and iou.union.tolist() == [2, 3, 1]
    assert iou.miou() == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert iou.pixel_accuracy() == pytest.approx(4 / 5)


def test_iou_skips_absent_classes():
    iou = common.IoU(num_classes=5)
    iou.update(np.array([1, 1]), np.array([1, 1]))
    assert iou.miou() == 1.0


def test_roc_auc_against_scikit_learn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 40)
        s = np.round(rng.random(40), 1)  # ties
        assert common.roc_auc(s.tolist(), y.tolist()) == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(common.roc_auc([0.1, 0.2], [1, 1]))


def test_clip_score_is_torchmetrics_formula():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[1.0, 1.0], [-1.0, 0.0]])
    assert common.clip_score(a, b).tolist() == pytest.approx([100 / math.sqrt(2), 0.0])


def test_run_program_pass_fail_timeout():
    assert common.run_program("assert 1 + 1 == 2\n") == (True, "passed")
    ok, why = common.run_program("raise ValueError('boom')\n")
    assert not ok and "boom" in why
    ok, why = common.run_program("while True:\n    pass\n", timeout=1)
    assert not ok and "timed out" in why


def test_codegen_truncates_at_stop_sequences_and_checks():
    assert codegen.truncate("    return a\n\ndef other():\n    pass") == "    return a\n"
    assert codegen.truncate("    return a\n") == "    return a\n"
    for p in codegen.TOY_PROBLEMS:
        assert common.run_program(codegen.program(p, p["canonical_solution"]))[0]
        assert not common.run_program(codegen.program(p, "    return None\n"))[0]


def _naive_floyd_warshall(adj):
    n = adj.shape[0]
    m = np.where(adj, 1, graphormer.UNREACHABLE).astype(np.int64)
    np.fill_diagonal(m, 0)
    path = -np.ones((n, n), dtype=np.int64)
    for k in range(n):
        for i in range(n):
            for j in range(n):
                if m[i, j] > m[i, k] + m[k, j]:
                    m[i, j], path[i, j] = m[i, k] + m[k, j], k
    far = m >= graphormer.UNREACHABLE
    m[far], path[far] = graphormer.UNREACHABLE, graphormer.UNREACHABLE
    return m, path


@pytest.mark.parametrize("seed", range(4))
def test_floyd_warshall_matches_the_cython_algorithm(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    adj = rng.random((n, n)) < 0.25
    adj = adj | adj.T  # undirected, possibly disconnected
    dist, path = graphormer.floyd_warshall(adj)
    ref_dist, ref_path = _naive_floyd_warshall(adj)
    assert (dist == ref_dist).all() and (path == ref_path).all()


def test_graphormer_preprocess_and_collate():
    g = {"edge_index": [[0, 1, 1, 2], [1, 0, 2, 1]], "edge_attr": [[1, 0, 0], [1, 0, 0], [2, 1, 0], [2, 1, 0]],
         "node_feat": [[5, 0, 1, 0, 0, 0, 0, 0, 0]] * 3, "num_nodes": 3, "y": [1]}
    item = graphormer.preprocess_item(g)
    assert item["spatial_pos"].tolist() == [[1, 2, 3], [2, 1, 2], [3, 2, 1]]  # hops + 1
    assert item["in_degree"].tolist() == [2, 3, 2]
    assert item["input_edges"].shape == (3, 3, 2, 3)  # max distance 2
    # the path 0 -> 1 -> 2 carries the features of edges (0,1) and (1,2), offset as convert_to_single_emb
    assert item["input_edges"][0, 2, :, 0].tolist() == [1 + 1 + 1 + 1, 1 + 2 + 1 + 1]
    batch = graphormer.collate([item, graphormer.preprocess_item({**g, "num_nodes": 2, "edge_index": [[0], [1]],
                                                                   "edge_attr": [[1, 0, 0]],
                                                                   "node_feat": g["node_feat"][:2], "y": [0]})])
    assert batch["inputs"]["input_nodes"].shape[:2] == (2, 3) and batch["labels"].tolist() == [1, 0]
    assert (batch["inputs"]["input_nodes"][1, 2] == 0).all()  # padding


def test_mhaclip_round_trips_through_an_openclip_state_dict():
    torch.manual_seed(0)
    m = MhaCLIP(TowerConfig(embed_dim=8, image_size=16, patch_size=8, vision_width=64, vision_layers=2,
                            vision_heads=1, context_length=6, vocab_size=20, text_width=64, text_layers=1,
                            text_heads=1))
    sd = {f"module.{k}": v for k, v in m.state_dict().items()}  # DDP-saved keys load too
    m2 = from_state_dict(sd)
    assert m2.config == m.config
    x, ids, lengths = torch.randn(2, 3, 16, 16), torch.randint(1, 20, (3, 6)), torch.tensor([3, 6, 2])
    with torch.no_grad():
        assert torch.equal(m(x, ids, lengths), m2(x, ids, lengths))
    # OpenCLIP's names, on nn.MultiheadAttention
    assert "module.visual.transformer.resblocks.0.attn.in_proj_weight" in sd and "module.text_projection" in sd
    with pytest.raises(ValueError, match="visual.conv1.weight"):
        from_state_dict({"x": torch.zeros(1)})
