"""Cut the Fashion-MNIST training subset edgeopt ships for fine-tuning the default model (QAT in
``edgeopt demo``): 10,000 images with labels, a seeded draw from the training images the default
model was trained on, disjoint from the shipped calibration images (the last 500 training images)
and from the evaluation images (the test set).

Run:  python tools/make_training_subset.py   (reads Debian's dataset-fashion-mnist)
Writes src/edgeopt/assets/fashion_mnist_train.npz.
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import fashion  # noqa: E402
from tools.train_default_model import ASSETS, CALIBRATION_COUNT  # noqa: E402

COUNT = 10_000
SEED = 0


def main() -> int:
    images, labels = fashion.split("train")
    pool = len(images) - CALIBRATION_COUNT  # the calibration images are the last ones
    chosen = np.sort(np.random.default_rng(SEED).choice(pool, COUNT, replace=False))
    path = ASSETS / "fashion_mnist_train.npz"
    np.savez_compressed(path, images=images[chosen], labels=labels[chosen].astype(np.uint8), indices=chosen.astype(np.uint16))
    print(f"wrote {path} ({path.stat().st_size} bytes, {COUNT} images, classes {np.bincount(labels[chosen])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
