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

from qcompiler.errors import QCompileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Preprocess:
    resize_shorter: int | None = None          # keep aspect, shorter side to this
    resize: tuple[int, int] | None = None      # exact (height, width)
    crop: tuple[int, int] | None = None        # center crop (height, width)
    scale: float = 1.0                         # multiply pixel values (0..255) first
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    channels: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name so runs are repeatable."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image(path: Path, spec: Preprocess) -> np.ndarray:
    """One preprocessed image as float32, without the batch axis."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image = _resize(image, spec)
            pixels = np.asarray(image, dtype=np.float32)
    except OSError as exc:
        raise QCompileError(f"{Path(path).name} is not a readable image ({exc})") from exc
    if spec.crop is not None:
        pixels = _center_crop(pixels, spec.crop)
    if spec.channels == "BGR":
        pixels = pixels[..., ::-1]
    pixels = (pixels * spec.scale - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
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


def _center_crop(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = size
    if pixels.shape[0] < height or pixels.shape[1] < width:
        raise QCompileError(f"image of {pixels.shape[1]}x{pixels.shape[0]} is smaller than the {width}x{height} crop")
    top = (pixels.shape[0] - height) // 2
    left = (pixels.shape[1] - width) // 2
    return pixels[top: top + height, left: left + width]
