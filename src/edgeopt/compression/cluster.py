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

from ..config import ClusterConfig
from ..errors import EdgeoptError
from ..quantization.structure import distinct_per_row
from . import kmeans, rate, surgeon
from .layers import CompressionResult, Layer, run, start

logger = logging.getLogger(__name__)


def cluster(model, config: ClusterConfig, calibration=None) -> CompressionResult:
    """Cluster ``model`` (a path or ``onnx.ModelProto``) as ``config`` says; ``calibration``
    (anything ``quantize`` reads) is needed by the data-aware method."""
    job = start(model, config, ClusterConfig, "cluster", "nearest", calibration)
    for layer in job.layers:
        size = job.weights[layer.weight].size
        if config.clusters > size:
            raise EdgeoptError(f"clusters ({config.clusters}) is more than layer {layer.node.name!r} has weights "
                               f"({size}); expected at most that")

    rates = {}

    def allocate(moments):
        """One rate for the model (``allocation="global"``): each layer's rate, before any moves."""
        parts = {}
        for layer in job.layers:
            if job.method != "data-aware" or layer.node.name in moments:
                _, flat, importance = _flat(layer, job.weights[layer.weight], moments.get(layer.node.name))
                parts[layer.node.name] = kmeans.scaled_rate_part(flat, config.clusters, config.init, importance,
                                                                 config.preserve_sparsity, config.seed)
        found = {name: part for name, part in parts.items() if part is not None}
        rates.update(zip(found, rate.allocate(list(found.values()), config.bits)))
        logger.debug("one rate for %d layers: %s", len(found), rates)

    def compute(layer, moments):
        return _clustered(layer, job.weights[layer.weight], moments, config, rates.get(layer.node.name))

    # restoring the output statistics scales each channel: a "layer" codebook would gain values
    new = run(job, compute, calibration, config.max_calibration_samples, recalibrated=config.codebook != "layer",
              prepare=allocate if config.bits is not None and config.allocation == "global" else None)
    report = _report(job.layers, new, job.skipped, config, job.method)
    logger.info("clustered %d weights to at most %d values per output channel (%s codebook)", len(new),
                config.clusters, config.codebook)
    return CompressionResult(job.model, report)


def _flat(layer: Layer, weight: np.ndarray, moments: np.ndarray | None):
    """The weight's rows (G x R x D), the same as (G R) x D, and each weight's importance (its
    input's second moment)."""
    rows = layer.rows(weight.astype(np.float64))
    importance = None if moments is None else np.repeat(np.einsum("gii->gi", moments), rows.shape[1], axis=0)
    return rows, rows.reshape(-1, rows.shape[2]), importance


def _clustered(layer: Layer, weight: np.ndarray, moments: np.ndarray | None, config: ClusterConfig,
               at_rate: float | None = None) -> np.ndarray:
    rows, flat, importance = _flat(layer, weight, moments)
    if config.codebook == "scaled":
        bits = None if at_rate is not None else config.bits
        found = kmeans.cluster_scaled(flat, config.clusters, config.init, importance, config.preserve_sparsity,
                                      config.seed, bits, at_rate)[0]
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
        values = _compensated(rows, moments, found, config.preserve_sparsity, pinned, values)
    return layer.weight_of(values.reshape(rows.shape), weight.shape).astype(np.float32)


def _compensated(rows: np.ndarray, moments: np.ndarray, found: kmeans.Clusters, keep_zeros: bool,
                 pinned: np.ndarray | None, nearest: np.ndarray) -> np.ndarray:
    """Each input column in turn moved onto its row's centroids (``found``, (G R) x K), the error
    pushed onward (an entropy-constrained codebook's penalty weighed against the input's second
    moment, as its k-means did); the weights at ``pinned`` (a column per row) keep their
    ``nearest`` centroid."""
    groups, outputs, _ = rows.shape
    centroids = found.centroids
    zeros = ((rows == 0) if keep_zeros else np.zeros(rows.shape, dtype=bool)).reshape(groups * outputs, -1)
    every = np.arange(groups * outputs)

    def target(i, column):
        snapped = kmeans.snap(column.reshape(-1), centroids, zeros[:, i], np.repeat(moments[:, i, i], outputs),
                              found.penalty)
        if pinned is not None:
            snapped = np.where(pinned == i, nearest[every, i], snapped)
        return snapped.reshape(groups, outputs)

    return surgeon.sweep(rows, moments, target)


def _report(layers, new, skipped, config: ClusterConfig, method: str) -> dict:
    """Per layer the most values an output channel holds and the index entropy (bits per weight,
    what ``bits`` holds down; ``index_bits`` is their mean over all clustered weights)."""
    per_layer, bits, sizes = {}, {}, {}
    for layer in layers:
        if layer.weight in new:
            rows = layer.rows(new[layer.weight])
            flat = rows.reshape(-1, rows.shape[2])
            per_layer[layer.node.name] = int(distinct_per_row(flat).max())
            bits[layer.node.name] = round(rate.index_entropy(flat, config.codebook), 4)
            sizes[layer.node.name] = flat.size
    mean = sum(bits[name] * sizes[name] for name in bits) / max(sum(sizes.values()), 1)
    return {"mode": "cluster", "config": config.to_dict(), "method": method,
            "max_distinct": max(per_layer.values(), default=0), "layers": per_layer, "bits": bits,
            "index_bits": round(mean, 4), "skipped": dict(skipped)}
