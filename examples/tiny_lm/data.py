"""The tiny LM's text and tokenizer: Python's own documentation, byte by byte.

The text is ``pydoc_data.topics``: the 79 topics of the Python language reference that ``help()`` prints
(the ``if`` statement, name binding, the data model, ...), about 465 KB of English prose with grammar rules
and code examples, shipped with every CPython. Topics are taken in sorted order and a topic is held out
when the held-out text stays within ``HELD_OUT`` (10%) of the bytes so far: on CPython 3.11, 35 whole topics
(46,596 bytes) the model never sees, spread over the alphabet.

The tokenizer is the UTF-8 bytes (a vocabulary of 256, no special tokens): nothing to train or ship, and
the uniform baseline is a perplexity of exactly 256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Corpus", "load_corpus", "split_documents", "encode", "decode", "paragraph_starts", "VOCAB", "HELD_OUT"]

VOCAB = 256
HELD_OUT = 0.1
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    source: str
    train: Tensor  # int64 byte ids
    held_out: Tensor
    documents: int
    held_out_documents: int

    @property
    def digest(self) -> str:
        """sha256 of the training and held-out bytes: part of the trained weights' cache key."""
        h = hashlib.sha256()
        for t in (self.train, self.held_out):
            h.update(t.to(torch.uint8).numpy().tobytes())
            h.update(b"\0")
        return h.hexdigest()


def encode(text: str) -> Tensor:
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids: Tensor | list[int]) -> str:
    values = ids.tolist() if isinstance(ids, Tensor) else list(ids)
    return bytes(values).decode("utf-8", errors="replace")


def split_documents(documents: list[str], fraction: float = HELD_OUT) -> tuple[list[str], list[str]]:
    """(training, held-out): a document is held out if the held-out share of the bytes so far stays <= ``fraction``."""
    train: list[str] = []
    held: list[str] = []
    held_bytes = total = 0
    for doc in documents:
        n = len(doc.encode("utf-8"))
        total += n
        if held_bytes + n <= fraction * total:
            held.append(doc)
            held_bytes += n
        else:
            train.append(doc)
    return train, held


def paragraph_starts(ids: Tensor) -> list[int]:
    """Positions right after a blank line where a capital letter starts a paragraph of prose."""
    nl, upper = ord("\n"), (ord("A"), ord("Z"))
    x = ids.tolist()
    return [i for i in range(2, len(x)) if x[i - 1] == nl and x[i - 2] == nl and upper[0] <= x[i] <= upper[1]]


def load_corpus(max_bytes: int | None = None) -> Corpus:
    """The documentation topics split into training and held-out text; ``max_bytes`` truncates both (smoke)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise RuntimeError("pydoc_data (the topics of Python's help(), part of the standard library) is missing "
                           "from this Python installation") from None
    names = sorted(topics)
    train, held = split_documents([topics[n] for n in names])
    tr, te = encode(SEPARATOR.join(train)), encode(SEPARATOR.join(held))
    if max_bytes is not None:
        tr, te = tr[:max_bytes], te[: max(max_bytes // 4, 1)]
    return Corpus("pydoc_data.topics (Python's help() topics)", tr, te, len(names), len(held))
