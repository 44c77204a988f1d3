"""ONNX graph -> TFLite subgraph: walks the nodes in order, one converter per operator type.

The :class:`Lowering` holds what every converter needs: the static shapes and types of the ONNX
tensors, the layout each lowered tensor got, and :meth:`Lowering.value`, which hands a converter
an ONNX tensor in the layout it asks for (a constant is permuted offline; a computed tensor gets
one TRANSPOSE, shared by every reader that wants the same layout). Converters live in
:mod:`.operators`, registered with :func:`.operators.converter`.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import EdgeoptError
from ..quantization.graph import GraphView
from . import layout as lay
from .builder import ModelBuilder, Quantization
from .static import StaticModel

logger = logging.getLogger(__name__)


class Lowering:
    """The state of one ONNX -> TFLite lowering (see the module docstring)."""

    def __init__(self, static: StaticModel, io_layout: str = "nchw"):
        self.model = static.model
        self.shapes = static.shapes
        self.dtypes = static.dtypes
        self.view = GraphView(self.model)
        self.builder = ModelBuilder()
        self.io_layout = io_layout
        self.layouts: dict[str, lay.Layout] = {}
        self._tensors: dict[tuple[str, lay.Layout], int] = {}
        self.consumed: set[str] = set()  # nodes a converter folded into another (fused activations)
        self.quantization: dict[str, Quantization] = {}

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

    def layout_of(self, name: str) -> lay.Layout:
        """The layout ``name`` was lowered in (a constant's is the identity until asked otherwise)."""
        if name in self.layouts:
            return self.layouts[name]
        if self.is_constant(name) or name in self.view.graph_inputs:
            return lay.identity(self.rank(name))
        raise EdgeoptError(f"internal: {name!r} is read before it is lowered")

    # -- writing TFLite --------------------------------------------------------------------------
    def value(self, name: str, layout: lay.Layout | None = None, dtype=None) -> int:
        """The TFLite tensor of ONNX tensor ``name`` in ``layout`` (the tensor's own when None)."""
        current = self.layout_of(name)
        layout = current if layout is None else tuple(layout)
        key = (name, layout)
        if key in self._tensors:
            return self._tensors[key]
        if self.is_constant(name):
            array = self.constant(name).transpose(layout) if self.rank(name) else self.constant(name)
            index = self.builder.constant(name, array.astype(dtype) if dtype else array, self.quantization.get(name))
        else:
            source = self.value(name, current)
            perm = lay.transpose_between(current, layout)
            shape = lay.permute_shape(self.shape(name), layout)
            index = self._new_tensor(f"{name}_{''.join(map(str, layout))}", shape,
                                     self.builder.info(source).dtype, self.builder.info(source).quantization)
            if lay.is_free_reshape(self.builder.info(source).shape, perm):  # only unit axes move
                self.builder.operator("RESHAPE", [source, self.int32("shape", shape)], [index],
                                      self.builder.options("ReshapeOptions", newShape=list(shape)))
            else:
                self.builder.operator("TRANSPOSE", [source, self.int32(f"{name}_perm", perm)], [index],
                                      None, self.version("TRANSPOSE", [source]))
        self._tensors[key] = index
        return index

    def output(self, name: str, layout: lay.Layout | None = None, dtype=None, shape=None,
               quantization: Quantization | None = None) -> int:
        """Declare the TFLite tensor holding ONNX output ``name`` in ``layout`` (identity when None)."""
        layout = lay.identity(self.rank(name)) if layout is None else tuple(layout)
        dtype = dtype or self.dtypes.get(name, np.dtype(np.float32))
        quantization = quantization or self.quantization.get(name)
        index = self._new_tensor(name, shape or lay.permute_shape(self.shape(name), layout), dtype, quantization)
        self.layouts[name] = layout
        self._tensors[(name, layout)] = index
        return index

    def alias(self, name: str, source: str) -> None:
        """ONNX tensor ``name`` is ``source`` (Identity, Dropout at inference)."""
        layout = self.layout_of(source)
        self.layouts[name] = layout
        self._tensors[(name, layout)] = self.value(source, layout)

    def int32(self, name: str, values) -> int:
        return self.builder.constant(name, np.asarray(values, dtype=np.int32))

    def _new_tensor(self, name, shape, dtype, quantization=None) -> int:
        return self.builder.tensor(name, shape, dtype, quantization=quantization)

    def bind(self, name: str, layout: lay.Layout, index: int) -> None:
        """ONNX tensor ``name`` is TFLite tensor ``index`` in ``layout`` (no operator)."""
        self.layouts[name] = tuple(layout)
        self._tensors[(name, tuple(layout))] = index

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
        if self.rank(name) == rank:
            return self.value(name, layout, dtype=self._dtype_of(like) if self.is_constant(name) else None)
        padded = (1,) * (rank - self.rank(name)) + tuple(self.shape(name))
        if self.is_constant(name):
            array = self.constant(name).reshape(padded).transpose(layout).astype(self._dtype_of(like))
            return self.builder.constant(name, array, self.quantization.get(name))
        key = f"{name}_rank{rank}"
        if key not in self.shapes:
            source = self.value(name, self.ordered_layout(name))
            self.shapes[key] = padded
            reshaped = self.output(key, dtype=self.builder.info(source).dtype,
                                   quantization=self.builder.info(source).quantization)
            self.builder.operator("RESHAPE", [source, self.int32("shape", padded)], [reshaped],
                                  self.builder.options("ReshapeOptions", newShape=list(padded)))
        return self.value(key, layout)

    def scalar_like(self, name: str, value: float) -> int:
        return self.builder.constant("scalar", np.array([value], dtype=self._dtype_of(name)))

    def activation_tensor(self, name: str, shape, like: str) -> int:
        """An intermediate TFLite tensor with the type (and quantization) of ONNX tensor ``like``."""
        return self._new_tensor(name, shape, self._dtype_of(like), self.quantization.get(like))

    def _dtype_of(self, name: str) -> np.dtype:
        return np.dtype(self.dtypes.get(name, np.float32))

    @staticmethod
    def attribute(node, name: str, default=None):
        from ..quantization.graph import attribute

        return attribute(node, name, default)

    # -- weights ---------------------------------------------------------------------------------
    def weight_source(self, name: str):
        """Where a weight's values come from when it is not a plain constant (None: nowhere)."""
        return None

    def weight(self, name: str, node) -> np.ndarray:
        """The float values of weight ``name`` of ``node`` (a computed weight is an error)."""
        if not self.is_constant(name):
            raise EdgeoptError(f"{node.op_type} {node.name!r}: its weights {name!r} are computed at run time; the "
                               "TFLite writer needs constant weights")
        return self.constant(name)

    def weight_tensor(self, name: str, array: np.ndarray, axis: int) -> int:
        """The TFLite constant holding weight ``name`` rearranged as ``array`` (output channels on ``axis``)."""
        return self.builder.constant(name, np.asarray(array, dtype=np.float32))

    def bias(self, node, channels: int, values=None) -> int:
        """The bias of a Conv/Gemm (given ``values``, or its third input), zeros where it has none:
        XNNPACK and the builtin kernels expect one."""
        if values is None and len(node.input) > 2 and node.input[2]:
            values = self.weight(node.input[2], node)
        values = np.zeros(channels) if values is None else np.asarray(values).reshape(-1)
        return self.builder.constant(f"{node.name}_bias", values.astype(np.float32))

    def can_fuse(self, name: str, activation) -> bool:
        return True

    def version(self, op: str, inputs: list[int], **flags) -> int:
        from .versions import Signature, version

        infos = [self.builder.info(i) if i >= 0 else None for i in inputs]
        per_channel = any(info is not None and info.quantization is not None and len(info.quantization.scale) > 1
                          for info in infos)
        signature = Signature(tuple(info.dtype if info else None for info in infos), None, flags,
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
            converter_for(node)(self, node)
        outputs = [self._graph_output(value.name) for value in self.model.graph.output]
        return self.builder.finish(inputs, outputs)

    def _graph_input(self, name: str) -> int:
        shape = self.shape(name)
        if self.io_layout == "nhwc" and len(shape) >= 3:
            return self.output(name, lay.channels_last(len(shape)))
        return self.output(name)

    def _graph_output(self, name: str) -> int:
        rank = self.rank(name)
        wanted = lay.channels_last(rank) if self.io_layout == "nhwc" and rank >= 3 else lay.identity(rank)
        if name in self.view.graph_inputs or self.is_constant(name):
            raise EdgeoptError(f"output {name!r} is an input or a constant of the model; TFLite needs it computed")
        index = self.value(name, wanted)
        own = self._tensors[(name, self.layouts[name])]
        if own != index:  # the output is a TRANSPOSE of the tensor the graph computed: give it the name
            tensors = self.builder.tensors
            tensors[own].name, tensors[index].name = tensors[index].name, tensors[own].name
        return index
