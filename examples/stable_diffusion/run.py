"""Stable Diffusion: CLIP score on captions, full precision vs simulated (INT-FP-QSim's ``eval_stablediff.py``).

    python examples/stable_diffusion/run.py --checkpoint ~/models/stable-diffusion-v1-5 \\
        --clip ~/models/clip-vit-large-patch14 --data ~/data/cc3m-validation-captions.txt --limit 100
    python examples/stable_diffusion/run.py --smoke

``--checkpoint``: a local diffusers Stable Diffusion folder (``model_index.json``, ``unet/``, ``vae/``,
``text_encoder/``, ...). ``--clip``: a local Hugging Face CLIP folder that scores the images (not
simulated). ``--data``: captions, one per line (``.txt``), the first column of a ``.tsv`` (Conceptual
Captions), or the ``caption``/``text`` field of a ``.jsonl``. As INT-FP-QSim did, captions longer than
the CLIP tokenizer's 77 tokens are skipped, and the text encoder, UNet and VAE are all simulated (one
session over the three, module names prefixed ``text_encoder.``, ``unet.``, ``vae.``). Every caption is
generated from the same seed in both runs; the score is torchmetrics' CLIP score, 100 * max(cos, 0)
between the CLIP image and text embeddings, averaged over captions. Smoke mode saves a tiny random
pipeline and a tiny random CLIP, generates 32x32 images in 2 steps and scores them the same way.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402

STAND_IN_CAPTIONS = ["a red apple on a wooden table", "a small dog running on the beach", "a city street at night"]


def read_captions(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [r.get("caption", r.get("text", "")).strip() for r in rows if r.get("caption") or r.get("text")]
    if path.suffix == ".tsv":
        with path.open(encoding="utf-8", newline="") as f:
            return [row[0].strip() for row in csv.reader(f, delimiter="\t") if row and row[0].strip()]
    return common.read_lines(path)


def load_clip(path: Path, dev):
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(dev).eval()
    return (model, AutoTokenizer.from_pretrained(str(path), local_files_only=True),
            CLIPImageProcessor.from_pretrained(str(path), local_files_only=True))


def clip_scores(clip, images, captions, dev):
    """CLIP score of each (image, caption) pair."""
    import torch

    model, tok, improc = clip
    with torch.no_grad():
        px = improc(images=images, return_tensors="pt")["pixel_values"].to(dev)
        txt = tok(captions, padding=True, truncation=True, max_length=model.config.text_config.max_position_embeddings,
                  return_tensors="pt").to(dev)
        return common.clip_score(_features(model.get_image_features(pixel_values=px)),
                                 _features(model.get_text_features(**txt)))


def _features(out):
    """transformers 4 returns the projected embeddings, 5 an output whose pooler_output they are."""
    return out if isinstance(out, __import__("torch").Tensor) else out.pooler_output


def build_task(checkpoint: Path, clip_path: Path, data: Path, args) -> common.Task:
    import diffusers
    import torch
    from diffusers import StableDiffusionPipeline
    from torch import nn

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    dev = common.device_of(args)
    pipe = StableDiffusionPipeline.from_pretrained(str(checkpoint), safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True).to(dev)
    pipe.set_progress_bar_config(disable=True)
    clip = load_clip(clip_path, dev)
    ctx = clip[0].config.text_config.max_position_embeddings
    captions = [c for c in read_captions(data) if len(clip[1](c).input_ids) <= ctx]
    captions = captions[: args.limit] if args.limit else captions
    if not captions:
        raise SystemExit(f"--data {data}: no caption of at most {ctx} CLIP tokens")
    parts = nn.ModuleDict({"text_encoder": pipe.text_encoder, "unet": pipe.unet, "vae": pipe.vae})
    size = {"height": args.size, "width": args.size} if args.size else {}

    def generate(caption: str, i: int, steps: int, output_type: str = "pil"):
        g = torch.Generator().manual_seed(args.seed + i)
        return pipe(caption, num_inference_steps=steps, guidance_scale=args.guidance, generator=g,
                    output_type=output_type, **size).images

    def metric() -> float:
        scores = []
        for i, c in enumerate(captions):
            scores.append(float(clip_scores(clip, generate(c, i, args.steps), [c], dev)[0]))
        return sum(scores) / len(scores)

    def forward(_parts, batch):  # a probe/calibration batch is (index, caption): a short generation
        i, caption = batch
        return generate(caption, i, args.probe_steps, output_type="pt")

    batches = list(enumerate(captions))
    notes = [f"pipeline: {checkpoint} (text encoder, UNet, VAE simulated: "
             f"{sum(p.numel() for p in parts.parameters()) / 1e6:.2f} M parameters)",
             f"CLIP scorer (full precision): {clip_path}",
             f"captions: {data} ({len(captions)} of at most {ctx} tokens), {args.steps} steps, "
             f"guidance {args.guidance:g}, seed {args.seed} + caption index; probe: {args.probe_steps} steps"]
    return common.Task(name="stable_diffusion", title="CLIP score on captions", model=parts,
                       metric_name="CLIP score", metric=metric, higher_is_better=True, probe=batches[:1],
                       forward=forward, top1=False, calibration_data=batches, notes=notes)


def write_smoke(root: Path, seed: int) -> tuple[Path, Path, Path]:
    """A tiny random pipeline, a tiny random CLIP (both with a tokenizer trained on the captions), captions."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import (
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPTextConfig,
        CLIPTextModel,
    )

    data = root / "captions.txt"
    data.write_text("\n".join(STAND_IN_CAPTIONS) + "\n")
    tok_dir = common.train_tokenizer(STAND_IN_CAPTIONS * 4, root / "tokenizer", vocab_size=300, model_max_length=16)
    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), latent_channels=4,
                        norm_num_groups=8, sample_size=32)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=2, max_position_embeddings=16, projection_dim=32))
    sched = DDIMScheduler(num_train_timesteps=100, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    ckpt = root / "sd-tiny"
    pipe.save_pretrained(str(ckpt))
    clip_dir = root / "clip-tiny"
    torch.manual_seed(seed + 1)
    clip = CLIPModel(CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16))
    clip.save_pretrained(str(clip_dir))
    tok.save_pretrained(str(clip_dir))
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(str(clip_dir))
    return ckpt, clip_dir, data


def main(argv=None) -> dict:
    p = common.make_parser("examples/stable_diffusion/run.py", __doc__.splitlines()[0],
                           checkpoint="local diffusers Stable Diffusion folder (e.g. stable-diffusion-v1-5)",
                           data="captions: .txt (one per line), .tsv (first column) or .jsonl (caption field)")
    p.add_argument("--clip", metavar="PATH", default=None,
                   help="local Hugging Face CLIP folder that computes the score (e.g. clip-vit-large-patch14)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps per image")
    p.add_argument("--probe-steps", type=int, default=2, help="denoising steps of the probe/calibration runs")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--size", type=int, default=None, help="image height and width (default: the pipeline's)")
    args = common.parse_args(p, argv)
    if args.smoke:
        args.steps, args.size = min(args.steps, 2), 32
        with common.workdir(args, "stable_diffusion") as root:
            ckpt, clip_dir, data = write_smoke(root, args.seed)
            return common.run(build_task(ckpt, clip_dir, data, args), args)
    if not args.clip or not Path(args.clip).exists():
        p.error("give --clip PATH: a local CLIP checkpoint folder that scores the images")
    return common.run(build_task(Path(args.checkpoint), Path(args.clip), Path(args.data), args), args)


if __name__ == "__main__":
    main()
