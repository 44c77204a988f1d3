"""ONNX graph -> TFLite subgraph: walks the nodes in order, one converter per operator type.

The :class:`Lowering` holds what every converter needs: the static shapes and types of the ONNX
tensors, the layout and the form (float or quantized) each lowered tensor got, and
:meth:`Lowering.value`, which hands a converter an ONNX tensor in the layout and form it needs:
a constant is permuted (and quantized) offline; a computed tensor gets one TRANSPOSE and one
QUANTIZE/DEQUANTIZE at most, shared by every reader that wants the same. A node runs quantized
when the plan says so and its tensors have parameters (:meth:`Lowering.runs_quantized`).
Converters live in :mod:`.operators`; weights, biases and constant operands in :mod:`.constants`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgeoptError
from ..quantization.graph import GraphView
from . import constants
from . import layout as lay
from .builder import ModelBuilder, Quantization
from .quantized import QuantizedTensors
from .static import StaticModel

logger = logging.getLogger(__name__)

#: ONNX operators whose TFLite lowering has integer kernels (the others run float between
#: DEQUANTIZE and QUANTIZE even where the plan quantized them)
INTEGER_OPERATORS = {
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub", "Mul", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "ReduceMean", "ReduceMax", "Concat", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose",
    "Relu", "Clip", "Sigmoid", "Tanh", "Softmax", "HardSwish", "LeakyRelu", "PRelu", "Pad", "Slice", "Split",
    "Gather", "Resize", "Identity", "Dropout", "Gelu", "Max", "Min", "BatchNormalization"}


class Lowering:
    """The state of one ONNX -> TFLite lowering (see the module docstring)."""

    def __init__(self, static: StaticModel, io_layout: str = "nchw", quantized: QuantizedTensors | None = None,
                 integer_only: bool = False):
        self.model = static.model
        self.shapes = static.shapes
        self.dtypes = static.dtypes
        self.view = GraphView(self.model)
        self.builder = ModelBuilder()
        self.io_layout = io_layout
        self.quantized = quantized
        self.integer_only = integer_only
        self.float16_weights: set[str] = set()
        self.int8_weights: dict[str, tuple] = {}  # dynamic range: weight -> (integers, scale)
        self.layouts: dict[str, lay.Layout] = {}
        self.produced_quantized: dict[str, bool] = {}
        self._tensors: dict[tuple[str, lay.Layout, bool], int] = {}
        self.consumed: set[str] = set()  # nodes a converter folded into another (fused activations)
        self.node = None
        self.node_quantized = False

    # -- reading ONNX ----------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]

    def rank(self, name: str) -> int:
        return len(self.shapes[name])

    def constant(self, name: str) -> np.ndarray | None:
        return self.view.constant(name) if name else None

    def is_constant(self, name: str) -> bool:
        return bool(name) and self.view.is_constant(name)

    def only_consumer(self, name: str) -> onnx.NodeProto | None:
        readers = self.view.consumers.get(name, [])
        if len(readers) != 1 or name in self.view.graph_outputs:
            return None
        return readers[0]

    def params(self, name: str) -> Quantization | None:
        """The plan's TFLite parameters of activation ``name`` (None: float, or no plan)."""
        return self.quantized.params(name) if self.quantized is not None else None

    def non_negative(self, name: str) -> bool:
        """Whether ``name`` is known to hold no negative value (the output of Relu, Sigmoid or a
        Clip at 0 or above)."""
        from .operators.common import clip_bounds

        producer = self.view.producer.get(name)
        if producer is None:
            return False
        if producer.op_type in ("Relu", "Sigmoid", "Softmax"):
            return True
        return producer.op_type == "Clip" and (clip_bounds(self, producer)[0] or -1) >= 0

    def layout_of(self, name: str) -> lay.Layout:
        """The layout ``name`` was lowered in (a constant's is the identity until asked otherwise)."""
        if name in self.layouts:
            return self.layouts[name]
        if self.is_constant(name):
            return lay.identity(self.rank(name))
        raise EdgeoptError(f"internal: {name!r} is read before it is lowered")

    def runs_quantized(self, node) -> bool:
        """Whether ``node`` runs on integers: the plan quantized it, TFLite has an integer kernel,
        and every computed input and every output has parameters."""
        if self.quantized is None or node.name not in self.quantized.nodes or node.op_type not in INTEGER_OPERATORS:
            return False
        inputs = [n for n in node.input if n and not self.is_constant(n)]
        return (all(self.params(n) is not None or self.produced_quantized.get(n) for n in inputs)
                and all(self.params(n) is not None for n in node.output if n))

    # -- writing TFLite --------------------------------------------------------------------------
    def value(self, name: str, layout: lay.Layout | None = None, dtype=None) -> int:
        """The TFLite tensor of ONNX tensor ``name`` in ``layout`` (the tensor's own when None), in
        the form the node being lowered reads (quantized when it runs quantized)."""
        layout = self.layout_of(name) if layout is None else tuple(layout)
        quantized = self._reads_quantized(name)
        key = (name, layout, quantized)
        if key not in self._tensors:
            if self.is_constant(name):
                self._tensors[key] = constants.constant_operand(self, name, layout, quantized, dtype)
            else:
                self._tensors[key] = self._converted(name, layout, quantized)
        return self._tensors[key]

    def _reads_quantized(self, name: str) -> bool:
        if self.node is None:  # a graph output
            return self.integer_only and self.produced_quantized.get(name, False)
        return self.node_quantized

    def _converted(self, name: str, layout: lay.Layout, quantized: bool) -> int:
        current = self.layout_of(name)
        produced = self.produced_quantized.get(name, False)
        if (name, current, produced) not in self._tensors:
            raise EdgeoptError(f"internal: {name!r} has no lowered tensor")
        source = self._tensors[(name, current, produced)]
        if quantized != produced:
            source = self._tensors.setdefault((name, current, quantized), self._requantized(name, source, quantized))
        if layout == current:
            return source
        return self._permuted(name, source, current, layout)

    def _requantized(self, name: str, source: int, quantized: bool) -> int:
        info = self.builder.info(source)
        if quantized:
            params = self.params(name)
            if params is None:
                raise EdgeoptError(f"internal: {name!r} is read quantized but has no parameters")
            index = self._new_tensor(f"{name}_quantized", info.shape, self.quantized.dtype, params)
            source = self._on_grid(name, source, float(params.scale[0]))
            self.builder.operator("QUANTIZE", [source], [index], None, self.version("QUANTIZE", [source], out=index))
        else:
            if self.integer_only:  # edgeopt's integer-only plans quantize every operator; another would leak float
                where = f"{self.node.op_type} {self.node.name!r}" if self.node is not None else "an output"
                raise EdgeoptError(f"integer-only: {where} reads {name!r} in float; an integer-only TFLite file has "
                                   "no float tensor (quantize the operator, or write the model with float inputs)")
            index = self._new_tensor(f"{name}_dequantized", info.shape, np.float32)
            self.builder.operator("DEQUANTIZE", [source], [index], None, self.version("DEQUANTIZE", [source]))
        return index

    def _on_grid(self, name: str, source: int, scale: float) -> int:
        """round(x / scale) * scale in float, so that QUANTIZE rounds as ONNX's QuantizeLinear.

        QuantizeLinear divides by the scale and rounds half to even; XNNPACK's QUANTIZE multiplies
        by 1 / scale, which puts a value next to a half step on the other side now and then (on
        MobileNetV2-Fashion's float input, one element in some images, and the step travels to
        the output). DIV and ROUND (half to even) compute QuantizeLinear's integer exactly; times
        the scale it is a value QUANTIZE maps back to that integer whatever its own rounding.
        Three float element-wise operators on a tensor entering the integer graph."""
        b = self.builder
        info = b.info(source)
        step = b.constant(f"{name}_step", np.array([scale], np.float32))
        steps, rounded, snapped = (self._new_tensor(f"{name}_{kind}", info.shape, np.float32)
                                   for kind in ("steps", "rounded", "on_grid"))
        b.operator("DIV", [source, step], [steps], b.options("DivOptions"), self.version("DIV", [source, step]))
        b.operator("ROUND", [steps], [rounded], None, 1)
        b.operator("MUL", [rounded, step], [snapped], b.options("MulOptions"), self.version("MUL", [rounded, step]))
        return snapped

    def _permuted(self, name: str, source: int, current: lay.Layout, layout: lay.Layout) -> int:
        info = self.builder.info(source)
        perm = lay.transpose_between(current, layout)
        shape = lay.permute_shape(self.shape(name), layout)
        index = self._new_tensor(f"{name}_{''.join(map(str, layout))}", shape, info.dtype, info.quantization)
        if lay.is_free_reshape(info.shape, perm):  # only unit axes move
            self.builder.operator("RESHAPE", [source, self.int32("shape", shape)], [index],
                                  self.builder.options("ReshapeOptions", newShape=list(shape)))
        else:
            self.builder.operator("TRANSPOSE", [source, self.int32(f"{name}_perm", perm)], [index],
                                  None, self.version("TRANSPOSE", [source]))
        return index

    def output(self, name: str, layout: lay.Layout | None = None, dtype=None, shape=None,
               quantization: Quantization | None = None) -> int:
        """Declare the TFLite tensor holding ONNX output ``name`` in ``layout`` (identity when None);
        quantized when the node runs quantized (with the plan's parameters unless given)."""
        layout = lay.identity(self.rank(name)) if layout is None else tuple(layout)
        quantized = self.node_quantized if self.node is not None else quantization is not None
        if quantized:
            quantization = quantization or self.params(name)
            dtype = self.quantized.dtype
        else:
            quantization = None
            dtype = dtype or self.dtypes.get(name, np.dtype(np.float32))
        index = self._new_tensor(name, shape or lay.permute_shape(self.shape(name), layout), dtype, quantization)
        self.bind(name, layout, index, quantized)
        return index

    def output_like(self, name: str, layout: lay.Layout, source: int) -> int:
        """The tensor an operator that moves data without rescaling it (RESHAPE, MAX_POOL_2D, PAD,
        ...) writes: it has ``source``'s parameters, and when the plan gave ``name`` others a
        QUANTIZE after it rescales to them."""
        return self.output_with(name, layout, self.builder.info(source).quantization)

    def output_with(self, name: str, layout: lay.Layout, quantization: Quantization | None) -> int:
        """Like :meth:`output_like` for a fixed ``quantization`` (LOGISTIC's 1/256, -128, ...)."""
        if not self.node_quantized or quantization is None or quantization == self.params(name):
            return self.output(name, layout)
        declared = self.output(name, layout)
        info = self.builder.info(declared)
        written = self._new_tensor(f"{name}_before_rescale", info.shape, info.dtype, quantization)
        self.builder.operator("QUANTIZE", [written], [declared], None, self.version("QUANTIZE", [written], out=declared))
        return written

    def bind_rescaled(self, name: str, layout: lay.Layout, index: int) -> None:
        """Bind ``name`` to ``index`` (an operator-free lowering such as a Transpose), through a
        QUANTIZE when the plan gave ``name`` parameters other than ``index``'s."""
        wanted = self.params(name) if self.node_quantized else None
        have = self.builder.info(index).quantization
        if wanted is None or have is None or wanted == have:
            self.bind(name, layout, index)
            return
        out = self.output(name, layout)
        self.builder.operator("QUANTIZE", [index], [out], None, self.version("QUANTIZE", [index], out=out))

    def bind(self, name: str, layout: lay.Layout, index: int, quantized: bool | None = None) -> None:
        """ONNX tensor ``name`` is TFLite tensor ``index`` in ``layout`` (no operator)."""
        if quantized is None:
            quantized = self.builder.info(index).quantization is not None
        self.layouts[name] = tuple(layout)
        self.produced_quantized[name] = quantized
        self._tensors[(name, tuple(layout), quantized)] = index

    def alias(self, name: str, source: str) -> None:
        """ONNX tensor ``name`` is ``source`` (Identity, Dropout at inference)."""
        index = self.value(source)
        self.bind(name, self.layout_of(source), index)

    def add_constant(self, name: str, array: np.ndarray) -> None:
        tensor = numpy_helper.from_array(np.asarray(array), name)
        self.model.graph.initializer.append(tensor)
        self.view.initializers[name] = tensor

    def ordered_layout(self, name: str) -> lay.Layout:
        """A layout in which ``name``'s TFLite tensor holds its elements in ONNX order (for RESHAPE,
        FULLY_CONNECTED): its own when that moves only unit axes, else the identity."""
        current = self.layout_of(name)
        return current if lay.is_free_reshape(self.shape(name), current) else lay.identity(len(current))

    def broadcast(self, name: str, layout: lay.Layout, rank: int, like: str) -> int:
        """Operand ``name`` of an element-wise op whose output has ``rank`` axes stored in ``layout``:
        lower-rank operands get leading unit axes (numpy broadcasting) before the permutation."""
        if self.is_constant(name):
            return constants.broadcast_constant(self, name, layout, rank, like)
        if self.rank(name) == rank:
            return self.value(name, layout)
        padded = (1,) * (rank - self.rank(name)) + tuple(self.shape(name))
        key = f"{name}_rank{rank}"
        if key not in self.shapes:
            source = self.value(name, self.ordered_layout(name))
            self.shapes[key] = padded
            info = self.builder.info(source)
            reshaped = self._new_tensor(key, padded, info.dtype, info.quantization)
            self.bind(key, lay.identity(rank), reshaped)
            self.builder.operator("RESHAPE", [source, self.int32("shape", padded)], [reshaped],
                                  self.builder.options("ReshapeOptions", newShape=list(padded)))
        return self.value(key, layout)

    def scalar_like(self, name: str, value: float) -> int:
        """A one-element constant of ``value`` in the type (and parameters) ``name`` is read in."""
        return constants.scalar(self, self.value(name), value)

    def activation_tensor(self, name: str, shape, like: str) -> int:
        """An intermediate tensor of the type (and parameters) the current node writes ``like`` in."""
        if self.node_quantized:
            return self._new_tensor(name, shape, self.quantized.dtype, self.params(like))
        return self._new_tensor(name, shape, np.dtype(self.dtypes.get(like, np.float32)))

    def int32(self, name: str, values) -> int:
        return self.builder.constant(name, np.asarray(values, dtype=np.int32))

    def _new_tensor(self, name, shape, dtype, quantization=None) -> int:
        return self.builder.tensor(name, shape, dtype, quantization=quantization)

    @staticmethod
    def attribute(node, name: str, default=None):
        from ..quantization.graph import attribute

        return attribute(node, name, default)

    # -- weights (see .constants) ----------------------------------------------------------------
    def weight(self, name: str, node) -> np.ndarray:
        return constants.float_weight(self, name, node)

    def weight_source(self, name: str):
        return None

    def weight_tensor(self, node, index: int, transform, axis: int, scale: float = 1.0, onnx_axis: int = 0) -> int:
        return constants.weight_tensor(self, node, index, transform, axis, scale, onnx_axis)

    def bias(self, node, channels: int, source: int, weights: int, values=None, scale: float = 1.0) -> int:
        return constants.bias_tensor(self, node, channels, source, weights, values, scale)

    def can_fuse(self, name: str, activation) -> bool:
        """A Relu/Clip folds into its producer, except in a quantized graph whose plan quantizes
        the tensor between them (int16, where zero points are 0 and cannot clamp): the plan's
        rounding is kept as it is, and the activation runs as its own operator."""
        if not self.node_quantized:
            return self.quantized is None or activation.name not in self.quantized.nodes
        return self.params(name) is None and self.params(activation.output[0]) is not None

    def version(self, op: str, inputs: list[int], out: int | None = None, **flags) -> int:
        from .versions import Signature, version

        infos = [self.builder.info(i) if i >= 0 else None for i in inputs]
        per_channel = any(info is not None and info.quantization is not None and len(info.quantization.scale) > 1
                          for info in infos)
        if out is not None and self.builder.info(out).quantization is not None:
            per_channel |= len(self.builder.info(out).quantization.scale) > 1
        signature = Signature(tuple(info.dtype if info else None for info in infos),
                              self.builder.info(out).dtype if out is not None else None, flags,
                              max(len(info.shape) for info in infos if info is not None), per_channel)
        return version(op, signature)

    # -- the walk --------------------------------------------------------------------------------
    def run(self):
        from .operators import converter_for

        inputs = [self._graph_input(value.name) for value in self.model.graph.input
                  if value.name in self.view.graph_inputs]
        for node in self.model.graph.node:
            if node.name in self.consumed:
                continue
            self.node, self.node_quantized = node, self.runs_quantized(node)
            converter_for(node)(self, node)
        self.node, self.node_quantized = None, False
        outputs = [self._graph_output(value.name) for value in self.model.graph.output]
        return self.builder.finish(inputs, outputs)

    def _graph_input(self, name: str) -> int:
        rank = self.rank(name)
        layout = lay.channels_last(rank) if self.io_layout == "nhwc" and rank >= 3 else lay.identity(rank)
        quantization = self.params(name) if self.integer_only else None
        if self.integer_only and quantization is None and self.quantized is not None:
            raise EdgeoptError(f"input {name!r} is not quantized in the plan; an integer-only model needs it quantized")
        return self.output(name, layout, quantization=quantization)

    def _graph_output(self, name: str) -> int:
        rank = self.rank(name)
        wanted = lay.channels_last(rank) if self.io_layout == "nhwc" and rank >= 3 else lay.identity(rank)
        if name in self.view.graph_inputs or self.is_constant(name):
            raise EdgeoptError(f"output {name!r} is an input or a constant of the model; TFLite needs it computed")
        if self.integer_only and not self.produced_quantized.get(name):
            raise EdgeoptError(f"output {name!r} is computed in float; an integer-only model needs it quantized")
        index = self.value(name, wanted)
        own = self._tensors[(name, self.layouts[name], self.produced_quantized[name])]
        if own != index:  # the output is a TRANSPOSE/DEQUANTIZE of the graph's tensor: give it the name
            tensors = self.builder.tensors
            tensors[own].name, tensors[index].name = tensors[index].name, tensors[own].name
        return index
