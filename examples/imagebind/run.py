"""ImageBind-style zero-shot top-1 on ImageNet, full precision vs simulated (INT-FP-QSim's ``eval_imagebind.py``).

    python examples/imagebind/run.py --checkpoint ~/models/ViT-B-32/open_clip_pytorch_model.bin \\
        --tokenizer ~/models/clip-vit-base-patch32 --data ~/data/imagenet --labels ~/data/imagenet/classnames.txt
    python examples/imagebind/run.py --smoke

ImageBind itself is not installable from PyPI. Its image and text trunks are pre-LN transformer blocks on
``nn.MultiheadAttention`` - the structure of OpenCLIP's ViT - so this example runs ``model.MhaCLIP``, an
OpenCLIP-layout model on ``nn.MultiheadAttention`` (both towers simulated, as INT-FP-QSim simulated
ImageBind's). ``--checkpoint``: an OpenCLIP or OpenAI CLIP ViT state dict (``.bin``/``.pt``/``.pth``/
``.safetensors``, or the folder holding ``open_clip_pytorch_model.bin``); ``--quick-gelu`` for OpenAI's
weights. ``--tokenizer``: a local Hugging Face CLIP tokenizer folder (same BPE as OpenCLIP; default: the
checkpoint's folder). ``--data``: ImageNet validation images in ``ImageFolder`` layout (``DATA/val/<wnid>/*``
or ``DATA/<wnid>/*``). ``--labels``: class names in folder order (a ``.txt`` with one per line, or a
``.json`` list / ``{index: name}``); default: the folder names. Each class's text is ``--template``
filled with its name; an image's prediction is the class whose text embedding is closest (CLIP's
zero-shot classifier). Images: resize, centre crop, CLIP's mean/std. Smoke mode saves a tiny random
model, a tokenizer trained on the class names and a folder of random images, and runs the same code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_NAMES = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "model.safetensors",
                    "pytorch_model.bin")


def load_state_dict(path: Path) -> dict:
    import torch

    if path.is_dir():
        found = [path / n for n in CHECKPOINT_NAMES if (path / n).is_file()]
        if not found:
            raise SystemExit(f"--checkpoint {path}: none of {', '.join(CHECKPOINT_NAMES)} there")
        path = found[0]
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj


def image_root(data: Path) -> Path:
    return data / "val" if (data / "val").is_dir() else data


def read_labels(path: Path | None, classes: list[str]) -> list[str]:
    if path is None:
        return [c.replace("_", " ") for c in classes]
    if path.suffix == ".json":
        obj = json.loads(path.read_text(encoding="utf-8"))
        names = [obj[str(i)] if str(i) in obj else obj[i] for i in range(len(obj))] if isinstance(obj, dict) else obj
    else:
        names = common.read_lines(path)
    if len(names) != len(classes):
        raise SystemExit(f"--labels {path}: {len(names)} names for {len(classes)} class folders")
    return [n if isinstance(n, str) else n[0] for n in names]


def build_task(checkpoint: Path, tokenizer: Path, data: Path, labels: Path | None, args) -> common.Task:
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder
    from transformers import AutoTokenizer

    from examples.imagebind.model import from_state_dict

    dev = common.device_of(args)
    model = from_state_dict(load_state_dict(checkpoint), quick_gelu=args.quick_gelu).to(dev).eval()
    c = model.config
    tok = AutoTokenizer.from_pretrained(str(tokenizer), local_files_only=True)
    tf = T.Compose([T.Resize(c.image_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(c.image_size),
                    T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    ds = ImageFolder(str(image_root(data)), transform=tf)
    if args.limit:  # an even spread over the classes, not the first class only
        step = max(1, len(ds) // args.limit)
        ds = Subset(ds, list(range(0, len(ds), step))[: args.limit])
    names = read_labels(labels, (ds.dataset if isinstance(ds, Subset) else ds).classes)
    enc = tok([args.template.format(n) for n in names], truncation=True, max_length=c.context_length)
    lengths = torch.tensor([len(x) for x in enc["input_ids"]])
    ids = torch.zeros(len(names), int(lengths.max()), dtype=torch.long)
    for i, x in enumerate(enc["input_ids"]):
        ids[i, : len(x)] = torch.tensor(x)
    ids, lengths = ids.to(dev), lengths.to(dev)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)

    def metric() -> float:
        correct = total = 0
        with torch.no_grad():
            text = model.encode_text(ids, lengths)
            for img, target in loader:
                pred = (model.encode_image(img.to(dev)) @ text.T).argmax(-1).cpu()
                correct += int((pred == target).sum())
                total += target.numel()
        return correct / total

    batches = []
    for img, _ in loader:
        batches.append((img.to(dev), ids, lengths))
        if len(batches) >= max(1, args.calib_batches):
            break
    notes = [f"model: MhaCLIP, OpenCLIP layout on nn.MultiheadAttention (ImageBind's trunk structure; ImageBind "
             f"itself is not on PyPI), {checkpoint}: {c.image_size}px, patch {c.patch_size}, vision "
             f"{c.vision_layers}x{c.vision_width}, text {c.text_layers}x{c.text_width}, "
             f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters",
             f"images: {image_root(data)} ({len(ds)}), {len(names)} classes, prompt {args.template!r}"]
    return common.Task(name="imagebind", title="zero-shot top-1 on ImageNet", model=model, metric_name="top-1",
                       metric=metric, higher_is_better=True, probe=batches[:1], calibration_data=batches,
                       notes=notes)


def write_smoke(root: Path, seed: int) -> tuple[Path, Path, Path]:
    import torch

    from examples.imagebind.model import MhaCLIP, TowerConfig

    classes = ["n01440764", "n01443537", "n01484850"]
    names = ["tench", "goldfish", "great white shark"]
    data = common.write_image_folder(root / "imagenet" / "val", classes, per_class=2, size=(40, 48), seed=seed)
    labels = root / "imagenet" / "classnames.txt"
    labels.write_text("\n".join(names) + "\n")
    ckpt = root / "mhaclip-tiny"
    tok = common.train_tokenizer([f"a photo of a {n}." for n in names] * 4, ckpt, vocab_size=280,
                                 model_max_length=16)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(str(tok)))
    torch.manual_seed(seed)
    model = MhaCLIP(TowerConfig(embed_dim=16, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
                                vision_heads=1, context_length=16, vocab_size=vocab, text_width=64, text_layers=2,
                                text_heads=1))
    torch.save(model.state_dict(), ckpt / "open_clip_pytorch_model.bin")
    return ckpt, data.parent, labels


def main(argv=None) -> dict:
    p = common.make_parser("examples/imagebind/run.py", __doc__.splitlines()[0],
                           checkpoint="OpenCLIP / OpenAI CLIP ViT state dict, or its folder",
                           data="ImageNet validation images, ImageFolder layout (DATA/val/<wnid>/ or DATA/<wnid>/)")
    p.add_argument("--tokenizer", metavar="PATH", default=None,
                   help="local Hugging Face CLIP tokenizer folder (default: the checkpoint's folder)")
    p.add_argument("--labels", metavar="FILE", default=None, help="class names in folder order (.txt or .json)")
    p.add_argument("--template", default="a photo of a {}.", help="text of each class")
    p.add_argument("--quick-gelu", action="store_true", help="QuickGELU activations (OpenAI CLIP weights)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = common.parse_args(p, argv)
    if args.smoke:
        with common.workdir(args, "imagebind") as root:
            ckpt, data, labels = write_smoke(root, args.seed)
            args.batch_size = 4
            return common.run(build_task(ckpt / "open_clip_pytorch_model.bin", ckpt, data, labels, args), args)
    ckpt = Path(args.checkpoint)
    tokenizer = Path(args.tokenizer) if args.tokenizer else (ckpt if ckpt.is_dir() else ckpt.parent)
    return common.run(build_task(ckpt, tokenizer, Path(args.data), Path(args.labels) if args.labels else None, args),
                      args)


if __name__ == "__main__":
    main()
