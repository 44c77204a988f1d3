"""One model that simulates every keep-float variant of a plan, so the fallback and the attribution
need one session instead of one build per variant.

The plan's QuantizeLinear/DequantizeLinear pairs are applied as usual, then every quantized
tensor and every quantized node sits behind a switch, a boolean graph input:

* an activation: an ``If`` whose branches pass on the dequantized tensor or the float one (ONNX
  Runtime's ``Where`` with a scalar condition computes every element: on PP-OCRv5's detector it
  was 43% of a run);
* a node with quantized constants (weights, biases, constant operands): an ``If`` whose branches
  hold two copies of the node, one with the dequantized constants and one with the float ones,
  each stored inside its branch. A constant there is one to ONNX Runtime, which prepacks the
  weights; behind a ``Where`` (as this module had it) every Conv ran unpacked and the switched
  model took five times the float model's time (PP-OCRv5's detector: 0.23 s against 0.045 s for
  eight samples). The float copy of a Conv/Gemm reads the float input, as in the real build
  (except for integer-only models, whose float readers stay on the DequantizeLinear output).

For a set of tensors kept float, :meth:`SwitchedModel.switches` sets the switches as the real
build would quantize (same selection, same parameters). It differs from the build by the integer
kernels' requantization rounding, and by the weights of nodes no variant quantizes (a Conv under
the ``matmul-inputs`` scope): float here, stored as int8 in the build. Absorbed Relu/Clip nodes
are kept (numerically the same: the quantized range clamps as they do). A variant whose
parameters differ from the base plan's (a tensor that shared the scale of one now float) is not
simulated: the builder builds it for real.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import EdgeoptError
from .graph import GraphView, remove_dead_nodes, tensor_dtypes, topological_sort
from .operators import FLOAT_WEIGHT_READERS
from .plan import QuantizationPlan
from .qdq import apply_plan
from .select import Selection


class SwitchedModel:
    """The float ``model`` with ``plan``'s quantization behind switches."""

    def __init__(self, model: onnx.ModelProto, plan: QuantizationPlan, dtypes: dict[str, int] | None = None,
                 float_readers_read_float: bool = True):
        self.plan = plan
        self.float_readers_read_float = float_readers_read_float
        self.dtypes = tensor_dtypes(model) if dtypes is None else dtypes  # planned without absorption: every tensor a variant may quantize has parameters
        float_nodes = {node.name: node for node in model.graph.node}
        self.float_constants = {init.name: init for init in model.graph.initializer}
        simulated = onnx.ModelProto()
        simulated.CopyFrom(model)
        apply_plan(simulated, self.plan)
        view = GraphView(simulated)
        self.tensor_switch: dict[str, str] = {}
        self.node_switch: dict[str, str] = {}
        self._float_source: dict[str, str] = {}
        constants = _constants_by_node(plan)
        new_nodes: list[onnx.NodeProto] = []
        for name in self.plan.activations:
            self._switch_activation(view, name, new_nodes, constants)
        current = {node.name: node for node in simulated.graph.node}
        missing = [name for name in constants if name not in current or name not in float_nodes]
        if missing:
            raise EdgeoptError(f"the plan quantizes constants of nodes the model does not have ({missing[:3]})")
        for node_name, entries in constants.items():
            new_nodes.append(self._switch_node(view, current[node_name], float_nodes[node_name], entries))
        kept = [node for node in simulated.graph.node if node.name not in constants]
        del simulated.graph.node[:]
        simulated.graph.node.extend(kept + new_nodes)
        remove_dead_nodes(simulated.graph)
        GraphView(simulated).remove_unused_initializers()
        for switch in list(self.tensor_switch.values()) + list(self.node_switch.values()):
            simulated.graph.input.append(helper.make_tensor_value_info(switch, TensorProto.BOOL, []))
        topological_sort(simulated.graph)
        self.model = simulated
        self._session = None

    def _switch(self, table: dict, key: str, view: GraphView) -> str:
        if key not in table:
            table[key] = view.unique(f"switch{len(self.tensor_switch) + len(self.node_switch)}")
        return table[key]

    def _switch_activation(self, view: GraphView, name: str, new_nodes: list, switched_nodes) -> None:
        """Readers of the tensor's DequantizeLinear output read If(switch, dequantized, float)."""
        quantize_node = next(node for node in view.graph.node if node.op_type == "QuantizeLinear"
                             and (node.input[0] == name or _dequantized_by(view, node) == name))
        float_source = quantize_node.input[0]
        dequantize_node = view.consumers[quantize_node.output[0]][0]
        switched = dequantize_node.output[0]
        dequantize_node.output[0] = view.unique(f"{switched}_sim")
        self._float_source[switched] = float_source
        tensor_switch = self._switch(self.tensor_switch, name, view)
        dtype = self.dtypes.get(float_source, TensorProto.FLOAT)
        new_nodes.append(_choose(view, tensor_switch, dequantize_node.output[0], float_source, switched, dtype))
        # A float Conv/Gemm reads the float tensor in the real build: its own switch decides
        # (inside the node's own If where it has quantized constants).
        for reader in view.consumers.get(switched, []) if self.float_readers_read_float else []:
            if reader.op_type in FLOAT_WEIGHT_READERS and reader.input[0] == switched and len(reader.input) > 1 \
                    and view.is_constant(reader.input[1]) and reader.name not in switched_nodes:
                node_input = view.unique(f"{switched}_for_{reader.name}")
                new_nodes.append(_choose(view, self._switch(self.node_switch, reader.name, view), switched,
                                         float_source, node_input, dtype))
                reader.input[0] = node_input

    def _switch_node(self, view: GraphView, node: onnx.NodeProto, float_node: onnx.NodeProto,
                     entries: dict[int, np.ndarray]) -> onnx.NodeProto:
        """``If(switch)``: the node with its dequantized constants, else with its float constants
        (and, for a Conv/Gemm, its float input), each constant stored in its branch."""
        quantized_inputs, quantized_constants = list(node.input), {}
        float_inputs, float_constants = list(node.input), {}
        for index, dequantized in entries.items():
            values = numpy_helper.to_array(self.float_constants[float_node.input[index]])
            quantized_inputs[index] = view.unique(f"{float_node.input[index]}_sim_q")
            quantized_constants[quantized_inputs[index]] = dequantized.astype(values.dtype)
            float_inputs[index] = view.unique(f"{float_node.input[index]}_sim_f")
            float_constants[float_inputs[index]] = values
        if node.op_type in FLOAT_WEIGHT_READERS and node.input[0] in self._float_source and \
                self.float_readers_read_float:
            float_inputs[0] = self._float_source[node.input[0]]
        outputs = [name for name in node.output if name]
        dtypes = {name: self.dtypes.get(original, TensorProto.FLOAT)
                  for name, original in zip(node.output, float_node.output) if name}

        def branch(inputs: list[str], initializers: dict, label: str) -> onnx.GraphProto:
            inner = onnx.NodeProto()
            inner.CopyFrom(node)
            inner.name = view.unique(f"{node.name}_{label}")
            del inner.input[:]
            inner.input.extend(inputs)
            renamed = {name: view.unique(f"{name}_{label}") for name in outputs}
            del inner.output[:]
            inner.output.extend(renamed.get(name, "") for name in node.output)
            return helper.make_graph(
                [inner], view.unique(f"sim_{label}"), [],
                [helper.make_tensor_value_info(renamed[name], dtypes[name], None) for name in outputs],
                [numpy_helper.from_array(values, name) for name, values in initializers.items()])

        return view.make_node("If", [self._switch(self.node_switch, node.name, view)], outputs, "sim_if",
                              then_branch=branch(quantized_inputs, quantized_constants, "q"),
                              else_branch=branch(float_inputs, float_constants, "f"))

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
            self.model = None  # ONNX Runtime holds its own copy (the constants twice over, as float32)
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


def _constants_by_node(plan: QuantizationPlan) -> dict[str, dict[int, np.ndarray]]:
    """Node name -> {input index: dequantized constant} over the plan's weights, biases and
    constant operands."""
    constants: dict[str, dict[int, np.ndarray]] = {}
    for table in (plan.weights, plan.biases, plan.constants):
        for (node_name, index), entry in table.items():
            constants.setdefault(node_name, {})[index] = entry.dequantized()
    return constants


def _dequantized_by(view: GraphView, quantize_node: onnx.NodeProto) -> str | None:
    readers = view.consumers.get(quantize_node.output[0], [])
    return readers[0].output[0] if readers and readers[0].op_type == "DequantizeLinear" else None

