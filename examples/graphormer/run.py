"""Graphormer: accuracy on ogbg-molhiv, full precision vs simulated (INT-FP-QSim's ``eval_graphormer.py``).

    .venv-tf457/bin/python examples/graphormer/run.py --checkpoint ~/models/graphormer-molhiv \\
        --data ~/data/ogbg-molhiv/test.jsonl
    python examples/graphormer/run.py --smoke

Graphormer needs transformers 4.57 (transformers 5 removed it): build the second environment with
``bash tools/graphormer_env.sh`` (``.venv-tf457``, transformers 4.57 over the main environment's torch).
Run from the main environment, this script hands itself over to ``.venv-tf457/bin/python`` when that
exists (``--no-delegate`` stops it). Without it, ``--smoke`` still runs everything but the model: the
data reader, Graphormer's preprocessing and collation and the metric code on stand-in graphs, with a
stand-in graph transformer on ``nn.MultiheadAttention`` in place of Graphormer, and says so.

``--checkpoint``: a local Hugging Face ``GraphormerForGraphClassification`` folder fine-tuned on
ogbg-molhiv (2 classes). ``--data``: ogbg-molhiv graphs as JSON lines (or a ``.json`` list, or a folder
with ``<split>.jsonl``), each with the fields of the Hugging Face ``OGB/ogbg-molhiv`` data set:
``edge_index`` (2 x E), ``edge_attr`` (E x 3), ``node_feat`` (N x 9), ``num_nodes``, ``y``. Graphs are
preprocessed as transformers' ``collating_graphormer.preprocess_item`` does (its Cython shortest paths
ported to NumPy here, so Cython is not needed) and batched as ``GraphormerDataCollator`` does. The
metric is accuracy (INT-FP-QSim's); ROC-AUC (OGB's metric for molhiv) is printed beside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SECOND_ENV = ROOT / ".venv-tf457" / "bin" / "python"
UNREACHABLE = 510  # algos_graphormer's UNREACHABLE_NODE_DISTANCE


def graphormer_available() -> bool:
    try:
        from transformers import GraphormerForGraphClassification  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------
# Data: ogbg-molhiv graphs, Graphormer's preprocessing and collation
# ---------------------------------------------------------------------------
def read_graphs(data: Path, split: str) -> list[dict]:
    if data.is_dir():
        for name in (f"{split}.jsonl", f"{split}.json"):
            if (data / name).is_file():
                data = data / name
                break
        else:
            raise SystemExit(f"--data {data}: no {split}.jsonl or {split}.json there")
    text = data.read_text(encoding="utf-8")
    graphs = json.loads(text) if data.suffix == ".json" else [json.loads(s) for s in text.splitlines() if s.strip()]
    for g in graphs:
        missing = {"edge_index", "num_nodes", "y"} - set(g)
        if missing:
            raise SystemExit(f"--data {data}: a graph lacks {sorted(missing)}")
    return graphs


def floyd_warshall(adj):
    """algos_graphormer.floyd_warshall in NumPy: hop distances and the intermediate node of each path."""
    import numpy as np

    n = adj.shape[0]
    dist = np.where(adj, 1, UNREACHABLE).astype(np.int64)
    np.fill_diagonal(dist, 0)
    path = -np.ones((n, n), dtype=np.int64)
    for k in range(n):  # dist[i, k] and dist[k, j] do not change in round k, so a whole round is one step
        via = dist[:, k, None] + dist[None, k, :]
        better = dist > via
        dist = np.where(better, via, dist)
        path = np.where(better, k, path)
    far = dist >= UNREACHABLE
    dist[far] = UNREACHABLE
    path[far] = UNREACHABLE
    return dist, path


def _hops(path, i: int, j: int) -> list[int]:
    k = int(path[i, j])
    return [] if k == -1 else _hops(path, i, k) + [k] + _hops(path, k, j)


def gen_edge_input(max_dist: int, path, edge_feat):
    """algos_graphormer.gen_edge_input in NumPy: the edge features along each shortest path."""
    import numpy as np

    n = path.shape[0]
    out = -np.ones((n, n, max_dist, edge_feat.shape[-1]), dtype=np.int64)
    for i in range(n):
        for j in range(n):
            if i == j or path[i, j] == UNREACHABLE:
                continue
            p = [i, *_hops(path, i, j), j]
            for k in range(len(p) - 1):
                out[i, j, k] = edge_feat[p[k], p[k + 1]]
    return out


def preprocess_item(item: dict) -> dict:
    """transformers' ``collating_graphormer.preprocess_item`` (keep_features=True), without Cython."""
    import numpy as np

    def single_emb(x, offset: int = 512):
        return x + 1 + np.arange(0, x.shape[1] * offset, offset, dtype=np.int64)

    n = int(item["num_nodes"])
    edge_index = np.asarray(item["edge_index"], dtype=np.int64).reshape(2, -1)
    edge_attr = np.asarray(item.get("edge_attr", np.ones((edge_index.shape[1], 1))), dtype=np.int64)
    edge_attr = edge_attr.reshape(edge_index.shape[1], -1) if edge_attr.size else np.ones((0, 1), dtype=np.int64)
    node_feat = np.asarray(item.get("node_feat", np.ones((n, 1))), dtype=np.int64).reshape(n, -1)
    attn_edge_type = np.zeros((n, n, edge_attr.shape[-1]), dtype=np.int64)
    attn_edge_type[edge_index[0], edge_index[1]] = single_emb(edge_attr) + 1
    adj = np.zeros((n, n), dtype=bool)
    adj[edge_index[0], edge_index[1]] = True
    dist, path = floyd_warshall(adj)
    edges = gen_edge_input(int(dist.max()) if n else 0, path, attn_edge_type)
    y = np.asarray(item["y"]).reshape(-1)
    return {"input_nodes": single_emb(node_feat) + 2, "attn_bias": np.zeros((n + 1, n + 1), dtype=np.float32),
            "attn_edge_type": attn_edge_type, "spatial_pos": dist + 1, "in_degree": adj.sum(axis=1) + 1,
            "input_edges": edges + 1, "labels": y.astype(np.int64)}


