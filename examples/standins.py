"""Stand-in data and files for the family examples' smoke mode, written in the real on-disk layouts.

An image folder in torchvision's ``ImageFolder`` layout, a byte-level BPE tokenizer that
``AutoTokenizer.from_pretrained`` reads, text and JSON files; :mod:`examples.common` re-exports them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_image_folder", "train_tokenizer", "read_lines", "write_json"]


def write_image_folder(root: Path, classes: Sequence[str], per_class: int, size: tuple[int, int],
                       seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with random RGB images (torchvision ``ImageFolder`` layout)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in classes:
        d = root / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size[0], size[1], 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png")
    return root


def train_tokenizer(texts: Iterable[str], directory: Path, *, vocab_size: int = 300, model_max_length: int = 64,
                    special: str = "<|endoftext|>", pad: str = "<pad>") -> Path:
    """A byte-level BPE tokenizer trained on ``texts``, saved where ``AutoTokenizer.from_pretrained`` reads it.

    The smoke models use it so the real code path (``AutoTokenizer`` from a folder) runs offline.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=1, special_tokens=[special, pad],
                            show_progress=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok._tokenizer, bos_token=special, eos_token=special,
                                   unk_token=special, pad_token=pad, model_max_length=model_max_length)
    directory.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(directory))
    return directory


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a text file."""
    return [s.strip() for s in Path(path).read_text(encoding="utf-8").splitlines() if s.strip()]


def write_json(path: Path, data: Any) -> Path:
    Path(path).write_text(json.dumps(data, indent=1))
    return Path(path)
