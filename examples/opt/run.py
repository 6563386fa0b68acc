"""OPT: perplexity on wikitext-2, full precision vs simulated (INT-FP-QSim's ``eval_opt.py``).

    python examples/opt/run.py --checkpoint ~/models/opt-125m --data ~/data/wikitext-2-raw
    python examples/opt/run.py --smoke

``--checkpoint``: a local Hugging Face OPT folder (config, weights, tokenizer). ``--data``: the raw
wikitext-2 text: ``wiki.test.raw`` itself or the folder holding it (``wiki.train.raw`` beside it is used
for ``--calibrate``). The text is tokenized as one string and scored in non-overlapping windows of
``--seq-len`` tokens (``run_clm``'s evaluation); ``--stride`` slides the window instead. Smoke mode saves
a tiny random OPT and a few paragraphs of stand-in text in the same layout and runs the same code.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402

STAND_IN_TEXT = """ = Stand-in article =

 The quick brown fox jumps over the lazy dog . The dog sleeps in the sun , and the fox runs into the forest .
 A river flows through the valley , and the people of the town cross it on an old stone bridge .

 = = History = =

 The bridge was built in the twelfth century . It was repaired after a flood in 1845 and again in 1962 .
 Today the town holds a market on the bridge every Saturday , selling bread , cheese and apples .
"""


def find_text(data: Path, split: str) -> Path | None:
    """The raw text of ``split`` under ``data`` (a file is taken as is)."""
    if data.is_file():
        return data if split == "test" else None
    for name in (f"wiki.{split}.raw", f"{split}.txt", f"wikitext-2-raw/wiki.{split}.raw",
                 f"wikitext-2-raw-v1/wiki.{split}.raw"):
        if (data / name).is_file():
            return data / name
    return None


def build_task(checkpoint: Path, data: Path, args) -> common.Task:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = common.device_of(args)
    test = find_text(data, args.split)
    if test is None:
        raise SystemExit(f"--data {data}: no wiki.{args.split}.raw (or {args.split}.txt) found there")
    tok = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True).to(dev).eval()
    seq_len = min(args.seq_len, model.config.max_position_embeddings)
    ids = tok(test.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0]
    if args.limit is not None:
        ids = ids[: args.limit * seq_len + 1]
    train = find_text(data, "train")
    calib_ids = tok(train.read_text(encoding="utf-8"), return_tensors="pt").input_ids[0] if train else ids
    windows = [calib_ids[i:i + seq_len] for i in range(0, max(1, calib_ids.numel() - 1), seq_len)]
    calib = [{"input_ids": w.unsqueeze(0).to(dev)} for w in windows[: args.calib_batches] if w.numel() > 1]
    probe = [{"input_ids": ids[: min(seq_len, 256)].unsqueeze(0).to(dev)}]
    notes = [f"checkpoint: {checkpoint} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)",
             f"text: {test} ({ids.numel()} tokens), windows of {seq_len} tokens"
             + (f", stride {args.stride}" if args.stride else ""),
             f"calibration text: {train if train else test}"]

    def metric() -> float:
        with torch.no_grad():
            return common.perplexity(model, ids, seq_len=seq_len, stride=args.stride, device=dev)

    return common.Task(name="opt", title="perplexity on wikitext-2", model=model, metric_name="perplexity",
                       metric=metric, higher_is_better=False, probe=probe, output=lambda o: o.logits,
                       top1=True, calibration_data=calib, notes=notes)


def write_smoke(root: Path, seed: int) -> tuple[Path, Path]:
    """A tiny random OPT with a tokenizer trained on the stand-in text, and the text as wiki.*.raw."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    data = root / "wikitext-2-raw"
    data.mkdir(parents=True, exist_ok=True)
    (data / "wiki.test.raw").write_text(STAND_IN_TEXT)
    (data / "wiki.train.raw").write_text(STAND_IN_TEXT.replace("fox", "cat").replace("bridge", "tower"))
    ckpt = root / "opt-tiny"
    tok = common.train_tokenizer(STAND_IN_TEXT.splitlines(), ckpt, vocab_size=320)
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tok))
    torch.manual_seed(seed)
    cfg = OPTConfig(vocab_size=len(t), hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=t.pad_token_id,
                    bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id)
    OPTForCausalLM(cfg).save_pretrained(str(ckpt))
    return ckpt, data


def main(argv=None) -> dict:
    p = common.make_parser("examples/opt/run.py", __doc__.splitlines()[0],
                           checkpoint="local Hugging Face OPT folder (e.g. opt-125m ... opt-6.7b)",
                           data="wiki.test.raw of wikitext-2 (raw), or the folder holding it")
    p.add_argument("--split", default="test", help="which wiki.<split>.raw to score")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per window (capped at the model's maximum)")
    p.add_argument("--stride", type=int, default=None, help="slide the window by this many tokens")
    args = common.parse_args(p, argv)
    if args.smoke:
        args.seq_len = min(args.seq_len, 32)
    return common.evaluate(args, "opt", write_smoke, build_task)


if __name__ == "__main__":
    main()
