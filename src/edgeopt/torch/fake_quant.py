"""A PyTorch model with the fake quantizers of an int8 plan, placed by value (:mod:`.placement`):
an :class:`~.quantizers.ActivationQuantizer` after the traced node holding each planned
activation, and a :class:`~.quantizers.WeightQuantizer` on the weight of each planned Conv/Gemm
(as a parametrization, so the module keeps training its float weight); a Conv2d with the
BatchNorm2d after it becomes one :class:`~.quantizers.ConvBatchNorm`, which quantizes the folded
weight the int8 model stores."""

from __future__ import annotations

import copy
import logging

import onnx
import torch
import torch.fx
from torch.nn.utils import parametrize

from ..data import input_specs
from ..errors import EdgeoptError
from ..quantization.graph import GraphView
from ..quantization.plan import QuantizationPlan
from . import placement
from .quantizers import ActivationQuantizer, ConvBatchNorm, weight_quantizer_for

logger = logging.getLogger(__name__)


def fake_quantized(model: torch.nn.Module, example_inputs: tuple, plan: QuantizationPlan,
                   prepared: onnx.ModelProto, weight_range: str = "safe") -> torch.fx.GraphModule:
    """``model`` traced, with ``plan``'s quantizers; ``prepared`` is the prepared ONNX export the
    plan was made for, ``example_inputs`` one input both are run on to place the quantizers.
    ``model`` itself is left as it was: the result holds copies of its modules."""
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    view = GraphView(prepared)
    onnx_nodes = {node.name: node for node in prepared.graph.node}
    weighted = {node_name for node_name, _ in plan.weights}
    tensors = list(plan.activations) + [onnx_nodes[name].output[0] for name in weighted]
    feed = {spec.name: tensor.detach().cpu().numpy() for spec, tensor in zip(input_specs(prepared), example_inputs)}
    found, missing = placement.correspondence(placement.onnx_values(prepared, tensors, feed),
                                              placement.node_values(traced, example_inputs))
    if missing:
        raise EdgeoptError(f"no PyTorch counterpart for the planned tensors {missing[:3]}")
    _insert_activation_quantizers(traced, {name: found[name] for name in plan.activations}, plan)
    modules = dict(traced.named_modules())
    fx_nodes = {node.name: node for node in traced.graph.nodes}
    for node_name in sorted(weighted):
        fx_node = fx_nodes[found[onnx_nodes[node_name].output[0]]]
        quantizer = weight_quantizer_for(onnx_nodes[node_name], view, weight_range)
        module = modules.get(fx_node.target) if fx_node.op == "call_module" else None
        if isinstance(module, torch.nn.BatchNorm2d):
            module = _fold(traced, fx_node, modules, quantizer, view.constant(onnx_nodes[node_name].input[1]).shape)
        elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            _check_layout(node_name, view.constant(onnx_nodes[node_name].input[1]).shape, module.weight.shape)
            parametrize.register_parametrization(module, "weight", quantizer)
        else:
            raise EdgeoptError(f"ONNX node {node_name!r} maps to {fx_node.name!r}, not a Conv2d, Linear or the "
                               "BatchNorm2d after a Conv2d")
    traced.graph.lint()
    traced.recompile()
    return traced


def _check_layout(node_name: str, onnx_shape, torch_shape) -> None:
    if tuple(onnx_shape) != tuple(torch_shape):
        raise EdgeoptError(f"the weight of {node_name!r} is laid out {tuple(onnx_shape)} in ONNX and "
                           f"{tuple(torch_shape)} in PyTorch; expected the same layout")


def _fold(traced: torch.fx.GraphModule, norm_node, modules: dict, quantizer, onnx_shape) -> ConvBatchNorm:
    """The traced BatchNorm2d node and the Conv2d node it reads become one :class:`ConvBatchNorm`."""
    conv_node = norm_node.args[0]
    conv = modules.get(conv_node.target) if getattr(conv_node, "op", None) == "call_module" else None
    if not isinstance(conv, torch.nn.Conv2d) or len(conv_node.users) != 1:
        raise EdgeoptError(f"{norm_node.name!r} does not follow a Conv2d read by it alone; expected conv -> batch norm")
    _check_layout(norm_node.name, onnx_shape, conv.weight.shape)
    fused = ConvBatchNorm(conv, modules[norm_node.target], quantizer)
    target = f"{norm_node.target}_folded".replace(".", "_")
    traced.add_submodule(target, fused)
    norm_node.target = target
    norm_node.args = (conv_node.args[0],)
    traced.graph.erase_node(conv_node)
    return fused


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

