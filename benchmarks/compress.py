"""Pruning, clustering and both with QAT, fine-tuned, against the anchors on the same model, data
and epochs: ``python -m benchmarks.compress [--only default-cnn mobilenet-v2-fashion] [--images N]``.

Every fine-tuned variant is distilled from the float model (cross-entropy to its probabilities,
Adam, batch 32) over training images in a seeded order with seeded flips, by the case's recipe
for its step (RECIPES: learning rate, passes, which images, constant or cosine); the anchors get
the 50% row's recipe. BatchNorm keeps its running statistics except in the channel-pruned rows
(their layers' inputs changed, so the statistics are re-estimated while fine-tuning):

* pruned 50% / 80% / 2:4: ``edgeopt.prune`` (data-aware, one shot, on the calibration images;
  50% and 80% of all the weights with each layer's share from one model-wide ranking), then
  ``edgeopt.torch.prepare_pruning`` holds those zeros while fine-tuning, ``strip``;
* pruned 50% / 80% + 128 clusters: the fine-tuned pruned model clustered in one shot as the demo
  does (``edgeopt.torch.compression_demo.CODED``: 3 / 1.5 bits on average, zeros kept);
* ... + QAT int8: the coded 50% / 80% models, the 2:4 one and the clustered one trained on
  with ``prepare_qat`` (zeros and clusters kept: sparsity- and cluster-preserving QAT) for the
  case's QAT pass, ``convert``;
* 16 clusters per channel: ``edgeopt.cluster`` (data-aware, entropy-constrained to the bits the
  label names), then ``prepare_clustering`` trains the codebook and scales;
* pruned 50% + 16 clusters + QAT: the fine-tuned 50% model exported and clustered the same way
  (zeros kept), fine-tuned, then ``prepare_qat`` (zeros and clusters kept) for one more pass,
  ``convert``;
* channel-pruned: ``edgeopt.torch.prune_channels`` (Torch-Pruning's dependency graph; CHANNELS),
  fine-tuned with BatchNorm training;
* anchors: ``torch.nn.utils.prune.l1_unstructured`` and NNCF's ``nncf.prune`` (local magnitude),
  50% of every Conv/Linear, the same fine-tuning, their masks removed.

Each float result goes through ``edgeopt.quantize(Int8Config())`` on the case's calibration
images (the QAT rows are their own int8). Top-1 on the case's 10,000 test images; sizes as ``gzip -9``
gives them, against the dense int8 model's; zeros kept and distinct integers per channel read back
from the int8 file; latencies at 1 thread interleaved in one run. Writes benchmarks/compress.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fnmatch
import itertools
import json
import pathlib
import time

import numpy as np

from edgeopt.config import ClusterConfig

HERE = pathlib.Path(__file__).resolve().parent
CASES = ("default-cnn", "mobilenet-v2-fashion")
IMAGES = {"default-cnn": 10_000, "mobilenet-v2-fashion": 6_000}
BATCH, SEED = 32, 0
#: each case's channel pruning (``ChannelPruneConfig`` fields). MobileNetV2 loses 60% of each
#: layer's channels, counts kept at multiples of 16: ONNX Runtime's int8 depthwise kernels are
#: slower than its float ones at 8 to 56 channels, so the int8 model gains little on the float one
#: once the layers are thin. Measured at 1 thread (ratios to dense float in one run; float / int8):
#: every layer at 50%, multiples of 8: 0.43x / 0.35x; at multiples of 16 0.39x / 0.30x; one ranking
#: at 50% 0.36x / 0.29x; 60% 0.31x / 0.29x (0.28x the MACs), top-1 91.47% float after two passes
#: over every training image (float 91.66%, the model of 2026-12-04).
CHANNELS = {"default-cnn": {"ratio": 0.5}, "mobilenet-v2-fashion": {"ratio": 0.6, "round_to": 16}}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One fine-tuning step: Adam at ``learning_rate`` (falling along a half cosine to 0 with
    ``cosine``), ``epochs`` passes over the case's training images (``"subset"``) or over every
    Fashion-MNIST training image but the 500 calibration ones (``"all"``); BatchNorm with its
    running statistics (``batch_norm="frozen"``) or in training mode, updating them
    (``"training"``: what a model whose channels were removed needs, its statistics no longer fit)."""

    learning_rate: float
    epochs: int = 1
    images: str = "subset"
    cosine: bool = False
    batch_norm: str = "frozen"

    def __post_init__(self):
        if self.batch_norm not in ("frozen", "training"):
            raise ValueError(f"batch_norm must be 'frozen' or 'training', got {self.batch_norm!r}")

    def describe(self, count: int) -> str:
        norm = ", BatchNorm training" if self.batch_norm == "training" else ""
        return f"{self.epochs} x {count:,} images at {self.learning_rate:g}{' cosine' if self.cosine else ''}{norm}"


