"""The quantization decisions for one model, as data: which tensors, with which parameters.

Algorithms produce a :class:`QuantizationPlan`; passes apply it. Later techniques (QAT, the
TFLite writer) read the same plan instead of deciding again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .numerics import QuantParams


@dataclass
class QuantizationPlan:
    activation_type: str
    #: activation tensor name -> parameters
    activations: dict[str, QuantParams] = field(default_factory=dict)
    #: (node name, input index) -> parameters of a constant input (weight, bias or operand)
    weights: dict[tuple[str, int], QuantParams] = field(default_factory=dict)
    biases: dict[tuple[str, int], QuantParams] = field(default_factory=dict)
    #: (node name, bias index) -> float bias after bias correction (when it differs from the model's)
    bias_values: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    constants: dict[tuple[str, int], QuantParams] = field(default_factory=dict)
    #: (node name, weight index) -> float weight already on its int8 grid, when rounding chose
    #: other integers than the nearest ones (see :mod:`.rounding`)
    weight_values: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    #: names of the nodes that run quantized
    nodes: list[str] = field(default_factory=list)
    #: Relu/Clip node name -> name of the node whose quantized output now clamps for it
    absorbed: dict[str, str] = field(default_factory=dict)
    #: tensor or node name -> why it stays float
    kept_float: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def keyed(table):
            return {f"{node}:{index}": params.to_dict() for (node, index), params in table.items()}

        return {
            "activation_type": self.activation_type,
            "activations": {name: params.to_dict() for name, params in self.activations.items()},
            "weights": keyed(self.weights),
            "biases": keyed(self.biases),
            "constants": keyed(self.constants),
            "corrected_biases": sorted(f"{node}:{index}" for node, index in self.bias_values),
            "compensated_weights": sorted(f"{node}:{index}" for node, index in self.weight_values),
            "nodes": list(self.nodes),
            "absorbed": dict(self.absorbed),
            "kept_float": dict(self.kept_float),
        }
