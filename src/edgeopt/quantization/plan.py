"""The quantization decisions for one model, as typed data: which tensors, with which parameters.

Algorithms produce a :class:`QuantizationPlan`; passes apply it (:func:`.qdq.apply_plan`);
:func:`.read_plan.read_plan` recovers it from any QDQ model. Later techniques (QAT, the TFLite
writer) read the same plan instead of deciding again, and ``quantize(..., plan=...)`` builds a
model from one without calibration data.

A plan names tensors and nodes of the *prepared* float model (see :mod:`.prepare`), and keys
constant inputs by ``(node name, input index)``. Every constant carries its integers, so a plan
is complete: applying it needs the float graph, never the float weights' values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from .numerics import QuantParams, dequantize

#: (node name, input index)
Key = tuple[str, int]
#: metadata_props key under which :func:`.qdq.apply_plan` records what the graph cannot show
METADATA_KEY = "edgeopt.plan"


@dataclass(frozen=True, eq=False)
class QuantizedConstant:
    """A constant input stored as integers: ``real = (values - zero_point) * scale``."""

    params: QuantParams
    values: np.ndarray

    def dequantized(self) -> np.ndarray:
        return dequantize(self.values, self.params)

    def __eq__(self, other) -> bool:
        return (isinstance(other, QuantizedConstant) and same_params(self.params, other.params)
                and self.values.dtype == other.values.dtype and np.array_equal(self.values, other.values))


def same_params(a: QuantParams, b: QuantParams) -> bool:
    """Equal scale, zero point, type and axis (a 1-element per-channel scale equals a scalar one)."""
    axis_a = a.axis if np.size(a.scale) > 1 else None
    axis_b = b.axis if np.size(b.scale) > 1 else None
    return (a.dtype == b.dtype and axis_a == axis_b
            and np.array_equal(np.asarray(a.scale, np.float32).reshape(-1), np.asarray(b.scale, np.float32).reshape(-1))
            and np.array_equal(np.asarray(a.zero_point).reshape(-1).astype(np.int64),
                               np.asarray(b.zero_point).reshape(-1).astype(np.int64)))


@dataclass(eq=False)
class QuantizationPlan:
    #: "uint8", "int8" or "int16": the type of the quantized activations
    activation_type: str
    #: activation tensor name -> parameters
    activations: dict[str, QuantParams] = field(default_factory=dict)
    #: (node name, weight index) -> int8 weight
    weights: dict[Key, QuantizedConstant] = field(default_factory=dict)
    #: (node name, bias index) -> int32 bias at input scale x weight scale
    biases: dict[Key, QuantizedConstant] = field(default_factory=dict)
    #: (node name, input index) -> a constant operand quantized like an activation (Add, Mul, ...)
    constants: dict[Key, QuantizedConstant] = field(default_factory=dict)
    #: names of the nodes that run quantized
    nodes: list[str] = field(default_factory=list)
    #: Relu/Clip node name -> name of the node whose quantized output now clamps for it
    absorbed: dict[str, str] = field(default_factory=dict)
    #: tensor or node name -> why it stays float
    kept_float: dict[str, str] = field(default_factory=dict)
    #: inputs and outputs become integers, no float operator is left (Edge TPU-class targets)
    integer_only: bool = False
    #: nodes the fallback keeps float: their weights stay float32 too (weight storage stores the
    #: weights of other float nodes as int8 + scale), since their rounding error is part of the
    #: error keeping them float removes
    float_weight_nodes: list[str] = field(default_factory=list)
    #: how the integers were chosen (provenance, not needed to apply the plan)
    corrected_biases: set[Key] = field(default_factory=set)
    compensated_weights: set[Key] = field(default_factory=set)

    def __eq__(self, other) -> bool:
        """Same decisions: tensors, parameters, integers, nodes, absorbed activations."""
        if not isinstance(other, QuantizationPlan):
            return NotImplemented
        return (self.activation_type == other.activation_type
                and self.activations.keys() == other.activations.keys()
                and all(same_params(p, other.activations[n]) for n, p in self.activations.items())
                and self.weights == other.weights and self.biases == other.biases
                and self.constants == other.constants and set(self.nodes) == set(other.nodes)
                and self.absorbed == other.absorbed and self.integer_only == other.integer_only
                and set(self.float_weight_nodes) == set(other.float_weight_nodes))

    def differences(self, other: "QuantizationPlan") -> list[str]:
        """What differs from ``other``, one line per item (for test failures and debugging)."""
        lines = []
        if self.activation_type != other.activation_type:
            lines.append(f"activation_type {self.activation_type} != {other.activation_type}")
        for label, ours, theirs in (("activation", self.activations, other.activations),
                                    ("weight", self.weights, other.weights), ("bias", self.biases, other.biases),
                                    ("constant", self.constants, other.constants)):
            for key in sorted(set(ours) | set(theirs), key=str):
                if key not in ours or key not in theirs:
                    lines.append(f"{label} {key} only in {'this' if key in ours else 'the other'} plan")
                elif not (same_params(ours[key], theirs[key]) if label == "activation" else ours[key] == theirs[key]):
                    lines.append(f"{label} {key} differs")
        if set(self.nodes) != set(other.nodes):
            lines.append(f"nodes differ: {sorted(set(self.nodes) ^ set(other.nodes))}")
        if self.absorbed != other.absorbed:
            lines.append(f"absorbed {self.absorbed} != {other.absorbed}")
        if set(self.float_weight_nodes) != set(other.float_weight_nodes):
            lines.append(f"float weights differ: {sorted(set(self.float_weight_nodes) ^ set(other.float_weight_nodes))}")
        return lines

    def metadata(self) -> str:
        """What a QDQ graph cannot show exactly: the quantized nodes (a node between quantized
        tensors may still run float), absorbed activations, why tensors stay float, provenance."""
        return json.dumps({"nodes": list(self.nodes), "absorbed": self.absorbed, "kept_float": self.kept_float,
                           "integer_only": self.integer_only, "float_weight_nodes": sorted(self.float_weight_nodes),
                           "corrected_biases": sorted(_key_text(k) for k in self.corrected_biases),
                           "compensated_weights": sorted(_key_text(k) for k in self.compensated_weights)},
                          sort_keys=True)

    def to_dict(self) -> dict:
        """JSON-serialisable summary (parameters, not the integers) for reports."""
        def keyed(table):
            return {_key_text(key): entry.params.to_dict() for key, entry in table.items()}

        return {
            "activation_type": self.activation_type,
            "activations": {name: params.to_dict() for name, params in self.activations.items()},
            "weights": keyed(self.weights),
            "biases": keyed(self.biases),
            "constants": keyed(self.constants),
            "corrected_biases": sorted(_key_text(k) for k in self.corrected_biases),
            "compensated_weights": sorted(_key_text(k) for k in self.compensated_weights),
            "nodes": list(self.nodes),
            "absorbed": dict(self.absorbed),
            "kept_float": dict(self.kept_float),
            "float_weight_nodes": sorted(self.float_weight_nodes),
        }


def _key_text(key: Key) -> str:
    return f"{key[0]}:{key[1]}"


def parse_key(text: str) -> Key:
    node, _, index = text.rpartition(":")
    return node, int(index)