#: each case's fine-tuning per step: "pruned" (50% and the anchors), "pruned 80%", "2:4", "clusters"
#: (the clustered row and the collaborative row's clustering), "qat" (the collaborative row's
#: last pass), "channels". Measured on MobileNetV2 at 50% (float 91.95%, one shot 89.75%; float
#: top-1 of the fine-tuned model): one pass of 6,000 images at 1e-4 91.00%, at 3e-5 91.12% (the
#: int8 row at 3e-4 was 89.18%, the anchors' 88.88%; at 3e-5 90.83% and 86.98%: magnitude
#: pruning without compensation needs the larger steps); a second pass over the same images lost
#: 0.4 point, one pass over 12,000 at 3e-5 cosine gave 91.01%, no flips 91.21%. On the default
#: CNN at 80% (float 91.73%): one pass of its 10,000 images at 3e-4 84.05%, four passes over all
#: 59,500 at 1e-3 with the rate falling along a cosine step by epoch 90.86%. Channel pruning of
#: MobileNetV2 at 50% (every layer, multiples of 8; top-1 of the float model on the first 2,000
#: test images, float 92.65%): one shot 10.0% (BatchNorm statistics re-estimated 15.05%); two
#: passes of 6,000 images at 3e-4 with BatchNorm frozen 83.05% (re-estimated first), with it
#: training 77.55%; at 1e-3 cosine frozen 9.7% (diverged), training 90.15%, over 12,000 90.95%,
#: one pass over all 59,500 91.80%; at 60% (multiples of 16, CHANNELS) two passes over all 91.47%
#: on the 10,000 (float 91.66%). MobileNetV2 at 2:4 (float 91.66%, one shot 89.52%): one pass of
#: 6,000 images at 3e-5 90.09% after int8 (compress.json of 2026-12-04), one pass over all 59,500 at
#: 3e-4 cosine 91.61% float (measured on its own, before int8, the same day).
RECIPES = {
    "default-cnn": {"pruned": Recipe(3e-4), "pruned 80%": Recipe(1e-3, 4, "all", True), "2:4": Recipe(3e-4),
                    "clusters": Recipe(1e-4), "qat": Recipe(3e-5), "channels": Recipe(1e-3, 1, "all", True, "training")},
    "mobilenet-v2-fashion": {"pruned": Recipe(3e-5), "pruned 80%": Recipe(3e-4), "2:4": Recipe(3e-4, 1, "all", True),
                             "clusters": Recipe(3e-5), "qat": Recipe(3e-5),
                             "channels": Recipe(1e-3, 2, "all", True, "training")},
}

#: the clustered row's codebook (16 values per channel, indices held to a mean of 2.5 bits of
#: entropy shared out over the layers) and the collaborative row's (the pruned half of the weights
#: is 1 bit of its entropy already)
CLUSTERING = ClusterConfig(clusters=16, bits=2.5, allocation="global")
COLLABORATIVE = ClusterConfig(clusters=16, bits=1.75, allocation="global")
PCQAT = f"pruned 50% + 16 clusters at {COLLABORATIVE.bits} bits + QAT int8"


