"""One-shot weight clustering of an ONNX model: ``edgeopt.cluster(model, ClusterConfig(...),
calibration=None)``.

Selects layers as pruning does (:mod:`.layers`), clusters each weight's rows (output channels, or
the whole weight) with :mod:`.kmeans` and writes the clustered weights into a copy of the model.
With calibration data the k-means weighs each weight by its input's second moment and the weights
are then moved one input at a time onto their row's centroids, each move's output error pushed
onto the inputs not yet moved (:func:`.surgeon.sweep`), and each layer's output mean and spread
restored (:mod:`.recalibrate`: a row is scaled, so it keeps its values' count). The input model is untouched; the result
feeds ``edgeopt.quantize``, whose int8 path keeps at most ``clusters`` integers per channel.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..config import ClusterConfig
from ..errors import EdgeoptError
from ..model_io import load_model
from ..quantization.graph import GraphView
from ..quantization.prepare import name_nodes
from ..quantization.structure import distinct_per_row
from . import kmeans, recalibrate, surgeon
from .layers import CompressionResult, Layer, input_moments, replace, select

logger = logging.getLogger(__name__)


def cluster(model, config: ClusterConfig, calibration=None) -> CompressionResult:
    """Cluster ``model`` (a path or ``onnx.ModelProto``) as ``config`` says; ``calibration``
    (anything ``quantize`` reads) is needed by the data-aware method."""
    if not isinstance(config, ClusterConfig):
        raise EdgeoptError(f"config must be a ClusterConfig, got {type(config).__name__}")
    method = config.method if config.method != "auto" else ("data-aware" if calibration is not None else "nearest")
    if method == "data-aware" and calibration is None:
        raise EdgeoptError("method 'data-aware' needs calibration data (--data DATA.npz or an image folder)")
    source = load_model(model)
    clustered = onnx.ModelProto()
    clustered.CopyFrom(source)
    name_nodes(clustered)  # layers are told apart by name, as quantize's plans do
    view = GraphView(clustered)
    layers, skipped = select(view, config, "cluster")
    weights = {layer.weight: view.constant(layer.weight).astype(np.float32) for layer in layers}
    for layer in layers:
        if config.clusters > weights[layer.weight].size:
            raise EdgeoptError(f"clusters ({config.clusters}) is more than layer {layer.node.name!r} has weights "
                               f"({weights[layer.weight].size}); expected at most that")
    limit = config.max_calibration_samples
    moments, targets = {}, {}
    if method == "data-aware":
        moments = input_moments(clustered, layers, calibration, limit)
        if config.codebook != "layer":  # scaling a channel would give the layer more than one set of values
            targets = recalibrate.output_statistics(clustered, recalibrate.correctable(layers, view), calibration,
                                                    limit)
    new = {}
    for layer in layers:
        if method == "data-aware" and layer.node.name not in moments:
            skipped[layer.node.name] = "no input moments (too many inputs per output, or an unsupported geometry)"
            continue
        new[layer.weight] = _clustered(layer, weights[layer.weight], moments.get(layer.node.name), config)
    for name, value in new.items():
        replace(clustered, name, value)
    if targets and config.codebook != "layer":  # a channel's scale changes, its codebook does not
        recalibrate.recalibrate(clustered, [layer for layer in layers if layer.weight in new], targets, calibration,
                                limit)
    report = _report(layers, new, skipped, config, method)
    logger.info("clustered %d weights to at most %d values per output channel (%s codebook)", len(new),
                config.clusters, config.codebook)
    return CompressionResult(clustered, report)


def _clustered(layer: Layer, weight: np.ndarray, moments: np.ndarray | None, config: ClusterConfig) -> np.ndarray:
    rows = layer.rows(weight.astype(np.float64))  # G x R x D
    groups, outputs, depth = rows.shape
    flat = rows.reshape(groups * outputs, depth)
    importance = None if moments is None else np.repeat(np.einsum("gii->gi", moments), outputs, axis=0)
    if config.codebook == "scaled":
        found = kmeans.cluster_scaled(flat, config.clusters, config.init, importance, config.preserve_sparsity,
                                      config.seed)[0]
    elif config.codebook == "channel":
        found = kmeans.cluster_rows(flat, config.clusters, config.init, importance, config.preserve_sparsity,
                                    config.seed)
    else:  # one row of every weight
        whole = kmeans.cluster_rows(flat.reshape(1, -1), config.clusters, config.init,
                                    None if importance is None else importance.reshape(1, -1),
                                    config.preserve_sparsity, config.seed)
        found = kmeans.Clusters(np.repeat(whole.centroids, flat.shape[0], axis=0), whole.assignment.reshape(flat.shape),
                                whole.fixed_zero)
    values = found.values()
    if moments is not None:
        # a scaled row's largest weight stays on its codebook end: its scale, which int8 reads back
        pinned = np.abs(flat).argmax(axis=1) if config.codebook == "scaled" else None
        values = _compensated(rows, moments, found.centroids, config.preserve_sparsity, pinned, values)
    return layer.weight_of(values.reshape(rows.shape), weight.shape).astype(np.float32)


def _compensated(rows: np.ndarray, moments: np.ndarray, centroids: np.ndarray, keep_zeros: bool,
                 pinned: np.ndarray | None, nearest: np.ndarray) -> np.ndarray:
    """Each input column in turn moved onto its row's ``centroids`` ((G R) x K), the error pushed
    onward; the weights at ``pinned`` (a column per row) keep their ``nearest`` centroid."""
    groups, outputs, _ = rows.shape
    zeros = ((rows == 0) if keep_zeros else np.zeros(rows.shape, dtype=bool)).reshape(groups * outputs, -1)
    every = np.arange(groups * outputs)

    def target(i, column):
        snapped = kmeans.snap(column.reshape(-1), centroids, zeros[:, i])
        if pinned is not None:
            snapped = np.where(pinned == i, nearest[every, i], snapped)
        return snapped.reshape(groups, outputs)

    return surgeon.sweep(rows, moments, target)


def _report(layers, new, skipped, config: ClusterConfig, method: str) -> dict:
    per_layer = {}
    for layer in layers:
        if layer.weight in new:
            rows = layer.rows(new[layer.weight])
            per_layer[layer.node.name] = int(distinct_per_row(rows.reshape(-1, rows.shape[2])).max())
    return {"mode": "cluster", "config": config.to_dict(), "method": method,
            "max_distinct": max(per_layer.values(), default=0), "layers": per_layer, "skipped": dict(skipped)}
