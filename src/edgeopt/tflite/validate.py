"""The TFLite quantization specification and file-format rules, checked on any ``.tflite`` file.

Each rule is a function over one operator (or the whole file) that yields what breaks it; the
table :data:`OPERATOR_RULES` says which operators each rule reads. :func:`validate` runs every
rule and returns the violations (an empty list: the file follows the specification). Every file
edgeopt writes is validated before it is returned; ``edgeopt check`` runs it on any file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import schema as fb

#: relative tolerance on "bias scale = input scale x weight scale" (the reference kernels accept
#: float32 rounding of the product)
BIAS_SCALE_RTOL = 1e-3


#: rules whose breach the runtime survives (it copies a misaligned buffer; mapping the file in
#: place, as microcontroller runtimes do, needs the alignment): reported, not failed
WARNINGS = {"alignment"}


@dataclass(frozen=True)
class Violation:
    rule: str
    where: str
    message: str

    @property
    def severity(self) -> str:
        return "warning" if self.rule in WARNINGS else "error"

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.rule}]"


class _File:
    """Read access to one parsed model for the rules."""

    def __init__(self, model, data: bytes):
        self.model = model
        self.bytes = data
        self.graph = model.subgraphs[0]
        self.codes = model.operatorCodes

    def op_name(self, op) -> str:
        code = self.codes[op.opcodeIndex]
        return fb.builtin_name(max(code.builtinCode, code.deprecatedBuiltinCode))

    def tensor(self, index: int):
        return self.graph.tensors[index] if index >= 0 else None

    def type(self, index: int) -> str | None:
        tensor = self.tensor(index)
        return None if tensor is None else fb.tensor_type_name(tensor.type)

    def quantization(self, index: int):
        tensor = self.tensor(index)
        q = None if tensor is None else tensor.quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint if q.zeroPoint is not None else [0]), \
            int(q.quantizedDimension)

    def data(self, index: int) -> np.ndarray | None:
        tensor = self.tensor(index)
        if tensor is None:
            return None
        raw = buffer_bytes(self.model.buffers[tensor.buffer], self.bytes)
        if raw is None:
            return None
        if tensor.sparsity is not None:  # stored compressed (DENSIFY expands it): not read here
            return np.zeros(0)
        dtype = fb.numpy_dtype(tensor.type)
        return np.frombuffer(raw, dtype=dtype).reshape(tensor.shape)

    def where(self, position: int, op) -> str:
        outputs = [self.tensor(i).name.decode(errors="replace") for i in op.outputs if i >= 0]
        return f"operator {position} {self.op_name(op)} ({', '.join(outputs)})"


def buffer_bytes(buffer, data: bytes) -> bytes | None:
    """A buffer's bytes: inside the flatbuffer, or after it at ``offset`` (files over 2 GB, and
    ai-edge-quantizer's output, keep constants there); None for a buffer without data."""
    if buffer.data is not None and len(buffer.data):
        return bytes(buffer.data)
    if buffer.offset and buffer.size:
        return data[buffer.offset:buffer.offset + buffer.size]
    return None


# -- per-operator rules ------------------------------------------------------------------------

def _weights_and_bias(f: _File, op, name: str):
    """Conv/FC: int8 weights symmetric in [-127, 127] with zero point 0, per tensor or per output
    channel on the right axis; a bias present, int32 (int64 for int16 inputs) with zero point 0
    and scale input x weight."""
    if len(op.inputs) < 2:
        return
    source, weights = op.inputs[0], op.inputs[1]
    weight_input = 1
    if name == "TRANSPOSE_CONV":
        source, weights, weight_input = op.inputs[2], op.inputs[1], 1
    if f.type(weights) != "INT8" or f.type(source) not in ("INT8", "INT16"):
        return
    q = f.quantization(weights)
    if q is None:
        yield "int8 weights without quantization parameters"
        return
    scales, zeros, axis = q
    if np.any(zeros != 0):
        yield "int8 weights need zero point 0"
    values = f.data(weights)
    if values is not None and values.size and values.min() < -127:
        yield "int8 weights must lie in [-127, 127] (-128 found)"
    wanted_axis = 3 if name == "DEPTHWISE_CONV_2D" else 0
    channels = f.tensor(weights).shape[wanted_axis]
    if len(scales) > 1 and (axis != wanted_axis or len(scales) != channels):
        yield f"per-channel weights need {channels} scales on axis {wanted_axis} (found {len(scales)} on {axis})"
    bias_position = 3 if name == "TRANSPOSE_CONV" else 2
    bias = op.inputs[bias_position] if len(op.inputs) > bias_position else -1
    if bias < 0:
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            yield "a quantized convolution needs a bias (XNNPACK and the builtin kernels expect one)"
        return
    yield from _bias(f, bias, source, scales, weight_input)


def _bias(f: _File, bias: int, source: int, weight_scales: np.ndarray, _position: int):
    wanted = "INT64" if f.type(source) == "INT16" else "INT32"
    if f.type(bias) != wanted and not (wanted == "INT64" and f.type(bias) == "INT32"):
        yield f"the bias must be {wanted} for {f.type(source)} inputs (found {f.type(bias)})"
        return
    q, qi = f.quantization(bias), f.quantization(source)
    if q is None or qi is None:
        yield "a quantized bias needs scales"
        return
    scales, zeros, _ = q
    if np.any(zeros != 0):
        yield "the bias needs zero point 0"
    expected = qi[0][0] * weight_scales
    if len(scales) != len(expected) or not np.allclose(scales, expected, rtol=BIAS_SCALE_RTOL):
        yield "the bias scale must be input scale x weight scale"


