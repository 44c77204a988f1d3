"""Assemble one TFLite model: tensors, constant buffers, operators and their codes.

The builder knows the flatbuffer's bookkeeping (buffer 0 empty, operator codes deduplicated,
``deprecated_builtin_code``, unique tensor names) and nothing about ONNX; the lowering in
:mod:`.lower` decides what to add.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import schema as fb


@dataclass(frozen=True)
class Quantization:
    """Affine parameters of one tensor: ``real = scale * (q - zero_point)``, per tensor or per
    slice along ``axis``."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int = 0

    def to_schema(self):
        params = fb.module().QuantizationParametersT()
        params.scale = [float(s) for s in self.scale]
        params.zeroPoint = [int(z) for z in self.zero_point]
        params.quantizedDimension = int(self.axis)
        return params


@dataclass(frozen=True)
class TensorInfo:
    """What the builder knows of a tensor it added (the lowering reads shapes and types back)."""

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    quantization: Quantization | None = None


class ModelBuilder:
    """One subgraph; :meth:`finish` gives the ``ModelT``."""

    def __init__(self):
        self.schema = fb.module()
        self.buffers = [fb.aligned_buffer(None)]
        self.tensors: list = []
        self.infos: list[TensorInfo] = []
        self.operators: list = []
        self._codes: dict[tuple[int, int], int] = {}
        self._names: set[str] = set()

    def tensor(self, name: str, shape, dtype, data: np.ndarray | None = None,
               quantization: Quantization | None = None) -> int:
        """Add a tensor (a constant when ``data`` is given) and return its index."""
        tensor = self.schema.TensorT()
        tensor.name = self._unique(name)
        tensor.shape = [int(d) for d in shape]
        tensor.type = fb.tensor_type(dtype)
        tensor.buffer = 0
        if data is not None:
            array = np.ascontiguousarray(data, dtype=dtype)
            self.buffers.append(fb.aligned_buffer(array.astype(array.dtype.newbyteorder("<")).tobytes()))
            tensor.buffer = len(self.buffers) - 1
        if quantization is not None:
            tensor.quantization = quantization.to_schema()
        self.tensors.append(tensor)
        info = TensorInfo(len(self.tensors) - 1, tuple(tensor.shape), np.dtype(dtype), quantization)
        self.infos.append(info)
        return info.index

    def constant(self, name: str, array: np.ndarray, quantization: Quantization | None = None) -> int:
        array = np.asarray(array)
        return self.tensor(name, array.shape, array.dtype, array, quantization)

    def info(self, index: int) -> TensorInfo:
        return self.infos[index]

    def operator(self, op: str, inputs: list[int], outputs: list[int], options=None, version: int = 1) -> None:
        """Add a builtin operator ``op`` (``"CONV_2D"``); ``options`` is a ``*OptionsT`` object
        (the union member is found from its class name); ``-1`` in ``inputs`` marks an absent
        optional input."""
        code = getattr(self.schema.BuiltinOperator, op)
        operator = self.schema.OperatorT()
        operator.opcodeIndex = self._opcode(code, version)
        operator.inputs = [int(i) for i in inputs]
        operator.outputs = [int(i) for i in outputs]
        if options is not None:
            operator.builtinOptionsType = getattr(self.schema.BuiltinOptions, type(options).__name__[:-1])
            operator.builtinOptions = options
        self.operators.append(operator)

    def options(self, name: str, **fields):
        """A ``<name>T`` options object with ``fields`` set (camelCase names, as generated)."""
        options = getattr(self.schema, name + "T")()
        for key, value in fields.items():
            if not hasattr(options, key):
                raise AttributeError(f"{name} has no field {key}")
            setattr(options, key, value)
        return options

    def operator_counts(self) -> dict[str, int]:
        """How many operators of each builtin the model holds, by name."""
        codes = {index: code for (code, _), index in self._codes.items()}
        counts: dict[str, int] = {}
        for operator in self.operators:
            name = fb.builtin_name(codes[operator.opcodeIndex])
            counts[name] = counts.get(name, 0) + 1
        return dict(sorted(counts.items()))

    def finish(self, inputs: list[int], outputs: list[int], description: str = "edgeopt"):
        subgraph = self.schema.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = list(inputs)
        subgraph.outputs = list(outputs)
        subgraph.operators = self._in_execution_order()
        subgraph.name = "main"
        model = self.schema.ModelT()
        model.version = fb.SCHEMA_VERSION
        model.description = description
        model.subgraphs = [subgraph]
        model.buffers = self.buffers
        codes = sorted(self._codes.items(), key=lambda item: item[1])
        model.operatorCodes = [self._code_entry(code, version) for (code, version), _ in codes]
        model.signatureDefs = [self._signature(inputs, outputs)]
        return model

    def _signature(self, inputs: list[int], outputs: list[int]):
        """The ``serving_default`` signature LiteRT's signature runner and ai-edge-quantizer read,
        naming each input and output as the ONNX model does."""
        def entries(indices):
            found = []
            for index in indices:
                entry = self.schema.TensorMapT()
                entry.name = self.tensors[index].name
                entry.tensorIndex = int(index)
                found.append(entry)
            return found

        signature = self.schema.SignatureDefT()
        signature.inputs, signature.outputs = entries(inputs), entries(outputs)
        signature.signatureKey = "serving_default"
        signature.subgraphIndex = 0
        return signature

    def _in_execution_order(self) -> list:
        """The operators sorted so each runs after the producers of its inputs (TFLite runs them
        in list order; converters may add a rescaling QUANTIZE before the operator it follows).
        Stable: operators already in order keep it."""
        from ..quantization.graph import stable_order

        producer = {t: i for i, op in enumerate(self.operators) for t in op.outputs}
        order = stable_order([{producer[t] for t in op.inputs if t in producer and producer[t] != i}
                              for i, op in enumerate(self.operators)])
        if len(order) != len(self.operators):
            raise RuntimeError("internal: the TFLite operators form a cycle")
        return [self.operators[i] for i in order]

    def _code_entry(self, code: int, version: int):
        entry = self.schema.OperatorCodeT()
        entry.builtinCode = code
        entry.deprecatedBuiltinCode = min(code, 127)  # PLACEHOLDER_FOR_GREATER_OP_CODES above 127
        entry.version = version
        return entry

    def _opcode(self, code: int, version: int) -> int:
        return self._codes.setdefault((code, version), len(self._codes))

    def _unique(self, name: str) -> str:
        candidate, suffix = name, 1
        while candidate in self._names:
            candidate = f"{name}_{suffix}"
            suffix += 1
        self._names.add(candidate)
        return candidate
