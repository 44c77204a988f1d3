"""One model that simulates every keep-float variant of a plan, so the fallback and the attribution
need one session instead of one build per variant.

The plan's QuantizeLinear/DequantizeLinear pairs are applied as usual, then every quantized
tensor, and every quantized node's constant inputs, sit behind a ``Where`` whose condition is a
boolean graph input (a switch). Switched on, a reader sees the dequantized tensor; off, the
float one. Activations are switched by an ``If`` whose branches pass one of the two on (ONNX
Runtime's ``Where`` with a scalar condition computes every element: on PP-OCRv5's detector it was
43% of a run, the ``If`` 18% less in all); constants, small, by ``Where``. For a set of tensors kept float, :meth:`SwitchedModel.switches` sets the switches as
the real build would quantize (same selection, same parameters). It differs from the build by
the integer kernels' requantization rounding, and in float nodes' weights (exact here, stored
as int8 in the build). Absorbed Relu/Clip nodes are kept (numerically the same: the quantized
range clamps as they do). A variant whose parameters differ from the base plan's (a tensor that
shared the scale of one now float) is not simulated: the builder builds it for real.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .graph import GraphView, tensor_dtypes, topological_sort
from .operators import FLOAT_WEIGHT_READERS
from .plan import QuantizationPlan
from .qdq import apply_plan
from .select import Selection


class SwitchedModel:
    """The float ``model`` with ``plan``'s quantization behind switches."""

    def __init__(self, model: onnx.ModelProto, plan: QuantizationPlan, dtypes: dict[str, int] | None = None):
        self.plan = plan
        self.dtypes = tensor_dtypes(model) if dtypes is None else dtypes  # planned without absorption: every tensor a variant may quantize has parameters
        float_nodes = {node.name: node for node in model.graph.node}
        self.float_constants = {init.name: init for init in model.graph.initializer}
        simulated = onnx.ModelProto()
        simulated.CopyFrom(model)
        apply_plan(simulated, self.plan)
        view = GraphView(simulated)
        self.tensor_switch: dict[str, str] = {}
        self.node_switch: dict[str, str] = {}
        new_nodes: list[onnx.NodeProto] = []
        for name in self.plan.activations:
            self._switch_activation(view, name, new_nodes)
        for table in (self.plan.weights, self.plan.biases, self.plan.constants):
            for (node_name, index) in table:
                self._switch_constant(view, float_nodes[node_name], index, new_nodes)
        simulated.graph.node.extend(new_nodes)
        for switch in list(self.tensor_switch.values()) + list(self.node_switch.values()):
            simulated.graph.input.append(helper.make_tensor_value_info(switch, TensorProto.BOOL, []))
        topological_sort(simulated.graph)
        self.model = simulated
        self._session = None

    def _switch(self, table: dict, key: str, view: GraphView) -> str:
        if key not in table:
            table[key] = view.unique(f"switch{len(self.tensor_switch) + len(self.node_switch)}")
        return table[key]

    def _switch_activation(self, view: GraphView, name: str, new_nodes: list) -> None:
        """Readers of the tensor's DequantizeLinear output read Where(switch, dequantized, float)."""
        quantize_node = next(node for node in view.graph.node if node.op_type == "QuantizeLinear"
                             and (node.input[0] == name or _dequantized_by(view, node) == name))
        float_source = quantize_node.input[0]
        dequantize_node = view.consumers[quantize_node.output[0]][0]
        switched = dequantize_node.output[0]
        dequantize_node.output[0] = view.unique(f"{switched}_sim")
        tensor_switch = self._switch(self.tensor_switch, name, view)
        dtype = self.dtypes.get(float_source, TensorProto.FLOAT)
        new_nodes.append(_choose(view, tensor_switch, dequantize_node.output[0], float_source, switched, dtype))
        # A float Conv/Gemm reads the float tensor in the real build: its own switch decides.
        for reader in view.consumers.get(switched, []):
            if reader.op_type in FLOAT_WEIGHT_READERS and reader.input[0] == switched and len(reader.input) > 1 \
                    and view.is_constant(reader.input[1]):
                node_input = view.unique(f"{switched}_for_{reader.name}")
                new_nodes.append(_choose(view, self._switch(self.node_switch, reader.name, view), switched,
                                         float_source, node_input, dtype))
                reader.input[0] = node_input

    def _switch_constant(self, view: GraphView, float_node: onnx.NodeProto, index: int, new_nodes: list) -> None:
        node = next(n for n in view.graph.node if n.name == float_node.name)
        source = float_node.input[index]
        float_name = view.add_initializer(f"{source}_float", numpy_helper.to_array(self.float_constants[source]))
        switched = view.unique(f"{node.input[index]}_for_{node.name}")
        new_nodes.append(view.make_node("Where", [self._switch(self.node_switch, node.name, view),
                                                  node.input[index], float_name], [switched], "sim_where"))
        node.input[index] = switched

    def switches(self, selection: Selection, activations: set[str]) -> dict[str, np.ndarray]:
        """Switch values that quantize what a keep-float variant quantizes: the nodes of its
        ``selection`` and the ``activations`` of its plan (after absorption)."""
        nodes = {node.name for node in selection.nodes}
        flags = {switch: np.array(name in activations) for name, switch in self.tensor_switch.items()}
        flags.update({switch: np.array(name in nodes) for name, switch in self.node_switch.items()})
        return flags

    def run(self, feeds: list[dict], selection: Selection, activations: set[str]) -> list[list]:
        from ..runtimes.onnxruntime import make_session, run_checked

        if self._session is None:
            self._session = make_session(self.model)
        flags = self.switches(selection, activations)
        return [run_checked(self._session, None, {**feed, **flags}, "calibration data") for feed in feeds]


def _choose(view: GraphView, switch: str, on: str, off: str, output: str, dtype: int) -> onnx.NodeProto:
    """``output = on if switch else off``, computing neither element by element."""
    def branch(source: str, label: str) -> onnx.GraphProto:
        passed = view.unique(f"{output}_{label}")
        return helper.make_graph([helper.make_node("Identity", [source], [passed])], view.unique(f"sim_{label}"),
                                 [], [helper.make_tensor_value_info(passed, dtype, None)])

    return view.make_node("If", [switch], [output], "sim_if", then_branch=branch(on, "on"),
                          else_branch=branch(off, "off"))


def _dequantized_by(view: GraphView, quantize_node: onnx.NodeProto) -> str | None:
    readers = view.consumers.get(quantize_node.output[0], [])
    return readers[0].output[0] if readers and readers[0].op_type == "DequantizeLinear" else None

