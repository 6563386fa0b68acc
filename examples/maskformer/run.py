"""MaskFormer: mIoU on ADE20k, full precision vs simulated (INT-FP-QSim's ``eval_maskformer.py``).

    python examples/maskformer/run.py --checkpoint ~/models/maskformer-swin-base-ade \\
        --data ~/data/ADEChallengeData2016
    python examples/maskformer/run.py --smoke

``--checkpoint``: a local Hugging Face MaskFormer folder (model and image-processor config).
``--data``: the ADE20k scene-parsing release (``images/validation/*.jpg`` and
``annotations/validation/*.png``). Each image goes through the checkpoint's image processor, the
model and ``post_process_semantic_segmentation`` at the annotation's size; annotation value 0
("other") is ignored and 1..150 become classes 0..149 (reduce labels), as INT-FP-QSim did. mIoU is
intersection over union per class accumulated over the whole set, averaged over the classes that occur
(MIT's semseg / mmseg convention); pixel accuracy is printed too. Smoke mode saves a tiny random
MaskFormer (Swin backbone, DETR decoder) and a few random images with block-shaped masks in that layout.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from examples import common  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def find_pairs(data: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, annotation) pairs of ``split``: ``images/<split>/X.jpg`` with ``annotations/<split>/X.png``."""
    img_dir, ann_dir = data / "images" / split, data / "annotations" / split
    if not img_dir.is_dir() or not ann_dir.is_dir():
        raise SystemExit(f"--data {data}: expected images/{split}/ and annotations/{split}/ (ADEChallengeData2016)")
    pairs = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        ann = ann_dir / (img.stem + ".png")
        if ann.is_file():
            pairs.append((img, ann))
    if not pairs:
        raise SystemExit(f"--data {data}: no image in images/{split} has an annotation in annotations/{split}")
    return pairs


def build_task(checkpoint: Path, data: Path, args) -> common.Task:
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, MaskFormerForInstanceSegmentation

    dev = common.device_of(args)
    pairs = find_pairs(data, args.split)[: args.limit]
    proc = AutoImageProcessor.from_pretrained(str(checkpoint), local_files_only=True)
    model = MaskFormerForInstanceSegmentation.from_pretrained(str(checkpoint), local_files_only=True).to(dev).eval()
    num_classes = model.config.num_labels

    def inputs(img_path: Path) -> dict:
        enc = proc(images=Image.open(img_path).convert("RGB"), return_tensors="pt")
        return {k: v.to(dev) for k, v in enc.items()}

    last = {}

    def metric() -> float:
        iou = common.IoU(num_classes, ignore_index=-1)
        for img, ann in pairs:
            label = np.asarray(Image.open(ann), dtype=np.int64) - 1  # 0 ("other") -> -1, ignored
            with torch.no_grad():
                out = model(**inputs(img))
            pred = proc.post_process_semantic_segmentation(out, target_sizes=[label.shape])[0]
            iou.update(pred.cpu().numpy(), label)
        last["pixel_accuracy"] = iou.pixel_accuracy()
        return iou.miou()

    def pixel_accuracy() -> tuple[list[str], dict]:
        return ([f"pixel accuracy (simulated run): {last['pixel_accuracy']:.4f}"],
                {"pixel_accuracy_sim": last["pixel_accuracy"]})

    probe = [inputs(pairs[0][0])]
    notes = [f"checkpoint: {checkpoint} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
             f"{num_classes} classes)", f"images: {data}/images/{args.split} ({len(pairs)} with annotations)"]
    return common.Task(name="maskformer", title="mIoU on ADE20k", model=model, metric_name="mIoU", metric=metric,
                       higher_is_better=True, probe=probe, output=lambda o: o.masks_queries_logits, top1=False,
                       calibration_data=[inputs(img) for img, _ in pairs[: args.calib_batches]], notes=notes,
                       extra=pixel_accuracy)


def write_smoke(root: Path, seed: int, num_labels: int = 4) -> tuple[Path, Path]:
    """A tiny random MaskFormer with its image processor, and 3 random images with block masks."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import (
        DetrConfig,
        MaskFormerConfig,
        MaskFormerForInstanceSegmentation,
        MaskFormerImageProcessor,
        SwinConfig,
    )

    data = root / "ADEChallengeData2016"
    rng = np.random.default_rng(seed)
    for sub in ("images", "annotations"):
        (data / sub / "validation").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        h, w = 48, 64
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            data / "images" / "validation" / f"ADE_val_{i:08d}.jpg")
        ann = np.zeros((h, w), dtype=np.uint8)  # 0: "other", ignored
        for _ in range(4):
            y, x = rng.integers(0, h - 8), rng.integers(0, w - 8)
            ann[y:y + rng.integers(8, 24), x:x + rng.integers(8, 24)] = rng.integers(1, num_labels + 1)
        Image.fromarray(ann).save(data / "annotations" / "validation" / f"ADE_val_{i:08d}.png")
    ckpt = root / "maskformer-tiny"
    torch.manual_seed(seed)
    swin = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                      window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    detr = DetrConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5)
    cfg = MaskFormerConfig(backbone_config=swin, decoder_config=detr, fpn_feature_size=32, mask_feature_size=32,
                           num_labels=num_labels, num_queries=5)
    MaskFormerForInstanceSegmentation(cfg).save_pretrained(str(ckpt))
    MaskFormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=32,
                             do_reduce_labels=True, ignore_index=255).save_pretrained(str(ckpt))
    return ckpt, data


def main(argv=None) -> dict:
    p = common.make_parser("examples/maskformer/run.py", __doc__.splitlines()[0],
                           checkpoint="local Hugging Face MaskFormer folder (e.g. maskformer-swin-base-ade)",
                           data="ADEChallengeData2016 folder (images/ and annotations/)")
    p.add_argument("--split", default="validation", help="the images/<split> and annotations/<split> folders")
    args = common.parse_args(p, argv)
    return common.evaluate(args, "maskformer", write_smoke, build_task)


if __name__ == "__main__":
    main()