def collate(features: list[dict], spatial_pos_max: int = 20) -> dict:
    """``GraphormerDataCollator`` (one binary task): pad every graph of the batch to its largest one."""
    import torch

    b = len(features)
    n = max(len(f["input_nodes"]) for f in features)
    nf, ef = features[0]["input_nodes"].shape[-1], features[0]["attn_edge_type"].shape[-1]
    d = max(1, max(f["input_edges"].shape[2] for f in features))
    batch = {"attn_bias": torch.zeros(b, n + 1, n + 1), "attn_edge_type": torch.zeros(b, n, n, ef, dtype=torch.long),
             "spatial_pos": torch.zeros(b, n, n, dtype=torch.long), "in_degree": torch.zeros(b, n, dtype=torch.long),
             "input_nodes": torch.zeros(b, n, nf, dtype=torch.long),
             "input_edges": torch.zeros(b, n, n, d, ef, dtype=torch.long)}
    for i, f in enumerate(features):
        k = len(f["input_nodes"])
        bias = torch.tensor(f["attn_bias"])
        sp = torch.tensor(f["spatial_pos"])
        bias[1:, 1:][sp >= spatial_pos_max] = float("-inf")
        batch["attn_bias"][i, : k + 1, : k + 1] = bias
        batch["attn_edge_type"][i, :k, :k] = torch.tensor(f["attn_edge_type"])
        batch["spatial_pos"][i, :k, :k] = sp
        batch["in_degree"][i, :k] = torch.tensor(f["in_degree"])
        batch["input_nodes"][i, :k] = torch.tensor(f["input_nodes"])
        e = torch.tensor(f["input_edges"])
        batch["input_edges"][i, :k, :k, : e.shape[2]] = e
    batch["out_degree"] = batch["in_degree"]
    labels = torch.tensor([int(f["labels"][0]) for f in features])
    return {"inputs": batch, "labels": labels}


