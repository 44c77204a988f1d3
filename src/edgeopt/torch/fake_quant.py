"""A PyTorch model with the fake quantizers of an int8 plan, placed by value (:mod:`.placement`):
an :class:`~.quantizers.ActivationQuantizer` after the traced node holding each planned
activation, and a :class:`~.quantizers.WeightQuantizer` on the weight of each planned Conv/Gemm
(as a parametrization, so the module keeps training its float weight). Models with BatchNorm
after a convolution need the fold that quantization-aware training adds next (issue 9); this
piece refuses them."""

from __future__ import annotations

import logging

import onnx
import torch
import torch.fx
from torch.nn.utils import parametrize

from ..errors import EdgeoptError
from ..quantization.graph import GraphView
from ..quantization.plan import QuantizationPlan
from . import placement
from .quantizers import ActivationQuantizer, weight_quantizer_for

logger = logging.getLogger(__name__)


def fake_quantized(model: torch.nn.Module, example_inputs: tuple, plan: QuantizationPlan,
                   prepared: onnx.ModelProto, weight_range: str = "safe") -> torch.fx.GraphModule:
    """``model`` traced, with ``plan``'s quantizers; ``prepared`` is the prepared ONNX export the
    plan was made for, ``example_inputs`` one input both are run on to place the quantizers."""
    traced = torch.fx.symbolic_trace(model)
    view = GraphView(prepared)
    onnx_nodes = {node.name: node for node in prepared.graph.node}
    weighted = {node_name for node_name, _ in plan.weights}
    tensors = list(plan.activations) + [onnx_nodes[name].output[0] for name in weighted]
    feed = {value.name: tensor.detach().cpu().numpy()
            for value, tensor in zip(_real_inputs(prepared), example_inputs)}
    found, missing = placement.correspondence(placement.onnx_values(prepared, tensors, feed),
                                              placement.node_values(traced, example_inputs))
    if missing:
        raise EdgeoptError(f"no PyTorch counterpart for the planned tensors {missing[:3]}")
    _insert_activation_quantizers(traced, {name: found[name] for name in plan.activations}, plan)
    modules = dict(traced.named_modules())
    fx_nodes = {node.name: node for node in traced.graph.nodes}
    for node_name in sorted(weighted):
        fx_node = fx_nodes[found[onnx_nodes[node_name].output[0]]]
        module = modules.get(fx_node.target) if fx_node.op == "call_module" else None
        if not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            raise EdgeoptError(f"ONNX node {node_name!r} maps to {fx_node.name!r}, not a Conv2d or Linear "
                               "(a convolution followed by BatchNorm needs the fold QAT adds)")
        onnx_weight = view.constant(onnx_nodes[node_name].input[1])
        if tuple(onnx_weight.shape) != tuple(module.weight.shape):
            raise EdgeoptError(f"the weight of {node_name!r} is laid out {tuple(onnx_weight.shape)} in ONNX and "
                               f"{tuple(module.weight.shape)} in PyTorch; expected the same layout")
        parametrize.register_parametrization(module, "weight",
                                             weight_quantizer_for(onnx_nodes[node_name], view, weight_range))
    return traced


def _real_inputs(model: onnx.ModelProto) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def _insert_activation_quantizers(traced: torch.fx.GraphModule, nodes: dict[str, str],
                                  plan: QuantizationPlan) -> None:
    """A quantizer module after each traced node named in ``nodes`` (tensor -> node), read by every
    user of that node."""
    fx_nodes = {node.name: node for node in traced.graph.nodes}
    for number, (tensor, node_name) in enumerate(nodes.items()):
        source = fx_nodes[node_name]
        target = f"edgeopt_quantizer_{number}"
        traced.add_submodule(target, ActivationQuantizer(plan.activations[tensor]))
        with traced.graph.inserting_after(source):
            quantized = traced.graph.call_module(target, (source,))
        source.replace_all_uses_with(quantized, delete_user_cb=lambda user, new=quantized: user is not new)
    traced.graph.lint()
    traced.recompile()

