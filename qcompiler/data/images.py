"""Loading photos as model inputs with an explicit preprocessing spec.

The spec follows what model cards state: resize (the shorter side, or to an
exact size), center crop, scale, mean/std normalization, channel order and
layout. Example, torchvision ImageNet models:
``Preprocess(resize_shorter=256, crop=(224, 224), mean=(123.675, 116.28, 103.53),
std=(58.395, 57.12, 57.375))``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from PIL import Image

from qcompiler.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# PIL modes of 8 bits a channel, which convert to RGB or L without losing anything; 16-bit and float
# pixels (modes I, I;16, F) would be clipped to 255 by that conversion
EIGHT_BIT_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


@dataclass(frozen=True)
class Preprocess:
    resize_shorter: int | None = None          # keep aspect, shorter side to this
    resize: tuple[int, int] | None = None      # exact (height, width)
    crop: tuple[int, int] | None = None        # center crop (height, width)
    scale: float = 1.0                         # multiply pixel values (0..255) first
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channels: Literal["RGB", "BGR", "L"] = "RGB"   # L: grayscale, for a one-channel input
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            if len(getattr(self, name)) not in (1, 3):
                raise UsageError(f"{name} has {len(getattr(self, name))} values; give 3 (R,G,B) or 1 for all channels")
        if self.channels == "L" and (len(set(self.mean)) > 1 or len(set(self.std)) > 1):
            raise UsageError(f"mean {list(self.mean)}, std {list(self.std)}: grayscale images have one channel; "
                             "give one value each")
        if not all(value > 0 for value in self.std):
            raise UsageError(f"std {list(self.std)}: every value divides the pixels, so each must be positive")
        if not self.scale > 0:
            raise UsageError(f"scale {self.scale}: give a positive factor, e.g. 0.00392156862745098 (1/255)")
        sizes = [("resize", self.resize), ("crop", self.crop), ("resize_shorter", (self.resize_shorter,))]
        for name, size in sizes:
            if size is not None and None not in size and not all(side > 0 for side in size):
                raise UsageError(f"{name} {size}: sizes are positive numbers of pixels")


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so runs are repeatable."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: Path, spec: Preprocess) -> np.ndarray:
    """One preprocessed image as float32, without the batch axis."""
    try:
        with Image.open(path) as image:
            if image.mode not in EIGHT_BIT_MODES:
                raise UsageError(f"{Path(path).name} has pixels of mode {image.mode} (16-bit or float); qcompile "
                                 "reads 8-bit images: convert it, or give the inputs as .npy")
            image = image.convert("L" if spec.channels == "L" else "RGB")
            image = _resize(image, spec)
            pixels = np.asarray(image, dtype=np.float32).reshape(image.height, image.width, -1)
    except OSError as exc:
        raise UsageError(f"{Path(path).name} is not a readable image ({exc}); remove it from the folder") from exc
    if spec.crop is not None:
        pixels = _center_crop(pixels, spec.crop, Path(path).name)
    if spec.channels == "BGR":
        pixels = pixels[..., ::-1]
    depth = pixels.shape[-1]
    mean, std = (np.asarray(values[:depth], np.float32) for values in (spec.mean, spec.std))
    pixels = (pixels * spec.scale - mean) / std
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    return np.ascontiguousarray(pixels, dtype=np.float32)


def load_batch(paths: Sequence[Path], spec: Preprocess) -> np.ndarray:
    return np.stack([load_image(p, spec) for p in paths])


def _resize(image: Image.Image, spec: Preprocess) -> Image.Image:
    if spec.resize is not None:
        height, width = spec.resize
        return image.resize((width, height), Image.BILINEAR)
    if spec.resize_shorter is not None:
        width, height = image.size
        ratio = spec.resize_shorter / min(width, height)
        return image.resize((max(1, round(width * ratio)), max(1, round(height * ratio))), Image.BILINEAR)
    return image


def _center_crop(pixels: np.ndarray, size: tuple[int, int], name: str) -> np.ndarray:
    height, width = size
    if pixels.shape[0] < height or pixels.shape[1] < width:
        raise UsageError(f"{name}: {pixels.shape[1]}x{pixels.shape[0]} is smaller than the {width}x{height} crop; "
                         "resize first (--resize-shorter or --resize)")
    top = (pixels.shape[0] - height) // 2
    left = (pixels.shape[1] - width) // 2
    return pixels[top: top + height, left: left + width]
