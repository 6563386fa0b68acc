"""CodeGen: pass@1 on HumanEval, full precision vs simulated (INT-FP-QSim's ``eval_codegen.py``).

    python examples/codegen/run.py --checkpoint ~/models/codegen-350M-mono \\
        --data ~/data/HumanEval.jsonl.gz --allow-code-execution
    python examples/codegen/run.py --smoke

``--data``: HumanEval as a local ``.jsonl`` (or ``.jsonl.gz``) file with the fields ``task_id``,
``prompt``, ``test``, ``entry_point`` (and ``canonical_solution``, used for a harness check). Each prompt
is completed greedily (one sample, so pass@1 is the fraction of problems that pass); the completion is
cut at HumanEval's stop sequences, and ``prompt + completion + test + check(entry_point)`` runs in a fresh
Python subprocess with a timeout. That executes model-written code on this machine, as HumanEval's own
harness does: a real run asks for ``--allow-code-execution``. Smoke mode writes two toy problems, saves
a tiny random CodeGen, and checks the harness on the canonical solutions (they must pass).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402

#: the stop sequences of the Codex paper's HumanEval evaluation
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

TOY_PROBLEMS = [
    {"task_id": "Toy/0", "prompt": 'def add(a, b):\n    """Return the sum of a and b."""\n',
     "canonical_solution": "    return a + b\n",
     "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
     "entry_point": "add"},
    {"task_id": "Toy/1", "prompt": 'def first(xs):\n    """Return the first element of the list xs."""\n',
     "canonical_solution": "    return xs[0]\n",
     "test": "def check(candidate):\n    assert candidate([7, 8]) == 7\n",
     "entry_point": "first"},
]


def read_problems(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for line in f if line.strip()]
    for p in problems:
        missing = {"task_id", "prompt", "test", "entry_point"} - set(p)
        if missing:
            raise SystemExit(f"--data {path}: problem {p.get('task_id', '?')} lacks {sorted(missing)}")
    return problems


def truncate(completion: str) -> str:
    """The completion up to the first stop sequence."""
    cut = min((i for i in (completion.find(s) for s in STOP) if i >= 0), default=len(completion))
    return completion[:cut]


def program(problem: dict, completion: str) -> str:
    return (problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n"
            + f"check({problem['entry_point']})\n")


def build_task(checkpoint: Path, data: Path, args) -> common.Task:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = common.device_of(args)
    problems = read_problems(data)[: args.limit]
    tok = AutoTokenizer.from_pretrained(str(checkpoint), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(checkpoint), local_files_only=True).to(dev).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [tok(p["prompt"], return_tensors="pt").input_ids.to(dev) for p in problems]

    def metric() -> float:
        passed = 0
        for prob, ids in zip(problems, encoded):
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                     do_sample=False, pad_token_id=pad)
            completion = truncate(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
            ok, _ = common.run_program(program(prob, completion), timeout=args.timeout)
            passed += ok
        return passed / len(problems)

    def harness() -> tuple[list[str], dict]:
        with_solution = [p for p in problems if "canonical_solution" in p]
        ok = sum(common.run_program(program(p, p["canonical_solution"]), timeout=args.timeout)[0]
                 for p in with_solution)
        return ([f"harness check: {ok} of {len(with_solution)} canonical solutions pass"],
                {"harness_passed": ok, "harness_total": len(with_solution)})

    notes = [f"checkpoint: {checkpoint} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters)",
             f"problems: {data} ({len(problems)}), greedy, up to {args.max_new_tokens} new tokens, "
             f"each program run in a subprocess with a {args.timeout:g} s timeout"]
    return common.Task(name="codegen", title="pass@1 on HumanEval", model=model, metric_name="pass@1",
                       metric=metric, higher_is_better=True, probe=[{"input_ids": encoded[0]}],
                       output=lambda o: o.logits, top1=True,
                       calibration_data=[{"input_ids": e} for e in encoded], notes=notes, extra=harness)


def write_smoke(root: Path, seed: int) -> tuple[Path, Path]:
    import torch
    from transformers import AutoTokenizer, CodeGenConfig, CodeGenForCausalLM

    data = root / "HumanEval-toy.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in TOY_PROBLEMS))
    ckpt = root / "codegen-tiny"
    texts = [p["prompt"] + p["canonical_solution"] + p["test"] for p in TOY_PROBLEMS]
    t = AutoTokenizer.from_pretrained(str(common.train_tokenizer(texts, ckpt, vocab_size=300, model_max_length=128)))
    torch.manual_seed(seed)
    cfg = CodeGenConfig(vocab_size=len(t), n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=128, n_ctx=128,
                        n_inner=64, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
                        pad_token_id=t.pad_token_id)
    CodeGenForCausalLM(cfg).save_pretrained(str(ckpt))
    return ckpt, data


def main(argv=None) -> dict:
    p = common.make_parser("examples/codegen/run.py", __doc__.splitlines()[0],
                           checkpoint="local Hugging Face CodeGen folder (e.g. codegen-350M-mono)",
                           data="HumanEval .jsonl or .jsonl.gz")
    p.add_argument("--max-new-tokens", type=int, default=300,
                   help="tokens generated per problem (INT-FP-QSim: up to 428 tokens in all)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds each program may run")
    p.add_argument("--allow-code-execution", action="store_true",
                   help="confirm that model-written code may run on this machine (real runs)")
    args = common.parse_args(p, argv)
    if args.smoke:
        args.max_new_tokens = min(args.max_new_tokens, 8)
    elif not args.allow_code_execution:
        p.error("pass@1 runs the generated code in subprocesses on this machine; "
                "add --allow-code-execution to confirm (or use a sandbox)")
    return common.evaluate(args, "codegen", write_smoke, build_task)


if __name__ == "__main__":
    main()
