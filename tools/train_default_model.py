"""Train edgeopt's embedded default model: a small CNN on real Fashion-MNIST.

Reads the Debian package ``dataset-fashion-mnist`` (``apt-get install dataset-fashion-mnist``),
trains with a fixed seed on one thread layout, exports float ONNX and cuts the shipped subsets:

* calibration: the last 500 training images, which training never sees;
* evaluation: the first 2,000 test images with their labels.

Run:  python tools/train_default_model.py  (needs the ``torch`` extra; about 10 minutes on 2 cores)
Writes src/edgeopt/assets/fashion_cnn.onnx, fashion_mnist_subsets.npz and fashion_cnn.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import time

import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import fashion  # noqa: E402  (the repository's IDX reader)

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "src" / "edgeopt" / "assets"
CALIBRATION_COUNT = 500
EVALUATION_COUNT = 2000
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def load_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = fashion.split(name)
    return images, labels.astype(np.uint8)


def build_model():
    import torch.nn as nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=ASSETS)
    args = parser.parse_args(argv)

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    train_x, train_y = load_split("train")
    test_x, test_y = load_split("t10k")
    fit_x, fit_y = train_x[:-CALIBRATION_COUNT], train_y[:-CALIBRATION_COUNT]
    calib_x = train_x[-CALIBRATION_COUNT:]

    def to_tensor(images):
        return torch.from_numpy(images.astype(np.float32)[:, None] / 255.0)

    model = build_model()
    batch = 128
    steps = args.epochs * (len(fit_x) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(fit_x))
        start = time.time()
        for i in range(len(fit_x) // batch):
            idx = order[i * batch:(i + 1) * batch]
            images = to_tensor(fit_x[idx])
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = loss_fn(model(images), torch.from_numpy(fit_y[idx].astype(np.int64)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(to_tensor(test_x[j:j + 1000])).argmax(1) for j in range(0, 10000, 1000)])
        accuracy = float((pred.numpy() == test_y).mean())
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test top-1 {accuracy:.4f}, {time.time() - start:.0f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / "fashion_cnn.onnx"
    example = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(model, (example,), str(onnx_path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    np.savez_compressed(args.out / "fashion_mnist_subsets.npz",
                        calibration_images=calib_x, evaluation_images=test_x[:EVALUATION_COUNT],
                        evaluation_labels=test_y[:EVALUATION_COUNT])
    info = {
        "model": "fashion_cnn.onnx", "input": "image", "input_shape": [1, 1, 28, 28],
        "preprocessing": "uint8 pixels / 255, layout NCHW, no mean/std",
        "classes": CLASSES, "seed": args.seed, "epochs": args.epochs,
        "float_top1_full_test_set": accuracy,
        "calibration": f"last {CALIBRATION_COUNT} training images (not used for training)",
        "evaluation": f"first {EVALUATION_COUNT} test images",
        "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
    }
    (args.out / "fashion_cnn.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
