"""Fine-tune an ImageNet model on Fashion-MNIST (seeded, cached) and export float ONNX.

    python -m benchmarks.models.finetune mobilenet_v2|efficientnet_lite0 [--images 15000] [--epochs 1]

Writes benchmarks/.cache/<name>_fashion.pt and .onnx (not committed; rerun to recreate). On 2
cores MobileNetV2 at 96 px trains at about 23 ms per image, so the default budget (15,000 images,
one epoch) takes about 6 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import time

import numpy as np

from .. import fashion

CACHE = pathlib.Path(__file__).resolve().parents[1] / ".cache"
SIZE = 96
MODELS = ("mobilenet_v2", "efficientnet_lite0")
# mean, std of each model's input normalisation (EfficientNet-Lite's inputs are scaled to [-1, 1])
NORMALISATION = {"mobilenet_v2": (fashion.IMAGENET_MEAN, fashion.IMAGENET_STD),
                 "efficientnet_lite0": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def build(name: str):
    """The ImageNet model with a 10-class head, and the mean/std its inputs are normalised with."""
    import torch

    if name == "mobilenet_v2":
        from .mobilenet_v2 import pretrained

        model = pretrained()
        model.classifier[1] = torch.nn.Linear(1280, 10)
    elif name == "efficientnet_lite0":
        from .efficientnet_lite import pretrained

        model = pretrained(size=SIZE)
        model._fc = torch.nn.Linear(1280, 10)
    else:
        raise SystemExit(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return (model, *NORMALISATION[name])


def finetune(name: str, images: int, epochs: int, seed: int = 0) -> pathlib.Path:
    import torch

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    rng = np.random.default_rng(seed)
    model, mean, std = build(name)
    train_x, train_y = fashion.split("train")
    order = rng.permutation(len(train_x))[:images]
    batch = 32
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    steps = epochs * (len(order) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-3, total_steps=steps, pct_start=0.15)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        shuffled = rng.permutation(order)
        for i in range(len(shuffled) // batch):
            idx = shuffled[i * batch:(i + 1) * batch]
            x = torch.from_numpy(fashion.to_imagenet_input(train_x[idx], SIZE, mean, std))
            loss = loss_fn(model(x), torch.from_numpy(train_y[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if i % 100 == 0:
                print(f"epoch {epoch + 1} step {i}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    CACHE.mkdir(exist_ok=True)
    torch.save(model.state_dict(), CACHE / f"{name}_fashion.pt")
    onnx_path = CACHE / f"{name}_fashion.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(onnx_path), input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    info = {"model": name, "images": images, "epochs": epochs, "seed": seed, "size": SIZE,
            "seconds": round(time.time() - start), "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()}
    (CACHE / f"{name}_fashion.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return onnx_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=MODELS)
    parser.add_argument("--images", type=int, default=15000)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    finetune(args.model, args.images, args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
