"""``edgeopt check --target``: what in a .tflite file a target will not run as it stands.

* ``xnnpack``: asked of the runtime itself. Each distinct operator (type, options, tensor types)
  is copied into a one-operator model and loaded in LiteRT with XNNPACK: an operator no delegate
  node takes runs on LiteRT's own kernels. The whole file is loaded too, to say whether one
  delegate node covers the graph (what "taken whole" means in the demo and benchmark).
* ``edgetpu`` and ``gpu``: the documented constraints, as tables (:data:`EDGETPU_OPERATORS`,
  :data:`GPU_OPERATORS`) and rules over the tensors (8-bit tensors, static shapes, at most the 3
  innermost dimensions above 1 for the Edge TPU; rank 4 and float or 8-bit tensors for the GPU).

The quantization specification (:mod:`.validate`) is checked for every target.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from . import schema as fb
from .validate import _File, buffer_bytes, validate

TARGETS = ("xnnpack", "edgetpu", "gpu")

#: Edge TPU compiler's operators (coral.ai, "TensorFlow models on the Edge TPU", Table 1; its LSTM
#: is the unidirectional sequence LSTM). DEQUANTIZE is not one: a float output runs on the CPU.
EDGETPU_OPERATORS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS", "FULLY_CONNECTED",
    "L2_NORMALIZATION", "LOGISTIC", "UNIDIRECTIONAL_SEQUENCE_LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN", "MINIMUM",
    "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU", "RELU6", "RELU_N1_TO_1",
    "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT",
    "SQUEEZE", "STRIDED_SLICE", "SUB", "SUM", "SQUARED_DIFFERENCE", "TANH", "TRANSPOSE", "TRANSPOSE_CONV"})
#: Edge TPU operators without a fused activation (Table 1's restrictions)
_EDGETPU_NO_FUSED = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION"}
#: GPU delegate's operators (LiteRT's GPU delegate, model_builder.cc), computed in float32/float16
GPU_OPERATORS = frozenset({
    "ABS", "ADD", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION", "CONV_2D", "COS", "CUMSUM",
    "DENSIFY", "DEPTH_TO_SPACE", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "DIV", "ELU", "EQUAL", "EXP", "FLOOR",
    "FLOOR_DIV", "FLOOR_MOD", "FULLY_CONNECTED", "GATHER", "GELU", "GREATER", "GREATER_EQUAL", "HARD_SWISH",
    "LESS", "LESS_EQUAL", "LEAKY_RELU", "LOG", "LOGICAL_AND", "LOGISTIC", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MIRROR_PAD", "MUL", "NEG", "NOT_EQUAL", "ONE_HOT", "PACK", "PAD", "PADV2", "POW", "PRELU",
    "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD", "RELU", "RELU6", "RELU_N1_TO_1", "RESHAPE",
    "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT", "SELECT", "SELECT_V2", "SIN", "SLICE", "SOFTMAX",
    "SPACE_TO_DEPTH", "SPLIT", "SPLIT_V", "SQRT", "SQUARE", "SQUARED_DIFFERENCE", "STRIDED_SLICE", "SUB", "SUM",
    "TANH", "TILE", "TRANSPOSE", "TRANSPOSE_CONV"})
_EIGHT_BIT = {"INT8", "UINT8"}
_FLOATS = {"FLOAT32", "FLOAT16"}


@dataclass(frozen=True)
class Finding:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def check(data: bytes, target: str | None = None, where: str = "the file") -> list[Finding]:
    """The quantization-specification errors of ``data``, and what breaks ``target``'s constraints."""
    findings = [Finding(v.where, f"{v.message} [{v.rule}]") for v in validate(data, where) if v.severity == "error"]
    if target is None:
        return findings
    model = fb.parse(data, where)
    f = _File(model, data)
    rules = {"xnnpack": _xnnpack, "edgetpu": _edgetpu, "gpu": _gpu}
    return findings + list(rules[target](data, f))


def _operators(f: _File):
    for position, op in enumerate(f.graph.operators or []):
        yield position, op, f.op_name(op)


def _computed(f: _File, op) -> list[int]:
    return [i for i in list(op.inputs) + list(op.outputs) if i >= 0 and f.data(i) is None]


def _edgetpu(data: bytes, f: _File):
    if len(f.model.subgraphs) > 1:
        yield Finding("file", f"{len(f.model.subgraphs)} subgraphs; the Edge TPU compiler maps one")
    for position, op, name in _operators(f):
        where = f.where(position, op)
        if name not in EDGETPU_OPERATORS:
            yield Finding(where, f"{name} is not an Edge TPU operator (it and every operator after it run on the CPU)")
        yield from _edgetpu_operator(f, op, name, where)
        for index in _computed(f, op):
            tensor, kind = f.tensor(index), f.type(index)
            label = tensor.name.decode(errors="replace")
            if kind not in _EIGHT_BIT and not (kind == "INT32" and name in ("RESHAPE",)):
                yield Finding(where, f"tensor {label} is {kind}; the Edge TPU takes 8-bit tensors only")
            signature = tensor.shapeSignature if tensor.shapeSignature is not None else []
            if any(int(d) < 0 for d in signature):
                yield Finding(where, f"tensor {label} has a dynamic shape; the Edge TPU needs static sizes")
            shape = [int(d) for d in (tensor.shape if tensor.shape is not None else [])]
            if len(shape) > 3 and any(d > 1 for d in shape[:-3]):
                yield Finding(where, f"tensor {label} {shape} has more than 3 non-unit dimensions at the outside; "
                                     "the Edge TPU takes at most the 3 innermost above 1")


