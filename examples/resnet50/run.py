"""ResNet50: top-1 on ImageNet, full precision vs simulated (INT-FP-QSim's README example).

    python examples/resnet50/run.py --checkpoint ~/models/resnet50-0676ba61.pth --data ~/data/imagenet
    python examples/resnet50/run.py --smoke

``--checkpoint``: a torchvision state dict (``.pth``) for ``--arch`` (default ``resnet50``; any
torchvision classification model name works). ``--data``: ImageNet validation images in ``ImageFolder``
layout (``DATA/val/<wnid>/*`` or ``DATA/<wnid>/*``); with the 1000 class folders, sorted folder order is
torchvision's class order. Images: resize to ``--resize``, centre crop ``--crop``, ImageNet mean/std.
Smoke mode saves a tiny ResNet (the resnet50 bottleneck design with one block per stage and narrow
bottlenecks, ``--arch resnet50-tiny``) and a folder of random images, and runs the same code.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(arch: str, num_classes: int):
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    if arch == "resnet50-tiny":  # resnet50's blocks, 1 per stage, bottlenecks a quarter as wide
        return ResNet(Bottleneck, [1, 1, 1, 1], num_classes=num_classes, width_per_group=16)
    try:
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except ValueError as exc:
        raise SystemExit(f"--arch {arch}: {exc}") from None


def load_model(arch: str, checkpoint: Path):
    import torch

    sd = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd.get("model", sd))
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    fc = [v for k, v in sd.items() if k.endswith("fc.weight") or k.endswith("classifier.1.weight")
          or k.endswith("heads.head.weight")]
    model = build_model(arch, fc[-1].shape[0] if fc else 1000)
    model.load_state_dict(sd)
    return model


def build_task(arch: str, checkpoint: Path, data: Path, args) -> common.Task:
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Subset
    from torchvision.datasets import ImageFolder

    dev = common.device_of(args)
    model = load_model(arch, checkpoint).to(dev).eval()
    tf = T.Compose([T.Resize(args.resize), T.CenterCrop(args.crop), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    root = data / "val" if (data / "val").is_dir() else data
    ds = ImageFolder(str(root), transform=tf)
    if args.limit:  # an even spread over the classes
        ds = Subset(ds, list(range(0, len(ds), max(1, len(ds) // args.limit)))[: args.limit])
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=False, num_workers=args.workers)

    def metric() -> float:
        correct = total = 0
        with torch.no_grad():
            for img, target in loader:
                correct += int((model(img.to(dev)).argmax(-1).cpu() == target).sum())
                total += target.numel()
        return correct / total

    batches = []
    for img, _ in loader:
        batches.append(img.to(dev))
        if len(batches) >= max(1, args.calib_batches):
            break
    notes = [f"model: torchvision {arch}, {checkpoint} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
             "parameters)", f"images: {root} ({len(ds)}), resize {args.resize}, centre crop {args.crop}"]
    return common.Task(name="resnet50", title="top-1 on ImageNet", model=model, metric_name="top-1",
                       metric=metric, higher_is_better=True, probe=batches[:1], calibration_data=batches,
                       notes=notes)


def write_smoke(root: Path, seed: int) -> tuple[Path, Path]:
    import torch

    data = common.write_image_folder(root / "imagenet" / "val", ["n01440764", "n01443537", "n01484850"],
                                     per_class=2, size=(72, 80), seed=seed)
    torch.manual_seed(seed)
    ckpt = root / "resnet50-tiny.pth"
    torch.save(build_model("resnet50-tiny", 3).state_dict(), ckpt)
    return ckpt, data.parent


def main(argv=None) -> dict:
    p = common.make_parser("examples/resnet50/run.py", __doc__.splitlines()[0],
                           checkpoint="torchvision state dict (.pth) of --arch",
                           data="ImageNet validation images, ImageFolder layout (DATA/val/<wnid>/ or DATA/<wnid>/)")
    p.add_argument("--arch", default="resnet50", help="torchvision model name")
    p.add_argument("--resize", type=int, default=256, help="shorter image side before the crop")
    p.add_argument("--crop", type=int, default=224, help="centre crop size")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = common.parse_args(p, argv)
    if args.smoke:
        args.arch, args.resize, args.crop, args.batch_size = "resnet50-tiny", 64, 64, 3
    return common.evaluate(args, "resnet50", write_smoke, lambda ckpt, data, a: build_task(a.arch, ckpt, data, a))


if __name__ == "__main__":
    main()