class _Case:
    """The case's float model in PyTorch, its data, and the fine-tuning loop every row uses."""

    def __init__(self, name: str, count: int, work: pathlib.Path):
        from . import cases
        from .qat import _float_model, _training_images

        self.case = cases.CASES[name]()
        self.teacher, self.preprocess = _float_model(name, self.case)
        self.images = _training_images(name, count)
        self.calibration = self.case.calibration
        first = next(iter(self.calibration.arrays.values()))
        import torch

        self.example = torch.from_numpy(first[:1])
        self.name, self.work, self.paths, self.info = name, work, {"float": str(self.case.model)}, {}
        self.recipes: list[str] = []  # the fine-tuning of the row being made

    def student(self):
        return copy.deepcopy(self.teacher)

    def tune(self, model, step: str) -> float:
        """Fine-tune ``model`` by the case's recipe for ``step`` (RECIPES), noted for the row."""
        from edgeopt.torch.demo import distill

        recipe = RECIPES[self.name][step]
        images = self.images if recipe.images == "subset" else _all_training_images()
        self.recipes.append(recipe.describe(len(images)))
        return distill(model, self.teacher, images, self.preprocess, epochs=recipe.epochs, batch=BATCH,
                       learning_rate=recipe.learning_rate, seed=SEED, freeze_batch_norm=recipe.batch_norm == "frozen",
                       cosine=recipe.cosine,
                       description=f"fine-tuning ({step})")

    def onnx(self, model):
        from edgeopt.torch.onnx_export import to_onnx

        return to_onnx(model, (self.example,), (["image"], ["logits"]))

    def int8(self, label: str, model, seconds: float, **info) -> None:
        """Export ``model`` (float; PyTorch, or ONNX already), quantize it, record both paths."""
        import torch

        import edgeopt
        from edgeopt.model_io import save_model

        stem = self.stem()
        save_model(self.onnx(model) if isinstance(model, torch.nn.Module) else model, f"{stem}.float.onnx")
        edgeopt.quantize(f"{stem}.float.onnx", edgeopt.Int8Config(), calibration=self.calibration).save(
            f"{stem}.int8.onnx")
        self.record(label, stem, seconds, **info)

    def stem(self) -> pathlib.Path:
        """Where the next row's files go (``.float.onnx``, ``.int8.onnx``)."""
        return self.work / f"{len(self.paths)}"

    def record(self, label: str, stem: pathlib.Path, seconds: float, **info) -> None:
        """The row ``label``: its int8 file, its float file (zeros to check), its fine-tuning."""
        self.paths[label] = f"{stem}.int8.onnx"
        self.info[label] = {"seconds": round(seconds, 1), "float_path": f"{stem}.float.onnx",
                            "fine_tuning": self.take_recipes(), **info}

    def take_recipes(self) -> str:
        """The fine-tuning steps since the last row, as the table shows them."""
        found, self.recipes = " then ".join(self.recipes), []
        return found

    def one_shot_start(self, compressed_onnx):
        """The case's PyTorch model with the weights of a one-shot compressed ONNX copy."""
        if self.name == "default-cnn":
            from edgeopt.torch.demo import fashion_cnn

            return fashion_cnn(compressed_onnx)
        return _load_onnx_weights(self.student(), compressed_onnx, self.example)


def _all_training_images() -> np.ndarray:
    """Every Fashion-MNIST training image but the last 500 (the calibration images), uint8."""
    from . import fashion

    images, _ = fashion.split("train")
    return images[:-500]


