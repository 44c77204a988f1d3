"""A thin, mutable view of an ONNX graph for passes: producers, consumers, constants, dtypes.

Passes edit the protobuf through this view; algorithms never touch it (they take numbers and
return numbers).
"""

from __future__ import annotations

import contextlib
import itertools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import external_data

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


class GraphView:
    """Indexes of one (main) graph; call :meth:`refresh` after editing nodes."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.graph = model.graph
        self._names = itertools.count()
        self.refresh()

    def refresh(self) -> None:
        self.initializers = {init.name: init for init in self.graph.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in self.graph.node:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {value.name for value in self.graph.output}
        self.graph_inputs = {value.name for value in self.graph.input if value.name not in self.initializers}
        self.used_names = set(self.producer) | set(self.initializers) | self.graph_inputs
        self.used_names |= {node.name for node in self.graph.node}

    def unique(self, base: str) -> str:
        name = base
        while name in self.used_names:
            name = f"{base}_{next(self._names)}"
        self.used_names.add(name)
        return name

    def constant(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers

    def add_initializer(self, base: str, array: np.ndarray) -> str:
        name = self.unique(base)
        tensor = numpy_helper.from_array(np.asarray(array), name)
        self.graph.initializer.append(tensor)
        self.initializers[name] = tensor
        return name

    def remove_unused_initializers(self) -> None:
        used = {name for node in self.graph.node for name in node.input}
        used |= subgraph_inputs(self.graph) | self.graph_outputs
        # Deleted in place: rebuilding the list would copy every weight kept (MiniLM: 90 MB a build).
        for index in reversed([i for i, init in enumerate(self.graph.initializer) if init.name not in used]):
            del self.graph.initializer[index]
        for index in reversed([i for i, value in enumerate(self.graph.input)
                               if value.name in self.initializers and value.name not in used]):
            del self.graph.input[index]
        self.refresh()

    def make_node(self, op_type: str, inputs: list[str], outputs: list[str], name_hint: str,
                  domain: str = "", **attributes) -> onnx.NodeProto:
        return helper.make_node(op_type, inputs, outputs, name=self.unique(name_hint), domain=domain or None,
                                **attributes)


@contextlib.contextmanager
def extra_outputs(model: onnx.ModelProto, names):
    """``model`` with ``names`` as further float outputs while the block runs, then as it was: for
    a session that fetches intermediate tensors without a copy of the model (a copy holds every
    weight once more: 90 MB on MiniLM, at calibration's peak)."""
    count = len(model.graph.output)
    present = {value.name for value in model.graph.output} | {value.name for value in model.graph.input}
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None)
                              for name in dict.fromkeys(names) if name not in present)
    try:
        yield model
    finally:
        del model.graph.output[count:]


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is read (by a node, a control-flow body or the graph's
    outputs), until none is left."""
    while True:
        read = {name for node in graph.node for name in node.input} | subgraph_inputs(graph)
        read |= {value.name for value in graph.output}
        dead = [index for index, node in enumerate(graph.node) if not any(name in read for name in node.output)]
        if not dead:
            return
        for index in reversed(dead):
            del graph.node[index]


def subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read from an outer scope by If/Loop/Scan bodies (they must not be removed)."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            bodies = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
            for body in bodies:
                local = {o for n in body.node for o in n.output} | {i.name for i in body.initializer}
                local |= {i.name for i in body.input}
                names |= {i for n in body.node for i in n.input if i and i not in local}
                names |= subgraph_inputs(body)
    return names


def tensor_dtypes(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor the shape inference can type (inputs, outputs, intermediates)."""
    try:
        inferred = external_data.infer_shapes(model)
    except Exception:
        inferred = model
    types: dict[str, int] = {}
    graph = inferred.graph
    for value in itertools.chain(graph.input, graph.output, graph.value_info):
        if value.type.HasField("tensor_type"):
            types[value.name] = value.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return entry.version
    return 0


def ensure_opset(model: onnx.ModelProto, domain: str, version: int = 1) -> None:
    if not any(entry.domain == domain for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _outer_reads(node: onnx.NodeProto) -> set[str]:
    """Names a node's If/Loop/Scan bodies read from the enclosing graph."""
    if not any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute):
        return set()
    wrapper = onnx.GraphProto()
    wrapper.node.append(node)
    return subgraph_inputs(wrapper)


def stable_order(needs: list[set[int]]) -> list[int]:
    """Kahn's algorithm over items ``0..n-1``, item ``i`` after every item in ``needs[i]``, ready
    items taken lowest index first (so an order that is already valid is kept). Items on a cycle
    are left out."""
    import heapq

    waiting = [len(needed) for needed in needs]
    readers: list[list[int]] = [[] for _ in needs]
    for index, needed in enumerate(needs):
        for source in needed:
            readers[source].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    return order


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after the producers of its inputs, including the names its
    control-flow bodies read (passes may append nodes). Stable (Kahn's algorithm taking ready
    nodes in their current order); a cycle keeps the original order of the nodes it holds."""
    nodes = list(graph.node)
    producer = {name: index for index, node in enumerate(nodes) for name in node.output if name}
    needs = [{producer[name] for name in list(node.input) + sorted(_outer_reads(node))
              if name in producer and producer[name] != index} for index, node in enumerate(nodes)]
    order = stable_order(needs)
    placed = set(order)
    order += [index for index in range(len(nodes)) if index not in placed]
    ordered = [onnx.NodeProto.FromString(nodes[index].SerializeToString()) for index in order]
    del graph.node[:]
    graph.node.extend(ordered)