# ---------------------------------------------------------------------------
# A stand-in for Graphormer when transformers 4.57 is not there
# ---------------------------------------------------------------------------
def stand_in_model(num_classes: int = 2, hidden: int = 32, heads: int = 2, layers: int = 2):
    """A small graph transformer on nn.MultiheadAttention: Graphormer's inputs (atoms, degrees, hop distance)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
            self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
            self.fc1, self.fc2 = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)

        def forward(self, x, bias):
            y = self.ln_1(x)
            x = x + self.attn(y, y, y, attn_mask=bias, need_weights=False)[0]
            return x + self.fc2(torch.relu(self.fc1(self.ln_2(x))))

    class StandInGraphTransformer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.atom = nn.Embedding(4608 + 2, hidden, padding_idx=0)
            self.degree = nn.Embedding(512, hidden, padding_idx=0)
            self.graph_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
            self.spatial = nn.Embedding(512, heads, padding_idx=0)
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.classifier = nn.Linear(hidden, num_classes)

        def forward(self, input_nodes, in_degree, spatial_pos, attn_bias, **_):
            b, n = input_nodes.shape[:2]
            x = self.atom(input_nodes.clamp(max=4609)).sum(-2) + self.degree(in_degree.clamp(max=511))
            x = torch.cat([self.graph_token.expand(b, 1, -1), x], dim=1)
            bias = attn_bias.clone()
            bias[:, 1:, 1:] = bias[:, 1:, 1:] + self.spatial(spatial_pos.clamp(max=511)).mean(-1)
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool), input_nodes[:, :, 0] == 0], dim=1)
            bias = bias.masked_fill(pad[:, None, :], float("-inf"))  # padded keys
            bias = bias.repeat_interleave(heads, dim=0)
            for blk in self.blocks:
                x = blk(x, bias)
            return self.classifier(x[:, 0])

    return StandInGraphTransformer()


# ---------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------
def build_task(checkpoint: Path | None, data: Path, args) -> common.Task:
    import torch

    dev = common.device_of(args)
    graphs = read_graphs(data, args.split)[: args.limit]
    items = [preprocess_item(g) for g in graphs]
    batches = [collate(items[i:i + args.batch_size]) for i in range(0, len(items), args.batch_size)]
    for bt in batches:
        bt["inputs"] = {k: v.to(dev) for k, v in bt["inputs"].items()}
    if checkpoint is not None:
        from transformers import GraphormerForGraphClassification

        model = GraphormerForGraphClassification.from_pretrained(str(checkpoint), local_files_only=True).to(dev).eval()
        logits = lambda out: out.logits  # noqa: E731
        what = f"GraphormerForGraphClassification, {checkpoint}"
        part = "graphormer"
    else:
        torch.manual_seed(args.seed)
        model = stand_in_model().to(dev).eval()
        logits = lambda out: out  # noqa: E731
        what = "STAND-IN graph transformer (nn.MultiheadAttention), not Graphormer"
        part = "stand-in (Graphormer needs .venv-tf457)"
    last: dict = {}

    def metric() -> float:
        correct, scores, labels = 0, [], []
        with torch.no_grad():
            for bt in batches:
                prob = torch.softmax(logits(model(**bt["inputs"])).float(), dim=-1).cpu()
                # INT-FP-QSim: argmax(round(softmax)); plain argmax differs only on exact 0.5 ties
                correct += int((prob.argmax(-1) == bt["labels"]).sum())
                scores += prob[:, -1].tolist()
                labels += bt["labels"].tolist()
        last["roc_auc"] = common.roc_auc(scores, labels)
        return correct / len(labels)

    def auc() -> tuple[list[str], dict]:
        return ([f"ROC-AUC (OGB's molhiv metric), simulated run: {last['roc_auc']:.4f}"],
                {"roc_auc_sim": last["roc_auc"], "model_part": part})

    notes = [f"model: {what} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)",
             f"graphs: {data} ({len(graphs)}, batches of {args.batch_size}), preprocessed as "
             "transformers' GraphormerDataCollator (shortest paths in NumPy)"]
    return common.Task(name="graphormer", title="accuracy on ogbg-molhiv", model=model, metric_name="accuracy",
                       metric=metric, higher_is_better=True, probe=[b["inputs"] for b in batches[:1]],
                       output=logits, calibration_data=[b["inputs"] for b in batches], notes=notes, extra=auc)


def write_smoke_data(root: Path, seed: int, count: int = 10) -> Path:
    """Random molecules in ogbg-molhiv's fields (9 atom and 3 bond features), both labels present."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        n = int(rng.integers(4, 10))
        src = [int(rng.integers(0, k)) for k in range(1, n)]  # a random tree, then both directions
        dst = list(range(1, n))
        ei = [src + dst, dst + src]
        bond = rng.integers(0, 4, (n - 1, 3)).tolist()
        lines.append(json.dumps({"edge_index": ei, "edge_attr": bond + bond, "num_nodes": n,
                                 "node_feat": rng.integers(0, 10, (n, 9)).tolist(), "y": [i % 2]}))
    path = root / "ogbg-molhiv"
    path.mkdir(parents=True, exist_ok=True)
    (path / "test.jsonl").write_text("\n".join(lines) + "\n")
    return path