def _load_onnx_weights(model, compressed, example):
    """Copy a one-shot compressed ONNX model's Conv/Gemm weights into ``model``: its export lists
    the same layers in the same order (BatchNorm folded by the exporter for MobileNetV2's eval
    graph, so the folded weight goes into the Conv and the BatchNorm is reset to identity)."""
    import torch
    from onnx import numpy_helper

    weights = {t.name: numpy_helper.to_array(t) for t in compressed.graph.initializer}
    nodes = [node for node in compressed.graph.node if node.op_type in ("Conv", "Gemm")]
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    if len(nodes) != len(layers):
        raise SystemExit(f"{len(nodes)} Conv/Gemm nodes against {len(layers)} layers")
    norms = {id(conv): norm for conv, norm in _conv_norms(model)}
    with torch.no_grad():
        for layer, node in zip(layers, nodes):
            weight = torch.from_numpy(np.array(weights[node.input[1]]))
            layer.weight.copy_(weight.reshape(layer.weight.shape))
            bias = torch.from_numpy(np.array(weights[node.input[2]])) if len(node.input) > 2 else None
            norm = norms.get(id(layer))
            if norm is not None:  # the ONNX Conv holds conv + BatchNorm: make the BatchNorm the identity
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
                norm.weight.fill_(1.0)
                norm.bias.copy_(bias if bias is not None else torch.zeros_like(norm.bias))
                if layer.bias is not None:
                    layer.bias.zero_()
            elif bias is not None:
                layer.bias.copy_(bias)
    return model.eval()


def _conv_norms(model):
    """(Conv2d, the BatchNorm2d right after it) pairs, in the order the model holds them."""
    import torch

    modules = list(model.modules())
    return [(a, b) for a, b in itertools.pairwise(modules)
            if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d)]


def _variants(c: _Case) -> None:
    import edgeopt
    import edgeopt.torch as et
    from edgeopt.torch.compression_demo import CODED, coded_label

    started = time.perf_counter()
    edgeopt.quantize(c.case.model, edgeopt.Int8Config(), calibration=c.calibration).save(c.work / "int8.onnx")
    c.paths["int8"] = str(c.work / "int8.onnx")
    c.info["int8"] = {"seconds": round(time.perf_counter() - started, 1)}
    half = None
    for label, config, step in (("pruned 50% + int8", _ranked(0.5), "pruned"), ("pruned 80% + int8", _ranked(0.8), "pruned 80%"),
                                ("2:4 + int8", edgeopt.PruneConfig(pattern="2:4"), "2:4")):
        print(f"  {label}", flush=True)
        started = time.perf_counter()
        one_shot = edgeopt.prune(c.case.model, config, calibration=c.calibration).model
        model = et.prepare_pruning(c.one_shot_start(one_shot), config)
        c.tune(model, step)
        model = et.strip(model)
        half = model if half is None else half
        c.int8(label, model, time.perf_counter() - started)
        recipe = c.info[label]["fine_tuning"]
        if label in CODED:  # the same model, its weights held to fewer bits (one shot, zeros kept)
            coded = edgeopt.cluster(c.onnx(model), CODED[label], calibration=c.calibration).model
            c.int8(coded_label(label, CODED[label]), coded, time.perf_counter() - started)
            c.info[coded_label(label, CODED[label])]["fine_tuning"] = recipe
            model = c.one_shot_start(coded)
        _qat_row(c, _qat_label(coded_label(label, CODED[label]) if label in CODED else label), model, started,
                 recipe)
    print("  clusters", flush=True)
    started = time.perf_counter()
    model = _clustered(c, c.case.model, CLUSTERING)
    c.tune(model, "clusters")
    label, model = f"16 clusters/channel at {CLUSTERING.bits} bits + int8", et.strip(model)
    c.int8(label, model, time.perf_counter() - started)
    _qat_row(c, _qat_label(label), model, started, c.info[label]["fine_tuning"])
    print("  pruned + clusters + QAT", flush=True)
    started = time.perf_counter()
    model = _clustered(c, c.onnx(half), COLLABORATIVE)
    c.tune(model, "clusters")
    _qat_row(c, PCQAT, et.strip(model), started)
    _channel_rows(c)
    _anchors(c)


