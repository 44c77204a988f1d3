"""The layers one-shot compression edits: Conv, Gemm and MatMul nodes with a constant float
weight of their own, selected by name or operator type, each weight laid out as rows (outputs x
inputs, a Conv's input channels innermost, so that N:M groups and 1x4 blocks run along
channels), and their input second moments measured on calibration data. Shared by
:mod:`.prune` and :mod:`.cluster`; decides, edits no graph (:func:`replace` writes a weight).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgeoptError
from ..model_io import save_model
from ..quantization.graph import GraphView, attribute

PRUNABLE = ("Conv", "Gemm", "MatMul")


@dataclass
class CompressionResult:
    """A pruned or clustered copy of the model and what was done (``report``: per-layer numbers,
    skipped layers and why)."""

    model: onnx.ModelProto
    report: dict = field(default_factory=dict)

    def save(self, path) -> None:
        save_model(self.model, path)


@dataclass(frozen=True)
class Layer:
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


def select(view: GraphView, config, verb: str) -> tuple[list[Layer], dict[str, str]]:
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
        if not reason and not getattr(config, "depthwise", True) and _depthwise(node, view, weight):
            reason = "a depthwise convolution (depthwise=True prunes it too)"
        if reason:
            skipped[node.name] = reason
            continue
        layers.append(Layer(node, weight, attribute(node, "group", 1) if node.op_type == "Conv" else 1))
    if not layers:
        raise EdgeoptError(f"nothing to {verb}: no Conv, Gemm or MatMul with a constant float weight is selected"
                           + (f" ({'; '.join(f'{k}: {v}' for k, v in list(skipped.items())[:3])})" if skipped else ""))
    return layers, skipped


def _matches(node, pattern: str) -> bool:
    return node.op_type == pattern or fnmatch.fnmatchcase(node.name, pattern)


def _depthwise(node, view: GraphView, weight: str) -> bool:
    return node.op_type == "Conv" and attribute(node, "group", 1) > 1 and view.initializers[weight].dims[1] == 1


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


def input_moments(model: onnx.ModelProto, layers, calibration, limit: int | None) -> dict[str, np.ndarray]:
    """Per layer, the second moment of its input in the rows' input order (G x D x D)."""
    from ..data import input_specs, iterate_feeds
    from ..quantization.calibrate import collect_statistics, rounding_inputs
    from ..quantization.select import Selection

    view = GraphView(model)
    selection = Selection(nodes=[layer.node for layer in layers],
                          weights={(layer.node.name, 1): (layer.weight, 0) for layer in layers})
    wanted = rounding_inputs(selection, view)
    feeds = iterate_feeds(calibration, input_specs(model), "calibration data")
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


def replace(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, name))
            return



NO_MOMENTS = "no input moments (too many inputs per output, or an unsupported geometry)"


@dataclass
class Job:
    """One run of a one-shot verb: the copy being edited and its selected layers."""

    model: onnx.ModelProto
    view: GraphView
    layers: list[Layer]
    skipped: dict
    #: weight name -> its float32 value before the verb
    weights: dict
    method: str
    verb: str


def start(model, config, config_type: type, verb: str, data_free: str, calibration) -> Job:
    """Check ``config``, resolve its ``"auto"`` method (data-aware with data, ``data_free``
    without), and select the layers of a copy of ``model`` (a path or ``onnx.ModelProto``) whose
    nodes are all named (layers are told apart by name, as quantize's plans do)."""
    from ..model_io import load_model
    from ..quantization.prepare import name_nodes

    if not isinstance(config, config_type):
        raise EdgeoptError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
    method = config.method if config.method != "auto" else ("data-aware" if calibration is not None else data_free)
    if method == "data-aware" and calibration is None:
        raise EdgeoptError("method 'data-aware' needs calibration data (--data DATA.npz or an image folder)")
    copy = onnx.ModelProto()
    copy.CopyFrom(load_model(model))
    name_nodes(copy)
    view = GraphView(copy)
    layers, skipped = select(view, config, verb)
    weights = {layer.weight: view.constant(layer.weight).astype(np.float32) for layer in layers}
    return Job(copy, view, layers, skipped, weights, method, verb)


def run(job: Job, compute, calibration, limit: int | None, recalibrated: bool, prepare=None) -> dict[str, np.ndarray]:
    """Each layer's new weight, ``compute(layer, moments or None)`` (None: left as it was),
    written into ``job.model``; data-aware: on the input moments measured in one pass, and, when
    ``recalibrated``, each layer's output statistics restored afterwards (:mod:`.recalibrate`).
    ``prepare(moments)`` runs once before the first layer (a decision over all of them)."""
    from ..progress import progress
    from . import recalibrate

    moments, targets = {}, {}
    if job.method == "data-aware":
        moments = input_moments(job.model, job.layers, calibration, limit)
        if recalibrated:
            targets = recalibrate.output_statistics(job.model, recalibrate.correctable(job.layers, job.view),
                                                    calibration, limit)
    if prepare is not None:
        prepare(moments)
    new = {}
    for layer in progress(job.layers, f"{job.verb} ({job.method})", len(job.layers), "layer"):
        if job.method == "data-aware" and layer.node.name not in moments:
            job.skipped[layer.node.name] = NO_MOMENTS
            continue
        value = compute(layer, moments.get(layer.node.name))
        if value is not None:
            new[layer.weight] = value
    for name, value in new.items():
        replace(job.model, name, value)
    if targets:
        recalibrate.recalibrate(job.model, [layer for layer in job.layers if layer.weight in new], targets,
                                calibration, limit)
    return new
