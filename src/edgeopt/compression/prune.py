"""One-shot pruning of an ONNX model: ``edgeopt.prune(model, PruneConfig(...), calibration=None)``.

Selects the Conv, Gemm and MatMul nodes with constant float weights (``config.layers``,
``config.exclude``), lays each weight out as rows (outputs x inputs, inputs in the order the
pattern groups them: a Conv's input channels innermost, so N:M groups and 1x4 blocks run along
channels), computes the new weights (:mod:`.masks` by magnitude, or :mod:`.surgeon` on the input
second moments measured on ``calibration``), and writes them into a copy of the model. The input
model is untouched; the result feeds ``edgeopt.quantize``, whose int8 path keeps the zeros.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..config import PruneConfig, n_of_m
from ..errors import EdgeoptError
from ..model_io import load_model, save_model
from ..quantization.graph import GraphView, attribute
from . import masks, surgeon

logger = logging.getLogger(__name__)

PRUNABLE = ("Conv", "Gemm", "MatMul")


@dataclass
class PruningResult:
    model: onnx.ModelProto
    report: dict = field(default_factory=dict)

    def save(self, path) -> None:
        save_model(self.model, path)


@dataclass(frozen=True)
class _Layer:
    node: onnx.NodeProto
    weight: str
    #: a Conv's groups (1 otherwise): rows are (groups, outputs per group, inputs)
    groups: int

    def rows(self, weight: np.ndarray) -> np.ndarray:
        """(groups, outputs per group, inputs) with input channels innermost for a Conv."""
        if self.node.op_type == "Conv":
            moved = np.moveaxis(weight, 1, -1)  # O x kh x kw x C
        elif self.node.op_type == "Gemm" and attribute(self.node, "transB", 0):
            moved = weight
        else:
            moved = weight.T
        return moved.reshape(self.groups, moved.shape[0] // self.groups, -1)

    def weight_of(self, rows: np.ndarray, shape: tuple) -> np.ndarray:
        if self.node.op_type == "Conv":
            return np.moveaxis(rows.reshape((shape[0],) + tuple(shape[2:]) + (shape[1],)), -1, 1)
        if self.node.op_type == "Gemm" and attribute(self.node, "transB", 0):
            return rows.reshape(shape)
        return rows.reshape(shape[::-1]).T

    def natural_order(self, shape: tuple) -> np.ndarray | None:
        """For a Conv: the permutation from the moments' input order (C, kh, kw) to the rows' (kh, kw, C)."""
        if self.node.op_type != "Conv":
            return None
        channels, kernel = shape[1], int(np.prod(shape[2:]))
        return np.arange(channels * kernel).reshape(channels, kernel).T.ravel()


def prune(model, config: PruneConfig, calibration=None) -> PruningResult:
    """Prune ``model`` (a path or ``onnx.ModelProto``) as ``config`` says; ``calibration``
    (anything ``quantize`` reads) is needed by the data-aware method."""
    if not isinstance(config, PruneConfig):
        raise EdgeoptError(f"config must be a PruneConfig, got {type(config).__name__}")
    method = config.method if config.method != "auto" else ("data-aware" if calibration is not None else "magnitude")
    if method == "data-aware" and calibration is None:
        raise EdgeoptError("method 'data-aware' needs calibration data (--data DATA.npz or an image folder)")
    if method == "data-aware" and config.ranking == "global":
        raise EdgeoptError("ranking='global' is for magnitude pruning; with data, pruning is data-aware per layer "
                           "(method='magnitude' for one global threshold)")
    source = load_model(model)
    pruned = onnx.ModelProto()
    pruned.CopyFrom(source)
    view = GraphView(pruned)
    layers, skipped = _select(view, config)
    weights = {layer.weight: view.constant(layer.weight).astype(np.float32) for layer in layers}
    moments = _moments(pruned, layers, calibration, config) if method == "data-aware" else {}
    new = _new_weights(layers, weights, moments, config, method, skipped)
    for name, value in new.items():
        _replace(pruned, name, value)
    report = _report(layers, weights, new, skipped, config, method)
    logger.info("pruned %d weights to %.1f%% sparsity", len(new), 100 * report["sparsity"])
    return PruningResult(pruned, report)


def _select(view: GraphView, config: PruneConfig) -> tuple[list[_Layer], dict[str, str]]:
    nodes = [node for node in view.graph.node if node.op_type in PRUNABLE]
    for pattern in config.layers:
        if not any(_matches(node, pattern) for node in nodes):
            raise EdgeoptError(f"layers: {pattern!r} matches no Conv, Gemm or MatMul node (by name or operator type)")
    names = {node.name for node in view.graph.node} | {node.op_type for node in view.graph.node}
    unknown = [item for item in config.exclude if item not in names]
    if unknown:
        raise EdgeoptError(f"exclude: {unknown} match no node name or operator type in the model")
    readers: dict[str, int] = {}
    for node in view.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    layers, skipped = [], {}
    for node in nodes:
        if config.layers and not any(_matches(node, pattern) for pattern in config.layers):
            continue
        if node.name in config.exclude or node.op_type in config.exclude:
            continue
        weight = node.input[1] if len(node.input) > 1 else ""
        reason = _unprunable(node, view, weight, readers)
        if reason:
            skipped[node.name] = reason
            continue
        layers.append(_Layer(node, weight, attribute(node, "group", 1) if node.op_type == "Conv" else 1))
    if not layers:
        raise EdgeoptError("nothing to prune: no Conv, Gemm or MatMul with a constant float weight is selected"
                           + (f" ({'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:3])})" if skipped else ""))
    return layers, skipped


def _matches(node, pattern: str) -> bool:
    return node.op_type == pattern or fnmatch.fnmatchcase(node.name, pattern)


def _unprunable(node, view: GraphView, weight: str, readers: dict) -> str | None:
    if weight not in view.initializers:
        return "its weight is not a constant"
    value = view.initializers[weight]
    if value.data_type != onnx.TensorProto.FLOAT:
        return "its weight is not float32"
    if readers.get(weight, 0) != 1:
        return "its weight is shared with another node"
    if node.op_type == "Conv" and len(value.dims) != 4:
        return "not a 2-D convolution"
    if node.op_type in ("Gemm", "MatMul") and (len(value.dims) != 2 or attribute(node, "transA", 0)):
        return "not a 2-D weight"
    return None


def _new_weights(layers, weights, moments, config: PruneConfig, method: str, skipped: dict) -> dict:
    nm = n_of_m(config.pattern)
    sparsity = 1.0 - nm[0] / nm[1] if nm else float(config.sparsity)
    threshold = _global_threshold(layers, weights, sparsity) if config.ranking == "global" else None
    new = {}
    for layer in layers:
        weight = weights[layer.weight]
        rows = layer.rows(weight)
        reason = masks.fits(rows.shape[1:], config.pattern, weight.shape[1] if layer.node.op_type == "Conv" else None)
        if reason:
            skipped[layer.node.name] = f"pattern {config.pattern}: {reason}"
            continue
        if method == "data-aware":
            if layer.node.name not in moments:
                skipped[layer.node.name] = "no input moments (too many inputs per output, or an unsupported geometry)"
                continue
            pruned, _ = surgeon.prune_rows(rows, moments[layer.node.name], sparsity, config.pattern)
        elif threshold is not None:
            pruned = np.where(np.abs(rows) > threshold, rows, 0.0)
        else:
            keep = masks.keep_mask(np.abs(rows.reshape(-1, rows.shape[2])), sparsity, config.pattern)
            pruned = np.where(keep.reshape(rows.shape), rows, 0.0)
        new[layer.weight] = layer.weight_of(pruned, weight.shape).astype(np.float32)
    return new


def _global_threshold(layers, weights, sparsity: float) -> float:
    magnitudes = np.concatenate([np.abs(weights[layer.weight]).ravel() for layer in layers])
    removed = round(sparsity * magnitudes.size)
    return float(np.sort(magnitudes)[removed - 1]) if removed else -1.0


def _moments(model: onnx.ModelProto, layers, calibration, config: PruneConfig) -> dict[str, np.ndarray]:
    """Per layer, the second moment of its input in the rows' input order (G x D x D)."""
    from ..data import input_specs, iterate_feeds
    from ..quantization.calibrate import collect_statistics, rounding_inputs
    from ..quantization.select import Selection

    view = GraphView(model)
    selection = Selection(nodes=[layer.node for layer in layers],
                          weights={(layer.node.name, 1): (layer.weight, 0) for layer in layers})
    wanted = rounding_inputs(selection, view)
    feeds = iterate_feeds(calibration, input_specs(model), "calibration data")
    limit = config.max_calibration_samples
    statistics = collect_statistics(model, set(wanted), feeds, limit, moment_inputs=wanted,
                                    moment_samples=(0, limit or 1 << 30))
    found = {}
    for layer in layers:
        observer = statistics.observers.get(layer.node.input[0])
        value = None if observer is None else observer.moments(layer.node.name)
        if value is None:
            continue
        order = layer.natural_order(tuple(view.initializers[layer.weight].dims))
        found[layer.node.name] = value if order is None else value[:, order][:, :, order]
    return found


def _replace(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, name))
            return


def _report(layers, weights, new, skipped, config: PruneConfig, method: str) -> dict:
    per_layer = {layer.node.name: round(float(np.mean(new[layer.weight] == 0)), 4)
                 for layer in layers if layer.weight in new}
    total = sum(weights[layer.weight].size for layer in layers if layer.weight in new)
    zeros = sum(int(np.sum(new[layer.weight] == 0)) for layer in layers if layer.weight in new)
    return {"mode": "prune", "config": config.to_dict(), "method": method, "sparsity": zeros / max(total, 1),
            "layers": per_layer, "skipped": dict(skipped)}