def _activation_params(f: _File, op, name: str):
    """Quantized activations: per tensor; int16 with zero point 0; int8 zero point in range."""
    for index in list(op.inputs) + list(op.outputs):
        if index < 0 or f.data(index) is not None:
            continue
        kind, q = f.type(index), f.quantization(index)
        if kind not in ("INT8", "INT16", "UINT8") or q is None:
            continue
        scales, zeros, _ = q
        if len(scales) > 1:
            yield f"activation {f.tensor(index).name.decode()} has per-channel parameters"
        if kind == "INT16" and np.any(zeros != 0):
            yield f"int16 activation {f.tensor(index).name.decode()} needs zero point 0"
        if np.any(scales <= 0):
            yield f"tensor {f.tensor(index).name.decode()} has a non-positive scale"


#: (scale, zero point) the integer kernels require on the output, by operator and type
FIXED_OUTPUTS = {("LOGISTIC", "INT8"): (1 / 256, -128), ("SOFTMAX", "INT8"): (1 / 256, -128),
                 ("TANH", "INT8"): (1 / 128, 0), ("LOGISTIC", "INT16"): (1 / 32768, 0),
                 ("TANH", "INT16"): (1 / 32768, 0), ("SOFTMAX", "INT16"): (1 / 32768, 0)}


def _fixed_output(f: _File, op, name: str):
    kind = f.type(op.outputs[0])
    fixed = FIXED_OUTPUTS.get((name, kind))
    q = f.quantization(op.outputs[0])
    if fixed is None or q is None:
        return
    if not (np.isclose(q[0][0], fixed[0], rtol=1e-6) and int(q[1][0]) == fixed[1]):
        yield f"{kind} {name} output needs scale {fixed[0]:.6g} and zero point {fixed[1]}"


def _shared_params(f: _File, op, name: str):
    """Operators that move values without rescaling: quantized input and output alike."""
    source, q_out = op.inputs[0], None
    if name == "CONCATENATION":
        sources = list(op.inputs)
    else:
        sources = [source]
    for output in op.outputs:
        q_out = f.quantization(output)
        if q_out is None or f.type(output) not in ("INT8", "INT16", "UINT8"):
            continue
        for s in sources:
            q_in = f.quantization(s)
            if q_in is not None and not (np.allclose(q_in[0], q_out[0], rtol=1e-6) and np.array_equal(q_in[1], q_out[1])):
                yield f"input {f.tensor(s).name.decode()} and output need the same scale and zero point"


def _float16_weights(f: _File, op, name: str):
    """float16 constants are read through DEQUANTIZE to float32."""
    if f.type(op.inputs[0]) == "FLOAT16" and f.type(op.outputs[0]) != "FLOAT32":
        yield "DEQUANTIZE of float16 must give float32"


def _hybrid(f: _File, op, name: str):
    """Dynamic range: float input, int8 weights; the inputs are quantized asymmetrically."""
    if len(op.inputs) > 1 and f.type(op.inputs[0]) == "FLOAT32" and f.type(op.inputs[1]) == "INT8":
        options = op.builtinOptions
        if options is not None and hasattr(options, "asymmetricQuantizeInputs") and not options.asymmetricQuantizeInputs:
            yield "dynamic-range weights need asymmetric_quantize_inputs (symmetric input quantization loses accuracy)"


#: rule -> the operators it reads (None: all)
OPERATOR_RULES = {
    _weights_and_bias: {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"},
    _activation_params: None,
    _fixed_output: {"LOGISTIC", "SOFTMAX", "TANH"},
    _shared_params: {"CONCATENATION", "RESHAPE", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD", "PADV2", "STRIDED_SLICE",
                     "SLICE", "SPLIT", "SPLIT_V", "GATHER", "TRANSPOSE", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR",
                     "SQUEEZE", "BROADCAST_TO"},
    _float16_weights: {"DEQUANTIZE"},
    _hybrid: {"FULLY_CONNECTED", "BATCH_MATMUL"},
}


# -- file rules --------------------------------------------------------------------------------

def _file_rules(data: bytes, f: _File):
    if data[4:8] != fb.FILE_IDENTIFIER:
        yield Violation("identifier", "file", "the file identifier is not TFL3")
    if f.model.buffers and f.model.buffers[0].data is not None and len(f.model.buffers[0].data):
        yield Violation("buffer-0", "file", "buffer 0 must be empty")
    for i, code in enumerate(f.codes):
        # files older than the extended codes carry the code in deprecated_builtin_code alone
        if code.deprecatedBuiltinCode != min(max(code.builtinCode, code.deprecatedBuiltinCode), 127):
            yield Violation("opcode", f"operator code {i}", "deprecated_builtin_code must be min(builtin_code, 127)")
    root = fb.module().Model.GetRootAs(data, 0)
    for index in range(1, root.BuffersLength()):
        buffer = root.Buffers(index)
        start = buffer._tab.Vector(buffer._tab.Offset(4)) if buffer.DataLength() else buffer.Offset()
        if start and start % fb.BUFFER_ALIGNMENT:
            yield Violation("alignment", f"buffer {index}", f"constant data must start at a multiple of "
                                                             f"{fb.BUFFER_ALIGNMENT} bytes")


def validate(data: bytes, where: str = "the file") -> list[Violation]:
    """Every violation of the file-format and quantization rules in ``data`` (a .tflite file)."""
    model = fb.parse(data, where)
    f = _File(model, data)
    found = list(_file_rules(data, f))
    for position, op in enumerate(f.graph.operators or []):
        name = f.op_name(op)
        for rule, operators in OPERATOR_RULES.items():
            if operators is None or name in operators:
                found += [Violation(rule.__name__.strip("_").replace("_", "-"), f.where(position, op), message)
                          for message in rule(f, op, name)]
    return found
