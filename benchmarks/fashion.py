"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, prepared for ImageNet models."""

from __future__ import annotations

import gzip
import pathlib

import numpy as np

FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_idx(path: pathlib.Path) -> np.ndarray:
    """A gzip IDX file: 4 magic bytes (the last is the rank), big-endian uint32 dims, then uint8 data."""
    raw = gzip.decompress(path.read_bytes())
    rank = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=rank, offset=4).astype(int)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def split(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``train`` or ``t10k``: (uint8 images N x 28 x 28, int64 labels)."""
    if not (FASHION / f"{name}-images-idx3-ubyte.gz").exists():
        raise SystemExit("needs Debian's dataset-fashion-mnist: apt-get install -y dataset-fashion-mnist")
    images = read_idx(FASHION / f"{name}-images-idx3-ubyte.gz")
    labels = read_idx(FASHION / f"{name}-labels-idx1-ubyte.gz").astype(np.int64)
    return images, labels


def to_imagenet_input(images: np.ndarray, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 N x 28 x 28 -> float32 N x 3 x size x size: bilinear upsampling, grey to RGB, normalised."""
    import torch

    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.repeat(1, 3, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - mean_t) / std_t).numpy()
