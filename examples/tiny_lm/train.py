"""The tiny LM: a transformers ``LlamaForCausalLM`` trained here from a fixed seed, cached by a version key.

Architecture (``Spec``): RoPE, RMSNorm, SwiGLU MLP and grouped-query attention (4 query heads sharing 2
key/value heads): the Llama family's code path in transformers, with its ``"eager"`` and ``"sdpa"``
attention. Training: AdamW, one-cycle learning rate, random windows of the training text drawn from a
seeded generator, gradient clipping, ``Spec.threads`` CPU threads; the same seed gives the same weights.

The trained weights are cached under ``$XDG_CACHE_HOME/qsim-hooks/tiny_lm/<key>/`` (default
``~/.cache/...``). The key is a hash of everything the weights depend on: the spec (architecture and
training settings), the text's bytes, the transformers and torch versions and the cache layout; change any
of them and a new key is trained. A cache entry that cannot be read, was written for another key, or does
not load strictly into the model is trained again and overwritten (never an error); a cache folder that
cannot be written only costs the caching.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._shared import steps as progress_steps
from .data import VOCAB, Corpus

__all__ = ["Spec", "SMOKE_SPEC", "Trained", "build_model", "train", "version_key", "cache_root", "load_or_train",
           "CACHE_LAYOUT"]

CACHE_LAYOUT = 1  # bump when the files written below change
WEIGHTS_FILE, META_FILE = "weights.pt", "meta.json"


@dataclass(frozen=True)
class Spec:
    """Architecture and training: every field is part of the version key."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 256
    seq_len: int = 64
    batch: int = 32
    steps: int = 200
    lr: float = 5e-3
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2


#: the smoke test's model: same code path, seconds
SMOKE_SPEC = Spec(hidden=32, layers=1, heads=2, kv_heads=1, intermediate=64, seq_len=32, batch=8, steps=30)


@dataclass
class Trained:
    model: Any  # LlamaForCausalLM, eval mode
    key: str
    path: Path | None  # the cache folder (None: caching failed)
    cached: bool  # loaded from the cache (False: trained in this call)
    train_seconds: float  # of the training run that produced the weights (this call's or the cached one's)
    final_loss: float
    note: str | None = None  # why the cache was not used (corrupt, mismatched, not writable)


def build_model(spec: Spec, attn_implementation: str = "sdpa") -> Any:
    """An untrained LlamaForCausalLM of ``spec`` over the 256 byte values (seeded initialisation)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=spec.hidden, intermediate_size=spec.intermediate,
                      num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                      num_key_value_heads=spec.kv_heads, max_position_embeddings=2 * spec.seq_len,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                      attn_implementation=attn_implementation)
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(cfg)


def train(model: Any, ids: Tensor, spec: Spec, *, progress: bool = True) -> float:
    """Train in place on random windows of ``ids``; returns the last step's loss. Leaves eval mode."""
    g = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.steps, pct_start=spec.warmup)
    if len(ids) <= spec.seq_len + 1:
        raise ValueError(f"train: {len(ids)} tokens of text, need more than seq_len + 1 = {spec.seq_len + 1}")
    threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    model.train()
    loss = math.nan
    try:
        with progress_steps("training the tiny LM", spec.steps, enabled=progress) as step:
            offsets = torch.arange(spec.seq_len)
            for i in range(spec.steps):
                step(f"step {i + 1}/{spec.steps}")
                start = torch.randint(0, len(ids) - spec.seq_len, (spec.batch, 1), generator=g)
                x = ids[start + offsets]
                out = model(input_ids=x, labels=x)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                loss = float(out.loss.detach())
    finally:
        torch.set_num_threads(threads)
        model.eval()
    return loss


def version_key(spec: Spec, corpus: Corpus) -> str:
    """16 hex digits naming the weights: spec, text, library versions, cache layout."""
    import transformers

    blob = json.dumps({"spec": asdict(spec), "text": corpus.digest, "transformers": transformers.__version__,
                       "torch": torch.__version__.split("+")[0], "layout": CACHE_LAYOUT}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qsim-hooks" / "tiny_lm"


def _load(folder: Path, key: str, spec: Spec) -> tuple[Any, dict[str, Any]]:
    """The cached model, or an exception saying why it cannot be used."""
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("key") != key:
        raise ValueError(f"{folder / META_FILE} was written for key {meta.get('key')!r}")
    state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model = build_model(spec)
    model.load_state_dict(state, strict=True)
    return model.eval(), meta


def _save(folder: Path, model: Any, meta: dict[str, Any]) -> None:
    """Weights, then the meta file (its presence marks a complete entry); each written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, write in ((WEIGHTS_FILE, lambda f: torch.save(model.state_dict(), f)),
                        (META_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, folder / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def load_or_train(spec: Spec, corpus: Corpus, *, cache_dir: Path | str | None = None,
                  progress: bool = True) -> Trained:
    """The weights of ``spec`` on ``corpus``: from the cache when a valid entry exists, else trained and cached."""
    key = version_key(spec, corpus)
    folder = Path(cache_dir if cache_dir is not None else cache_root()) / key
    note = None
    if (folder / META_FILE).exists() or (folder / WEIGHTS_FILE).exists():
        try:
            model, meta = _load(folder, key, spec)
            return Trained(model, key, folder, True, float(meta["train_seconds"]), float(meta["final_loss"]))
        except Exception as exc:  # any unreadable or mismatched entry is retrained, whatever raised
            note = f"cache {folder} unusable ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}): retrained"
    model = build_model(spec)
    t0 = time.perf_counter()
    loss = train(model, corpus.train, spec, progress=progress)
    seconds = time.perf_counter() - t0
    meta = {"key": key, "spec": asdict(spec), "train_seconds": seconds, "final_loss": loss,
            "text_sha256": corpus.digest}
    try:
        _save(folder, model, meta)
    except OSError as exc:
        note = f"could not cache the weights in {folder} ({exc.strerror or exc})"
        folder = None
    return Trained(model, key, folder, False, seconds, loss, note)
