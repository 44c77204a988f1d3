"""Quantization-aware training against float, post-training int8 and NNCF's QAT:
``python -m benchmarks.qat [--only default-cnn ...] [--images N]``.

Every fine-tuned variant gets the same model, the same training images in the same seeded order
with the same flips, the same loss (cross-entropy to the float model's predicted probabilities),
optimizer (Adam), learning rate, batch size and one epoch:

* float fine-tuned: the float model itself (the control: what fine-tuning alone does);
* edgeopt QAT: ``edgeopt.torch.prepare_qat`` (its post-training plan on the case's calibration
  images), the loop, ``edgeopt.torch.convert`` to int8;
* NNCF QAT: ``nncf.quantize`` on the PyTorch model (the same calibration images), the loop,
  ``nncf.strip``, ``torch.onnx.export`` (QDQ).

Post-training int8 is ``edgeopt.quantize(Int8Config())`` on the float ONNX model. Top-1 is on the
case's evaluation images (10,000 Fashion-MNIST test images), with the paired sign test of
``benchmarks.__main__``; latencies are measured interleaved in one run; the int8 kernels ONNX
Runtime runs are read from its optimized graph. Writes benchmarks/qat.json, then RESULTS.md is
rendered again from results.json (the QAT section comes from qat.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import pathlib
import tempfile
import time

import numpy as np

from . import fashion

HERE = pathlib.Path(__file__).resolve().parent
CASES = ("default-cnn", "mobilenet-v2-fashion", "efficientnet-lite0-fashion")
#: The fine-tuning every variant gets (edgeopt's demo uses the same for the default CNN).
BATCH, LEARNING_RATE, EPOCHS, SEED = 32, 3e-5, 1, 0
#: Training images per case (the default CNN's are the 10,000 the package ships; the others a
#: seeded draw from the training images the calibration set does not hold).
IMAGES = {"default-cnn": 10_000, "mobilenet-v2-fashion": 4_000, "efficientnet-lite0-fashion": 4_000}


def _float_model(name: str, case):
    """The case's float model in PyTorch and how its input is made from uint8 images."""
    import torch

    if name == "default-cnn":
        from edgeopt.model_io import load_model
        from edgeopt.torch.demo import fashion_cnn

        return fashion_cnn(load_model(case.model)), lambda images: torch.from_numpy(
            images[:, None].astype(np.float32) / 255.0)
    from .models.finetune import CACHE, SIZE, build

    model_name = {"mobilenet-v2-fashion": "mobilenet_v2", "efficientnet-lite0-fashion": "efficientnet_lite0"}[name]
    model, mean, std = build(model_name)
    model.load_state_dict(torch.load(CACHE / f"{model_name}_fashion.pt"))
    return model.eval(), lambda images: torch.from_numpy(fashion.to_imagenet_input(images, SIZE, mean, std))


def _training_images(name: str, count: int) -> np.ndarray:
    if name == "default-cnn":
        from edgeopt.torch.demo import training_images

        images, _ = training_images()
        return (images[:count, 0] * 255.0).round().astype(np.uint8)
    train_x, _ = fashion.split("train")
    pool = len(train_x) - 500  # the calibration images are the last 500
    return train_x[np.sort(np.random.default_rng(SEED).choice(pool, count, replace=False))]


#: BatchNorm layers run with their running statistics during fine-tuning (``--batch-norm frozen``),
#: or with batch statistics, updating them (``training``).
BATCH_NORM = {"mode": "frozen"}


def fine_tune(model, teacher, images: np.ndarray, preprocess) -> float:
    """One epoch of distillation from ``teacher``, the same batches and flips for every variant
    (the demo's loop, at the benchmark's batch and learning rate)."""
    from edgeopt.torch.demo import distill

    return distill(model, teacher, images, preprocess, epochs=EPOCHS, batch=BATCH, learning_rate=LEARNING_RATE,
                   seed=SEED, freeze_batch_norm=BATCH_NORM["mode"] == "frozen")


