"""Real photographs that installed packages ship (nothing is downloaded), and EfficientNet-Lite's preprocessing.

* scikit-image (``skimage.data``): the colour and grey photographs inside its wheel: ``chelsea`` (a cat),
  ``coffee``, ``astronaut``, ``rocket``, ``camera`` (the cameraman), ``coins``, ``moon``, ``brick``, ``grass``,
  ``gravel``, ``hubble_deep_field``, ``retina``, ``immunohistochemistry`` and the left view of
  ``stereo_motorcycle``. (Its other images are drawings, scans of text or fetched from the network.)
* scikit-learn: ``load_sample_images`` (``china``: a temple, ``flower``).
* matplotlib: ``sample_data/grace_hopper.jpg``.

scikit-image is optional: without it the three other photos are used and :func:`load_photos` says what it
skipped. Preprocessing is TensorFlow's EfficientNet-Lite evaluation: a centred square crop of
224/256 of the shorter side, resized (bicubic, antialiased) to 224 x 224, then ``(x - 127) / 128`` per
RGB channel (``efficientnet_lite_builder.py``'s MEAN_RGB / STDDEV_RGB); grey photos get three equal channels.
The class names are torchvision's ImageNet-1k categories (the weights enum's metadata: no download).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Photo", "SKIMAGE_PHOTOS", "EXPECTED", "load_photos", "stand_in_photos", "preprocess", "class_names",
           "IMAGE_SIZE", "MEAN", "STD"]

IMAGE_SIZE = 224
CROP_FRACTION = 224 / 256  # TensorFlow's CROP_PADDING = 32
MEAN, STD = 127.0, 128.0

#: skimage.data loaders of the photographs its wheel ships: name -> (loader, what it shows)
SKIMAGE_PHOTOS: dict[str, tuple[Callable[[Any], np.ndarray], str]] = {
    "chelsea": (lambda d: d.chelsea(), "a tabby cat"),
    "coffee": (lambda d: d.coffee(), "a cup of coffee"),
    "astronaut": (lambda d: d.astronaut(), "astronaut Eileen Collins"),
    "rocket": (lambda d: d.rocket(), "a rocket on its launch pad"),
    "motorcycle": (lambda d: d.stereo_motorcycle()[0], "a motorcycle"),
    "camera": (lambda d: d.camera(), "a cameraman with a tripod (grey)"),
    "coins": (lambda d: d.coins(), "coins (grey)"),
    "moon": (lambda d: d.moon(), "the moon's surface (grey)"),
    "brick": (lambda d: d.brick(), "a brick wall (grey)"),
    "grass": (lambda d: d.grass(), "grass (grey)"),
    "gravel": (lambda d: d.gravel(), "gravel (grey)"),
    "hubble_deep_field": (lambda d: d.hubble_deep_field(), "galaxies (Hubble)"),
    "retina": (lambda d: d.retina(), "a human retina"),
    "immunohistochemistry": (lambda d: d.immunohistochemistry(), "stained tissue (microscope)"),
}

#: photos whose full-precision class is obvious: the sanity check of weights and preprocessing
EXPECTED: dict[str, tuple[str, ...]] = {
    "chelsea": ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"),
    "coffee": ("espresso", "cup", "coffee mug"),
}


@dataclass(frozen=True)
class Photo:
    name: str
    source: str
    what: str
    pixels: np.ndarray  # (H, W) or (H, W, C) uint8


def _skimage_photos() -> tuple[list[Photo], list[str]]:
    data = importlib.import_module("skimage.data")
    photos, missing = [], []
    for name, (load, what) in SKIMAGE_PHOTOS.items():
        try:
            photos.append(Photo(name, "scikit-image", what, np.asarray(load(data))))
        except Exception:  # an older scikit-image fetches some of these from the network: leave them out
            missing.append(name)
    return photos, missing


def _other_photos() -> list[Photo]:
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    what = {"china": "a temple in China", "flower": "a flower"}
    photos = [Photo(Path(f).stem, "scikit-learn", what.get(Path(f).stem, "a photo"), np.asarray(img))
              for f, img in zip(samples.filenames, samples.images)]
    import matplotlib
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    if path.is_file():
        with Image.open(path) as im:
            photos.append(Photo("grace_hopper", "matplotlib", "Grace Hopper in uniform", np.asarray(im.convert("RGB"))))
    return photos


def load_photos() -> tuple[list[Photo], list[str]]:
    """The photos, and one line per package skipped (what, and how to install it)."""
    skipped: list[str] = []
    try:
        photos, missing = _skimage_photos()
    except ImportError:
        photos, missing = [], []
        skipped.append(f"scikit-image is not installed: its {len(SKIMAGE_PHOTOS)} photos (the cat among them) "
                       "were skipped (pip install 'scikit-image>=0.22')")
    if missing:
        skipped.append(f"scikit-image could not load {', '.join(missing)} offline (not in its wheel): skipped")
    return photos + _other_photos(), skipped


def stand_in_photos(count: int = 4, seed: int = 0) -> list[Photo]:
    """Smoke mode: small random images (one grey, odd sizes) through the same preprocessing."""
    rng = np.random.default_rng(seed)
    shapes = [(48, 64, 3), (70, 50), (64, 64, 4), (40, 90, 3)]
    return [Photo(f"stand-in {i}", "random", "random pixels",
                  rng.integers(0, 256, size=shapes[i % len(shapes)], dtype=np.uint8)) for i in range(count)]


def preprocess(pixels: np.ndarray, size: int = IMAGE_SIZE, *, mirror: bool = False) -> Tensor:
    """(3, size, size) float32: centre crop of 224/256 of the shorter side, bicubic resize, (x - 127) / 128."""
    from PIL import Image

    a = np.asarray(pixels)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] < 3 or a.dtype != np.uint8:
        raise ValueError(f"preprocess: expected an (H, W) or (H, W, 3|4) uint8 image, got {a.dtype} {a.shape}")
    h, w = a.shape[:2]
    crop = max(1, round(CROP_FRACTION * min(h, w)))
    top, left = (h - crop) // 2, (w - crop) // 2
    im = Image.fromarray(np.ascontiguousarray(a[top:top + crop, left:left + crop, :3]))
    im = im.resize((size, size), Image.Resampling.BICUBIC)  # PIL widens the filter when shrinking (antialiased)
    if mirror:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    t = torch.from_numpy(np.array(im, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return (t - MEAN) / STD


def class_names() -> list[str]:
    """ImageNet-1k class names in the weights' order (torchvision's metadata; nothing is downloaded)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
