"""The demo's pruning and clustering rows: the embedded default model pruned or clustered in one
shot on the calibration images (``edgeopt.prune`` / ``edgeopt.cluster``, data-aware), then
fine-tuned as PyTorch on the shipped training images with the structure held (the distillation
loop of the QAT row), then finished by the int8 path (``edgeopt demo``); and channel pruning.

Each fine-tuning is one pass over the shipped 10,000 training images, seeded. Measured on the
2,000 evaluation images (float 92.95%): training-time magnitude pruning with sparsity rising over
the first half of the pass reached 91.30% at 50% and 73.7% at 80% (lr 1e-3); starting from the
one-shot data-aware result (91.70% and 66.15% before fine-tuning) it reaches 92.35% and 86.5%.
Channel pruning of this small CNN recovers slowly on 10,000 images: half the channels 81.75%
after one pass and 85.85% after three, a quarter of them 90.75% after one (the row's setting).
The clustered rows hold their indices' entropy (``ClusterConfig.bits``) on average over the
model (``allocation="global"``): 16 values per channel at 2.5 bits reached 92.50% at 0.460x of
the dense int8 file's gzip size (2.75 bits in every layer 92.15% at 0.495x; plain k-means 93.00%
at 0.630x). The collaborative row exports the 50% row's model, clusters it in one shot at 1.75
bits on average (zeros kept), fine-tunes it for one pass, then trains it with QAT, zeros and
clusters kept, for one more: 92.25% at 0.348x (1.75 bits in every layer 91.60% at 0.343x).
The 50% and 80% rows come a second time with their fine-tuned weights clustered in one shot to
128 values per channel at a low mean entropy (``CODED``): zeros alone leave the nonzero int8
weights near 7 bits each, which holds gzip at 0.73x / 0.39x of the dense file.
"""

from __future__ import annotations

import logging
import pathlib
import time

import torch

from ..api import quantize
from ..compression.cluster import cluster
from ..compression.prune import prune
from ..config import ChannelPruneConfig, ClusterConfig, Int8Config, PruneConfig, QATConfig
from ..model_io import load_model
from .channels import prune_channels
from .clustering import prepare_clustering, strip
from .demo import BATCH, distill, fashion_cnn, training_images
from .demo import LEARNING_RATE as QAT_LEARNING_RATE
from .onnx_export import to_onnx
from .pruning import prepare_pruning
from .qat import convert, prepare_qat

logger = logging.getLogger(__name__)

#: The compressed rows' learning rate: above QAT's, since the weights left take over from the
#: removed ones (measured: 80% reached 86.5% at 1e-3, 83.85% at 3e-4; 50% 92.35% at 3e-4, 92.3% at 1e-4).
LEARNING_RATE = 3e-4
#: (label, one-shot pruning, fine-tuning learning rate). The unstructured rows take 50% / 80% of
#: all the weights, each layer's share from one data-aware ranking by each weight's output cost
#: relative to its layer's (``ranking="global"``): measured after fine-tuning, 92.50% / 91.10%
#: against 92.30% / 86.50% with every layer at the same share (one shot 92.65% / 90.35% against
#: 91.70% / 66.25%).
PRUNED = (("pruned 50% + int8", PruneConfig(sparsity=0.5, ranking="global", method="data-aware"), 3e-4),
          ("pruned 80% + int8", PruneConfig(sparsity=0.8, ranking="global", method="data-aware"), 1e-3),
          ("2:4 + int8", PruneConfig(pattern="2:4"), 3e-4))
#: the fine-tuned pruned models' nonzero weights held to a lower entropy before int8 (one shot,
#: zeros kept): 128 values per channel, the indices' mean entropy over the model at most ``bits``
#: (the zeros' share included). Zeros alone leave the nonzero int8 weights at about 7 bits each,
#: which holds gzip near 0.73x / 0.39x of the dense int8 file at 50% / 80%. Measured on the demo's
#: fine-tuned models (top-1 on the 2,000 evaluation images, gzip against dense int8; every layer
#: at the same share): 50% plain 92.30% 0.729x, at 4 / 3.5 / 3 bits 92.30% 0.663x, 92.15% 0.608x,
#: 92.25% 0.540x; 80% plain 86.50% 0.393x, at 2 / 1.75 / 1.5 bits 86.40% 0.373x, 86.70% 0.346x,
#: 86.20% 0.308x. With the shares from one ranking: 50% at 3 bits 92.60% 0.543x, 80% at 1.5 bits
#: 91.15% 0.311x.
CODED = {"pruned 50% + int8": ClusterConfig(clusters=128, bits=3.0, allocation="global"),
         "pruned 80% + int8": ClusterConfig(clusters=128, bits=1.5, allocation="global")}
CHANNEL_RATIO = 0.25
#: the clustered rows' codebooks: 16 values per channel, their indices held to a mean entropy a
#: deflate stream stores in about that many bits, shared out over the layers by their error
#: (``edgeopt.compression.rate``, ``allocation="global"``)
CLUSTERING = ClusterConfig(clusters=16, bits=2.5, allocation="global")
#: the collaborative row: half the weights are zero already (1 bit of the entropy), the rest share
#: the remaining bits
COLLABORATIVE = ClusterConfig(clusters=16, bits=1.75, allocation="global")


def _stem(label: str) -> str:
    return label.replace(" + ", "-").replace(" ", "-").replace("%", "").replace(":", "of").replace("/", "-")