def NNCFRoot(net):
    """``net`` wrapped: NNCF 3.4 registers its hook storage as a child of the root module, which an
    nn.Sequential root then runs as a layer."""
    import torch

    class Root(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.net = inner

        def forward(self, x):
            return self.net(x)

    return Root(net)


def _nncf_qat(model, teacher, images, preprocess, calibration, path: pathlib.Path) -> float:
    import nncf
    import torch

    batches = [torch.from_numpy(calibration[i:i + 50]) for i in range(0, len(calibration), 50)]
    quantized = nncf.quantize(NNCFRoot(model), nncf.Dataset(batches), subset_size=len(calibration))
    seconds = fine_tune(quantized, teacher, images, preprocess)
    stripped = nncf.strip(quantized, example_input=batches[0][:1])
    torch.onnx.export(stripped, (batches[0][:1],), str(path), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    return seconds


def _kernels(path: str) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime runs (its optimized model, fusions applied)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(pathlib.Path(folder) / "optimized.onnx")
        ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        counts: dict[str, int] = {}
        for node in onnx.load(options.optimized_model_filepath).graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _fake_quant_agreement(qat, evaluation, int8_outputs) -> tuple[float, bool]:
    """Top-1 agreement of the trained QAT model in PyTorch (eval mode) with its ONNX Runtime int8
    model, and whether every logit is equal."""
    import torch

    name = next(iter(evaluation.arrays))
    with torch.no_grad():
        logits = np.concatenate([qat.eval()(torch.from_numpy(feed[name])).numpy() for feed in evaluation.batches(256)])
    return float(np.mean(logits.argmax(1) == int8_outputs[0].argmax(1))), bool(np.array_equal(logits, int8_outputs[0]))


def _qat_variant(teacher, preprocess, images, case, calibration, config, path: pathlib.Path):
    """edgeopt's QAT with ``config``: the prepared model and its fine-tuning seconds."""
    import torch

    import edgeopt.torch as et

    qat = et.prepare_qat(copy.deepcopy(teacher), torch.from_numpy(calibration[:8]), config,
                         calibration=case.calibration, input_names=["image"], output_names=["logits"])
    seconds = fine_tune(qat, teacher, images, preprocess)
    et.convert(qat, path)
    return qat, seconds


def _overrides(text: str) -> dict:
    """``key=value`` -> {key: value}, the value read as JSON (``true``, ``0``, ``null``) or text."""
    key, _, value = text.partition("=")
    try:
        return {key: json.loads(value)}
    except ValueError:
        return {key: value}


def run_case(name: str, count: int, work: pathlib.Path, configs: tuple[str, ...] = ()) -> dict:
    import torch

    import edgeopt

    from . import cases
    from .__main__ import hits, interleaved_latency, outputs_of, paired

    case = cases.CASES[name]()
    teacher, preprocess = _float_model(name, case)
    images = _training_images(name, count)
    calibration = next(iter(case.calibration.arrays.values()))
    paths, seconds, extra = {"float": str(case.model)}, {}, {}
    started = time.perf_counter()
    edgeopt.quantize(case.model, edgeopt.Int8Config(), calibration=case.calibration).save(work / "ptq.onnx")
    paths["edgeopt int8 (post-training)"], seconds["edgeopt int8 (post-training)"] = str(work / "ptq.onnx"), \
        time.perf_counter() - started
    student = copy.deepcopy(teacher)
    seconds["float fine-tuned"] = fine_tune(student, teacher, images, preprocess)
    from edgeopt.torch.onnx_export import to_onnx

    edgeopt.model_io.save_model(to_onnx(student, (torch.from_numpy(calibration[:1]),), (["image"], ["logits"])),
                                work / "float_ft.onnx")
    paths["float fine-tuned"] = str(work / "float_ft.onnx")
    qat, seconds["edgeopt QAT int8"] = _qat_variant(teacher, preprocess, images, case, calibration,
                                                    edgeopt.QATConfig(), work / "qat.onnx")
    paths["edgeopt QAT int8"] = str(work / "qat.onnx")
    for number, text in enumerate(configs):
        label = f"edgeopt QAT int8 ({text})"
        _, seconds[label] = _qat_variant(teacher, preprocess, images, case, calibration,
                                         edgeopt.QATConfig(**_overrides(text)), work / f"qat{number}.onnx")
        paths[label] = str(work / f"qat{number}.onnx")
    seconds["NNCF QAT int8"] = _nncf_qat(copy.deepcopy(teacher), teacher, images, preprocess, calibration,
                                         work / "nncf.onnx")
    paths["NNCF QAT int8"] = str(work / "nncf.onnx")
    outputs = {label: outputs_of(path, case.evaluation) for label, path in paths.items()}
    labels = case.evaluation.labels
    right = {label: hits("top1", out, outputs["float"], labels) for label, out in outputs.items()}
    timed = ("float", "edgeopt int8 (post-training)", "edgeopt QAT int8", "NNCF QAT int8")
    latency = interleaved_latency({k: v for k, v in paths.items() if k in timed}, case.evaluation,
                                  threads=1, rounds=10, runs=50)
    ours = "edgeopt QAT int8"
    extra["fake_quant_top1_agreement"], extra["fake_quant_logits_equal"] = \
        _fake_quant_agreement(qat, case.evaluation, outputs[ours])
    kernels = {label: _kernels(paths[label]) for label in ("edgeopt int8 (post-training)", ours)}
    rows = []
    for label in paths:
        rows.append({"variant": label, "top1": float(np.mean(right[label])),
                     "seconds": round(seconds.get(label, 0.0), 1),
                     "latency_ms": latency.get(label), "size_bytes": pathlib.Path(paths[label]).stat().st_size,
                     "against": {other: paired(right[ours], right[other]) for other in paths if other != ours}
                     if label == ours else None})
    return {"case": name, "title": case.title, "model": str(case.model), "training_images": len(images),
            "evaluation_samples": len(labels),
            "rows": rows, "kernels": kernels, "same_kernels": kernels[ours] == kernels["edgeopt int8 (post-training)"],
            **extra}


def main(argv=None) -> int:
    import torch

    from .runs import command_line, run_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--images", type=int, default=None, help="training images per case (default: IMAGES)")
    parser.add_argument("--batch-norm", choices=("frozen", "training"), default="frozen",
                        help="BatchNorm during fine-tuning: running statistics (frozen) or batch statistics")
    parser.add_argument("--configs", nargs="*", default=[],
                        help="more edgeopt QAT rows, each a QATConfig field=value (freeze_bn_after=0 learn_scales=true)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    BATCH_NORM["mode"] = args.batch_norm
    fine_tuning = {"batch": BATCH, "learning_rate": LEARNING_RATE, "epochs": EPOCHS, "optimizer": "Adam",
                   "loss": "cross-entropy to the float model's probabilities", "seed": SEED,
                   "batch_norm": args.batch_norm}
    run_cases(HERE / "qat.json", command_line("qat", argv), args.only, CASES,
              lambda name, folder: run_case(name, args.images or IMAGES[name], folder, tuple(args.configs)),
              {"fine_tuning": fine_tuning})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
