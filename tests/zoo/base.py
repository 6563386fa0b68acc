"""The zoo's shared pieces: the :class:`Case` record, a seeded-build decorator, standard inputs.

A case is everything a test (or ``tools/coverage_survey.py``) needs to run one architecture without
knowing it: ``build(impl)`` returns a tiny random-weight model in ``eval()`` mode, ``inputs()`` the
keyword arguments of one forward call, ``generate(model)`` (where the model can) a short greedy
generation with a KV cache. Seeds are fixed, so two builds give the same weights and two calls of
``inputs()`` the same tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

import torch
from torch import Tensor, nn

from tests.attention.zoo import outputs

__all__ = ["Case", "seeded", "token_inputs", "greedy_generate", "outputs", "VOCAB"]

VOCAB = 64


@dataclass(frozen=True)
class Case:
    """One architecture of the zoo.

    Args:
        name: short id (``"llama"``, ``"tv_swin_v2_t"``).
        library: ``"transformers"``, ``"torchvision"`` or ``"diffusers"``.
        build: ``build(impl) -> nn.Module`` in eval mode, for each ``impl`` of ``impls``.
        inputs: the keyword arguments of one forward call (fixed seed).
        attention: class names of the modules that compute attention (softmax(Q·Kᵀ)·V or an SDPA
            call), whether or not qsim-hooks' default pattern finds them.
        impls: the implementations ``build`` accepts. Transformers: the ``attn_implementation``
            (``"eager"``, ``"sdpa"``); MoE cases also ``"sdpa+batched_mm"`` (``"eager"`` runs the
            experts' own Python loop, ``"sdpa"`` transformers' default ``grouped_mm``). diffusers:
            ``"eager"`` is ``AttnProcessor`` (baddbmm), ``"sdpa"`` its default ``*2_0`` processor.
            torchvision models have one implementation, called ``"native"``.
        exact: the implementations whose attention is the model's own matmuls (no fused SDPA call),
            so an identity simulation must be bit-identical there (elsewhere within 1e-5). Default:
            those of ``impls`` whose attention part (before ``+``) is ``"eager"``.
        generate: ``generate(model) -> token ids``: greedy, 3 new tokens, KV cache on; ``None`` where
            the model does not generate.
        forward: how to call the model (default ``model(**inputs())``).
        notes: what is special about the architecture (for the survey's report).
    """

    name: str
    library: str
    build: Callable[[str], nn.Module]
    inputs: Callable[[], dict[str, Any]]
    attention: frozenset[str]
    impls: tuple[str, ...] = ("eager", "sdpa")
    exact: tuple[str, ...] | None = None
    generate: Callable[[nn.Module], Tensor] | None = None
    forward: Callable[[nn.Module, dict[str, Any]], Any] | None = None
    notes: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.exact is None:
            object.__setattr__(self, "exact", tuple(i for i in self.impls if i.partition("+")[0] == "eager"))

    def run(self, model: nn.Module) -> Any:
        """One forward call of ``model`` on this case's inputs (no autograd)."""
        with torch.no_grad():
            kw = self.inputs()
            return self.forward(model, kw) if self.forward is not None else model(**kw)


def seeded(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Build under ``torch.manual_seed(0)`` without touching the caller's RNG state; return ``eval()``."""

    @wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return fn(*a, **kw).eval()

    return wrapper


def token_inputs(seed: int, batch: int = 2, seq: int = 7, pad: str | None = "left", low: int = 3,
                 vocab: int = VOCAB) -> dict[str, Tensor]:
    """Token ids and an attention mask; the second row padded by two positions (``pad=None``: no mask)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, vocab, (batch, seq), generator=g)
    if pad is None:
        return {"input_ids": ids}
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad == "left":
        mask[1, :2] = 0
    else:
        mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def greedy_generate(model: nn.Module, *, pad_token_id: int = 1, **extra: Any) -> Tensor:
    """Three greedy tokens with a KV cache from a left-padded batch of two prompts."""
    kw = token_inputs(7, seq=6)
    with torch.no_grad():
        return model.generate(**kw, max_new_tokens=3, do_sample=False, use_cache=True,
                              pad_token_id=pad_token_id, **extra)