class _Rows:
    """What every row shares: the float model, the training images, calibration, where to write."""

    def __init__(self, source, calibration, output_dir: pathlib.Path):
        self.float_onnx = load_model(source)
        self.images = training_images()[0]
        self.example = torch.from_numpy(self.images[:8])
        self.calibration, self.output_dir = calibration, output_dir
        self.names = ([v.name for v in self.float_onnx.graph.input], [v.name for v in self.float_onnx.graph.output])

    def teacher(self) -> torch.nn.Module:
        return fashion_cnn(self.float_onnx)

    def train(self, model, label: str, learning_rate: float = LEARNING_RATE) -> float:
        return distill(model, self.teacher(), self.images, learning_rate=learning_rate, description=label)

    def onnx(self, model: torch.nn.Module):
        return to_onnx(model, (self.example,), self.names)

    def finish(self, label: str, model, seconds: float, extra: dict | None = None):
        """Quantize the fine-tuned float model (PyTorch, or ONNX already) to int8 on the calibration images."""
        path = self.output_dir / f"fashion_cnn.{_stem(label)}.onnx"
        source = self.onnx(model) if isinstance(model, torch.nn.Module) else model
        result = quantize(source, Int8Config(), calibration=self.calibration)
        result.save(path)
        report = {k: v for k, v in result.report.items() if k != "plan"}
        report["fine_tuning"] = {"seconds": round(seconds, 1), "epochs": 1, "training_images": len(self.images),
                                 "batch": BATCH, **(extra or {})}
        return label, path, report


def compression_rows(source, calibration, output_dir: pathlib.Path) -> list[tuple[str, pathlib.Path, dict]]:
    """(label, int8 model path, report) of each pruning and clustering row, in the demo's order."""
    rows = _Rows(source, calibration, output_dir)
    found, half = [], None
    for label, config, learning_rate in PRUNED:
        started = time.perf_counter()
        one_shot = prune(rows.float_onnx, config, calibration=calibration).model
        model = prepare_pruning(fashion_cnn(one_shot), config)  # the one-shot zeros are the smallest weights
        seconds = time.perf_counter() - started + rows.train(model, label, learning_rate)
        model = strip(model)
        half = model if half is None else half
        found.append(rows.finish(label, model, seconds, {"learning_rate": learning_rate}))
        if label in CODED:
            found.append(_coded(rows, label, model, seconds, learning_rate))
    started = time.perf_counter()
    clustered = _clustered(rows, rows.float_onnx, CLUSTERING)
    seconds = time.perf_counter() - started + rows.train(clustered, "clustered 16/channel", 1e-4)
    found.append(rows.finish("clustered 16/channel + int8", strip(clustered), seconds, {"learning_rate": 1e-4}))
    found.append(_collaborative(rows, half))
    found.append(_channels(rows))
    return found


def _coded(rows: _Rows, label: str, pruned: torch.nn.Module, seconds: float, learning_rate: float):
    """The pruned row's fine-tuned model with its weights clustered in one shot (``CODED``), then int8."""
    config = CODED[label]
    started = time.perf_counter()
    coded = cluster(rows.onnx(pruned), config, calibration=rows.calibration).model
    seconds += time.perf_counter() - started
    return rows.finish(coded_label(label, config), coded, seconds, {"learning_rate": learning_rate, "bits": config.bits})


def coded_label(label: str, config: ClusterConfig) -> str:
    """``pruned 50% + int8`` -> ``pruned 50% + 128 clusters at 3 bits + int8``."""
    return label.replace(" + int8", f" + {config.clusters} clusters at {config.bits:g} bits + int8")


def _clustered(rows: _Rows, source, config: ClusterConfig) -> torch.nn.Module:
    """``source`` (ONNX) clustered in one shot on the calibration images, as PyTorch with its
    centroids trainable (``prepare_clustering`` adopts each layer's codebook and assignment as the
    one-shot search left them, so the rate each layer was given holds)."""
    one_shot = cluster(source, config, calibration=rows.calibration).model
    return prepare_clustering(fashion_cnn(one_shot), config)


def _collaborative(rows: _Rows, pruned: torch.nn.Module):
    """50% pruned, then 16 clusters (zeros kept), then QAT keeping both, straight to int8."""
    label = "pruned 50% + 16 clusters + QAT int8"
    started = time.perf_counter()
    clustered = _clustered(rows, rows.onnx(pruned), COLLABORATIVE)
    seconds = time.perf_counter() - started + rows.train(clustered, "clustering the pruned model")
    clustered = strip(clustered)
    qat = prepare_qat(clustered, rows.example, QATConfig(), calibration=rows.calibration,
                      input_names=rows.names[0], output_names=rows.names[1])
    seconds += rows.train(qat, "QAT keeping zeros and clusters", QAT_LEARNING_RATE)
    path = rows.output_dir / f"fashion_cnn.{_stem(label)}.onnx"
    result = convert(qat, path)
    report = {k: v for k, v in result.report.items() if k != "plan"}
    report["fine_tuning"] = {"seconds": round(seconds, 1), "epochs": 2, "training_images": len(rows.images),
                             "bits": COLLABORATIVE.bits}
    return label, path, report


def _channels(rows: _Rows):
    label = f"channel-pruned {100 * CHANNEL_RATIO:.0f}% + int8"
    pruned = prune_channels(rows.teacher(), rows.example, ChannelPruneConfig(ratio=CHANNEL_RATIO))
    seconds = rows.train(pruned.model, label, 1e-3)
    return rows.finish(label, pruned.model, seconds, {"macs": pruned.report["macs"],
                                                      "parameters": pruned.report["parameters"]})