def _edgetpu_operator(f: _File, op, name: str, where: str):
    """Table 1's per-operator restrictions that the file shows."""
    options = op.builtinOptions
    activation = getattr(options, "fusedActivationFunction", 0) if options is not None else 0
    if name in _EDGETPU_NO_FUSED and activation:
        yield Finding(where, f"{name} with a fused activation; the Edge TPU takes it without")
    if name == "STRIDED_SLICE" and f.data(op.inputs[3]) is not None and np.any(f.data(op.inputs[3]) != 1):
        yield Finding(where, "STRIDED_SLICE with strides other than 1; the Edge TPU takes slices only")
    if name == "SOFTMAX":
        shape = [int(d) for d in f.tensor(op.inputs[0]).shape]
        if sum(d > 1 for d in shape) > 1 or int(np.prod(shape)) > 16000:
            yield Finding(where, f"SOFTMAX over {shape}; the Edge TPU takes a 1-D input of at most 16,000 values")
    if name == "CONV_2D" or name == "DEPTHWISE_CONV_2D":
        if options is not None and options.dilationHFactor != options.dilationWFactor:
            yield Finding(where, f"{name} with different dilations in height and width")


def _gpu(data: bytes, f: _File):
    for position, op, name in _operators(f):
        where = f.where(position, op)
        if name not in GPU_OPERATORS:
            yield Finding(where, f"{name} is not a GPU delegate operator")
        for index in _computed(f, op):
            kind = f.type(index)
            # 8-bit tensors run dequantized (LiteRT enables quantized models by default); int16 does not
            if kind not in _FLOATS | _EIGHT_BIT | {"INT32", "BOOL"}:
                yield Finding(where, f"tensor {f.tensor(index).name.decode(errors='replace')} is {kind}; the GPU "
                                     "delegate computes in float32/float16 (8-bit tensors dequantized)")
            if len(f.tensor(index).shape) > 4:
                yield Finding(where, f"tensor {f.tensor(index).name.decode(errors='replace')} has rank "
                                     f"{len(f.tensor(index).shape)}; the GPU delegate takes at most 4")


def _xnnpack(data: bytes, f: _File):
    from ..runtimes.litert import LiteRTRunner, delegation

    seen: dict[tuple, bool] = {}
    for position, op, name in _operators(f):
        key = _signature(f, op, name)
        if key not in seen:
            seen[key] = _delegated_alone(f, op)
        if not seen[key]:
            yield Finding(f.where(position, op), f"{name} is not delegated to XNNPACK (runs on LiteRT's kernels)")
    whole = delegation(LiteRTRunner(data))
    if not whole["whole"]:
        yield Finding("file", f"XNNPACK takes the graph in {whole['partitions']} partition(s), not whole")


def _signature(f: _File, op, name: str) -> tuple:
    options = op.builtinOptions
    fields = tuple(sorted((k, repr(v)) for k, v in vars(options).items())) if options is not None else ()
    tensors = tuple((f.type(i), tuple(f.tensor(i).shape), f.data(i) is not None) if i >= 0 else None
                    for i in list(op.inputs) + list(op.outputs))
    return name, fields, tensors


def _delegated_alone(f: _File, op) -> bool:
    """Whether XNNPACK takes ``op`` as the only operator of a model (constants kept, other
    inputs made the model's inputs)."""
    from ..errors import EdgeoptError
    from ..runtimes.litert import LiteRTRunner

    schema = fb.module()
    model = schema.ModelT()
    model.version = fb.SCHEMA_VERSION
    model.buffers = [fb.aligned_buffer(None)]
    graph = schema.SubGraphT()
    graph.tensors, remap = [], {}
    for index in list(op.inputs) + list(op.outputs):
        if index < 0 or index in remap:
            continue
        tensor = copy.deepcopy(f.tensor(index))
        raw = buffer_bytes(f.model.buffers[tensor.buffer], f.bytes) if tensor.buffer else None
        tensor.buffer = 0
        if raw is not None:
            model.buffers.append(fb.aligned_buffer(raw))
            tensor.buffer = len(model.buffers) - 1
        remap[index] = len(graph.tensors)
        graph.tensors.append(tensor)
    single = copy.deepcopy(op)
    code = copy.deepcopy(f.codes[op.opcodeIndex])
    single.opcodeIndex = 0
    single.inputs = [remap.get(i, -1) if i >= 0 else -1 for i in op.inputs]
    single.outputs = [remap[i] for i in op.outputs]
    graph.inputs = [remap[i] for i in op.inputs if i >= 0 and f.data(i) is None]
    graph.outputs = list(single.outputs)
    graph.operators = [single]
    model.subgraphs, model.operatorCodes = [graph], [code]
    try:
        runner = LiteRTRunner(fb.serialize(model))
    except EdgeoptError:
        return False
    return any(d["op_name"] == "DELEGATE" for d in runner.interpreter._get_ops_details())