def _qat_label(label: str) -> str:
    """The row for ``label``'s model trained with QAT: "pruned 50% + int8" -> "pruned 50% + QAT int8"."""
    return label.removesuffix(" + int8") + " + QAT int8"


def _qat_row(c: _Case, label: str, model, started: float, fine_tuned: str = "") -> None:
    """``model`` (float PyTorch, pruned or clustered) through QAT keeping its zeros and clusters
    (``prepare_qat`` reads them from the weights) for the case's "qat" step, then ``convert``;
    ``fine_tuned``: the fine-tuning of the row ``model`` comes from, shown before QAT's."""
    import edgeopt
    import edgeopt.torch as et
    from edgeopt.model_io import save_model
    from edgeopt.torch.qat import float_onnx

    print(f"  {label}", flush=True)
    if fine_tuned:  # the row it starts from took its fine-tuning steps already
        c.recipes.insert(0, fine_tuned)
    qat = et.prepare_qat(model, c.example, edgeopt.QATConfig(), calibration=c.calibration,
                         input_names=["image"], output_names=["logits"])
    c.tune(qat, "qat")
    stem = c.stem()
    et.convert(qat, f"{stem}.int8.onnx")
    save_model(float_onnx(qat), f"{stem}.float.onnx")
    c.record(label, stem, time.perf_counter() - started)


def _ranked(sparsity: float):
    """Unstructured pruning at ``sparsity`` of all the weights, each layer's share from one
    data-aware ranking (``edgeopt.prune``), held while fine-tuning (``prepare_pruning``)."""
    import edgeopt

    return edgeopt.PruneConfig(sparsity=sparsity, ranking="global", method="data-aware")


def _clustered(c: _Case, source, config):
    """``source`` (ONNX) clustered in one shot on the calibration images, as the case's PyTorch
    model with its centroids trainable (each layer's codebook and assignment adopted as found)."""
    import edgeopt
    import edgeopt.torch as et

    one_shot = edgeopt.cluster(source, config, calibration=c.calibration).model
    return et.prepare_clustering(c.one_shot_start(one_shot), config)


def _channel_rows(c: _Case) -> None:
    import edgeopt
    import edgeopt.torch as et

    print("  channels", flush=True)
    started = time.perf_counter()
    config = edgeopt.ChannelPruneConfig(**CHANNELS[c.name])
    pruned = et.prune_channels(c.teacher, c.example, config)
    c.tune(pruned.model, "channels")
    label = f"channel-pruned {100 * config.ratio:.0f}% + int8"
    c.int8(label, pruned.model, time.perf_counter() - started, macs=pruned.report["macs"],
           parameters=pruned.report["parameters"])
    c.paths[f"channel-pruned {100 * config.ratio:.0f}% (float)"] = c.info[label]["float_path"]