def write_smoke_checkpoint(root: Path, seed: int) -> Path:
    import torch
    from transformers import GraphormerConfig, GraphormerForGraphClassification

    torch.manual_seed(seed)
    cfg = GraphormerConfig(num_classes=2, num_hidden_layers=2, embedding_dim=32, hidden_size=32,
                           ffn_embedding_dim=64, num_attention_heads=2, dropout=0.0, attention_dropout=0.0,
                           activation_dropout=0.0)
    ckpt = root / "graphormer-tiny"
    GraphormerForGraphClassification(cfg).save_pretrained(str(ckpt))
    return ckpt


def _delegate(argv: list[str], json_path: str | None) -> dict:
    """Run this script under .venv-tf457 (its output goes straight to ours) and return its figures."""
    with tempfile.TemporaryDirectory(prefix="qsim-graphormer-") as d:
        out = Path(json_path) if json_path else Path(d) / "result.json"
        cmd = [str(SECOND_ENV), str(Path(__file__).resolve()), *argv, "--no-delegate"]
        if not json_path:
            cmd += ["--json", str(out)]
        sys.stdout.flush()
        res = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if res.returncode != 0:
            raise SystemExit(f"{SECOND_ENV} {Path(__file__).name} exited with {res.returncode}")
        return json.loads(out.read_text())


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = common.make_parser("examples/graphormer/run.py", __doc__.splitlines()[0],
                           checkpoint="local Hugging Face GraphormerForGraphClassification folder (2 classes)",
                           data="ogbg-molhiv graphs: .jsonl / .json, or a folder with <split>.jsonl")
    p.add_argument("--split", default="test", help="<split>.jsonl when --data is a folder")
    p.add_argument("--batch-size", type=int, default=16, help="graphs per batch")
    p.add_argument("--no-delegate", action="store_true",
                   help="do not hand over to .venv-tf457/bin/python when this environment lacks Graphormer")
    args = common.parse_args(p, argv)
    have = graphormer_available()
    if not have and not args.no_delegate and SECOND_ENV.exists() and Path(sys.executable) != SECOND_ENV:
        import transformers

        common.console().print(f"graphormer: transformers {transformers.__version__} here has no Graphormer; "
                               f"running under {SECOND_ENV} (transformers 4.57)", markup=False, highlight=False)
        return _delegate(argv, args.json)
    if args.smoke:
        args.batch_size = min(args.batch_size, 4)
        with common.workdir(args, "graphormer") as root:
            data = write_smoke_data(root, args.seed)
            if have:
                return common.run(build_task(write_smoke_checkpoint(root, args.seed), data, args), args)
            import transformers

            task = build_task(None, data, args)
            task.notes[:0] = [
                f"MODEL PART NOT RUN: transformers {transformers.__version__} has no Graphormer (removed in 5.0). "
                "It needs the second environment: bash tools/graphormer_env.sh, then "
                ".venv-tf457/bin/python examples/graphormer/run.py --smoke",
                "Run here: the ogbg-molhiv reader, Graphormer's preprocessing and collation, and the accuracy / "
                "ROC-AUC code, on stand-in graphs with a stand-in model."]
            return common.run(task, args)
    if not have:
        p.error("Graphormer needs transformers 4.57: bash tools/graphormer_env.sh, then run this script with "
                ".venv-tf457/bin/python")
    return common.run(build_task(Path(args.checkpoint), Path(args.data), args), args)


if __name__ == "__main__":
    main()