def _anchors(c: _Case) -> None:
    import torch
    import torch.nn.utils.prune  # not imported with torch

    print("  anchors", flush=True)
    started = time.perf_counter()
    model = c.student()
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    for layer in layers:
        torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
    c.tune(model, "pruned")
    for layer in layers:
        torch.nn.utils.prune.remove(layer, "weight")
    c.int8("torch.nn.utils.prune 50% + int8", model, time.perf_counter() - started)
    try:
        import nncf

        from .qat import NNCFRoot

        started = time.perf_counter()
        model = nncf.prune(NNCFRoot(c.student()), nncf.PruneMode.UNSTRUCTURED_MAGNITUDE_LOCAL, ratio=0.5,
                           examples_inputs=c.example)
        c.tune(model, "pruned")
        model = nncf.strip(model, example_input=c.example, strip_format=nncf.StripFormat.IN_PLACE)  # masks applied
        c.int8("nncf.prune 50% + int8", model, time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - an anchor that fails is recorded, not fatal
        c.info["nncf.prune 50% + int8"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}


def run_case(name: str, count: int, work: pathlib.Path) -> dict:
    from edgeopt.measure import file_size

    from .__main__ import hits, interleaved_latency, outputs_of
    from .prune import _kept

    c = _Case(name, count, work)
    _variants(c)
    labels = c.case.evaluation.labels
    right = {label: hits("top1", outputs_of(path, c.case.evaluation), None, labels) for label, path in c.paths.items()}
    latency = interleaved_latency(c.paths, c.case.evaluation, threads=1, rounds=10, runs=30)
    dense = file_size(c.paths["int8"])["gzip_bytes"]
    rows = []
    for label, path in c.paths.items():
        info = dict(c.info.get(label, {}))
        float_path = info.pop("float_path", None)
        kept = _kept(float_path, path) if float_path and label.endswith("int8") else {}
        size = file_size(path)
        rows.append({"variant": label, "top1": float(np.mean(right[label])), "latency_ms": latency[label],
                     "latency_vs_float": latency[label]["median"] / latency["float"]["median"],
                     "raw_bytes": size["raw_bytes"], "gzip_bytes": size["gzip_bytes"],
                     "gzip_vs_dense_int8": size["gzip_bytes"] / dense, **kept, **info})
    failed = {label: info["error"] for label, info in c.info.items() if "error" in info}
    return {"case": name, "title": c.case.title, "model": str(c.case.model), "training_images": len(c.images),
            "rows": rows, "failed": failed}


def section(path: pathlib.Path) -> list[str]:
    """RESULTS.md's fine-tuned compression tables from compress.json."""
    from .runs import heading
    if not path.exists():
        return []
    run = json.loads(path.read_text())
    lines = ["## Pruning and clustering, fine-tuned", "",
             (f"Each case's command and date are under its title; the last run's machine: {run['machine']}. "
             "Distillation from the float model (Adam, batch 32, seeded; BatchNorm frozen unless the fine-tuning "
             "column says it trains), as each row's fine-tuning column says; see "
             "benchmarks/compress.py for each row's recipe. Latency: ONNX Runtime, 1 thread, interleaved, median; gzip against the dense "
             "int8 model's; zeros kept and distinct integers per channel read back from the int8 file."), "",
             ("TFMOT's numbers, quoted (not rerun here): with TFMOT 0.8.1 and the TFLite converter on a small "
             "Fashion-MNIST CNN on these machines (issue 10), 50% pruning + int8 gave 0.72x of the int8 model's gzip "
             "size, 16 clusters + int8 0.60x, pruning 50% + 16 clusters + QAT 0.45x, and pruning never lowered "
             "latency; its published MobileNetV2 (ImageNet) results are 71.77% -> 69.64% top-1 at 50% sparsity and "
             "71.78% -> 69.74% with 32 clusters on every convolution (12.38 -> 4.05 MB zipped)."), ""]
    for case in run["cases"]:
        base = case["rows"][0]
        lines += [heading(case, f"{case['training_images']} training images"), "",
                  f"`{case.get('command', run['command']).strip()}`, {case.get('date', run['date'])}", "",
                  ("| variant | top-1 | change | latency ms (x float) | gzip KB | gzip vs dense int8 | zeros kept "
                  "| max distinct int8 per channel | MACs | fine-tuning | seconds |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in case["rows"]:
            kept = "" if row.get("zeros_kept") is None else f"{100 * row['zeros_kept']:.2f}%"
            macs = "" if "macs" not in row else f"{row['macs'][1] / 1e6:.1f}M of {row['macs'][0] / 1e6:.1f}M"
            lines.append(f"| {row['variant']} | {100 * row['top1']:.2f}% | {100 * (row['top1'] - base['top1']):+.2f} | "
                         f"{row['latency_ms']['median']:.3f} ({row['latency_vs_float']:.2f}x) | "
                         f"{row['gzip_bytes'] / 1000:.1f} | {row['gzip_vs_dense_int8']:.3f}x | {kept} | "
                         f"{row.get('max_distinct_per_channel', '')} | {macs} | {row.get('fine_tuning', '')} | "
                         f"{row.get('seconds', '')} |")
        for label, error in case.get("failed", {}).items():
            lines.append(f"\n{label} failed: {error}")
        lines += ["", *_targets(case), ""]
    return lines


#: issue 10's targets: (what the row's label starts with, ``*`` standing for any text; what is
#: checked; its bound; "at most" or "at least"); "change" is top-1 against the float row in points. Each target is checked on every
#: row whose label starts so: the pruned rows' on the plain rows, on the same models with their
#: weights coded to fewer bits, and on both trained with QAT.
TARGETS = (
    ("pruned 50% + int8", "change", -0.3, "at least"), ("pruned 50% + int8", "gzip_vs_dense_int8", 0.65, "at most"),
    ("pruned 80% + int8", "change", -1.0, "at least"), ("pruned 80% + int8", "gzip_vs_dense_int8", 0.33, "at most"),
    ("pruned 50% + 128 clusters", "change", -0.3, "at least"),
    ("pruned 50% + 128 clusters", "gzip_vs_dense_int8", 0.65, "at most"),
    ("pruned 80% + 128 clusters", "change", -1.0, "at least"),
    ("pruned 80% + 128 clusters", "gzip_vs_dense_int8", 0.33, "at most"),
    ("2:4 + ", "change", -0.5, "at least"),
    ("16 clusters/channel", "change", -0.5, "at least"), ("16 clusters/channel", "gzip_vs_dense_int8", 0.5, "at most"),
    ("16 clusters/channel", "max_distinct_per_channel", 16, "at most"),
    ("pruned 50% + 16 clusters", "change", -0.5, "at least"),
    ("pruned 50% + 16 clusters", "gzip_vs_dense_int8", 0.40, "at most"),
    ("pruned 50% + 16 clusters", "zeros_kept", 1.0, "at least"),
    ("pruned 50% + 16 clusters", "max_distinct_per_channel", 16, "at most"),
)
#: MobileNetV2's channel pruning, float and int8: latency against dense float, and top-1
CHANNEL_TARGETS = (
    ("channel-pruned * (float)", "latency_vs_float", 0.5, "at most"), ("channel-pruned * (float)", "change", -0.5, "at least"),
    ("channel-pruned * + int8", "latency_vs_float", 0.3, "at most"), ("channel-pruned * + int8", "change", -0.5, "at least"),
)
#: how the targets table names each checked number
MEASURES = {"change": "top-1 change (points)", "gzip_vs_dense_int8": "gzip vs dense int8",
            "max_distinct_per_channel": "max distinct int8 per channel", "zeros_kept": "zeros kept",
            "latency_vs_float": "latency vs float"}


def _targets(case: dict) -> list[str]:
    """The issue's targets for this case, each with the measured number and whether it holds."""
    rows, base = case["rows"], case["rows"][0]
    lines = ["Issue 10's targets on this case (changes against the float row):", "",
             "| target | measured | met |", "|---|---|---|"]
    targets = TARGETS + (CHANNEL_TARGETS if case["case"] == "mobilenet-v2-fashion" else ())
    for (start, key, bound, side), row in ((t, r) for t in targets for r in rows
                                           if fnmatch.fnmatchcase(r["variant"], t[0] + "*")):
        value = 100 * (row["top1"] - base["top1"]) if key == "change" else row.get(key)
        held = value is not None and (value <= bound if side == "at most" else value >= bound)
        shown = "" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"| {row['variant']}: {MEASURES[key]} {'<=' if side == 'at most' else '>='} {bound:g} | {shown} | "
                     f"{'yes' if held else '**no**'} |")
    return lines


def main(argv=None) -> int:
    import torch

    from .runs import command_line, run_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--images", type=int, default=None, help="training images per case (default: IMAGES)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    run_cases(HERE / "compress.json", command_line("compress", argv), args.only, CASES,
              lambda name, folder: run_case(name, args.images or IMAGES[name], folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
