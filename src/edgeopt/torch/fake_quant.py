"""A PyTorch model with the fake quantizers of an int8 plan, placed by value (:mod:`.placement`):
an :class:`~.quantizers.ActivationQuantizer` after the traced node holding each planned
activation, and a :class:`~.quantizers.WeightQuantizer` on the weight of each planned Conv/Gemm
(as a parametrization, so the module keeps training its float weight); a Conv2d with the
BatchNorm2d after it becomes one :class:`~.quantizers.ConvBatchNorm`, which quantizes the folded
weight the int8 model stores.

Tensors the plan gives one scale (a max pool's or a reshape's output and its input) share one
quantizer, which observes only the first; a tensor whose Relu/Clip the int8 model absorbs keeps
its range inside that clamp. Which quantizer and which module serve each planned tensor and
weight is returned with the module (:class:`FakeQuantized`): the export reads the learned
parameters through it. With uint8 activations each quantized Conv/Gemm, Add and global average
pool calls its :mod:`.integer_kernels` function, which trains as the layer does and in eval mode
computes what ONNX Runtime's integer kernel computes.
"""

from __future__ import annotations

import copy
import logging
import operator
from dataclasses import dataclass, field

import onnx
import torch
import torch.fx
from torch.nn.utils import parametrize

from ..data import input_specs
from ..errors import EdgeoptError
from ..quantization.graph import GraphView
from ..quantization.operators import activation_bounds, rule_for
from ..quantization.plan import QuantizationPlan, same_params
from . import integer_kernels, placement
from .quantizers import MOMENTUM, ActivationQuantizer, ConvBatchNorm, weight_quantizer_for

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantizerSettings:
    """How the inserted quantizers train (see :class:`~edgeopt.QATConfig`)."""

    weight_range: str = "safe"
    momentum: float = MOMENTUM
    freeze_observers_after: int | None = None
    freeze_bn_after: int | None = None
    learn_scales: bool = False


@dataclass
class FakeQuantized:
    #: the traced copy of the user's model, with the quantizers
    module: torch.fx.GraphModule
    #: planned activation tensor -> name of the ActivationQuantizer module that quantizes it
    activations: dict[str, str] = field(default_factory=dict)
    #: planned ONNX node (a Conv/Gemm) -> name of the module holding its weight and quantizer
    #: (a parametrized Conv2d/Linear, or a ConvBatchNorm)
    weights: dict[str, str] = field(default_factory=dict)


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, with every Conv2d, Linear and BatchNorm2d a leaf, subclasses included
    (a Conv2d subclass that pads in its forward stays one module, whose weight gets the quantizer)."""

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)) or \
            super().is_leaf_module(module, qualified_name)


def _trace(model: torch.nn.Module) -> torch.fx.GraphModule:
    graph = _Tracer().trace(model)
    return torch.fx.GraphModule(model, graph, type(model).__name__)


def traced_copy(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.fx.GraphModule]:
    """A deep copy of ``model`` and its symbolic trace; the trace holds the copy's modules (one
    set of parameters), so training the trace trains the copy."""
    duplicate = copy.deepcopy(model)
    try:
        return duplicate, _trace(duplicate)
    except Exception as exc:  # torch.fx raises many types (TraceError, TypeError, NotImplementedError)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgeoptError(f"torch.fx cannot trace the model ({first}); expected a model without "
                           "data-dependent control flow in forward") from None


def locate(traced: torch.fx.GraphModule, example_inputs: tuple, plan: QuantizationPlan,
           prepared: onnx.ModelProto) -> tuple[dict[str, str], list[str]]:
    """Planned tensor (activations and the planned Conv/Gemm outputs) -> traced node, and the
    planned tensors no traced node holds."""
    nodes = {node.name: node for node in prepared.graph.node}
    view = GraphView(prepared)
    tensors = list(plan.activations) + [nodes[name].output[0] for name, _ in plan.weights]
    before = {name: view.producer[name].input[0] for name in plan.activations
              if name in view.producer and view.producer[name].op_type in GRID_PRESERVING}
    feed = {spec.name: tensor.detach().cpu().numpy() for spec, tensor in zip(input_specs(prepared), example_inputs)}
    wanted = list(dict.fromkeys(tensors + list(before.values())))
    found, missing = placement.correspondence(placement.onnx_values(prepared, wanted, feed),
                                              placement.node_values(traced, example_inputs))
    implied = _implied(missing, found, scale_sources(plan, view), view)
    for name in missing:
        # a grid-preserving operator's output that PyTorch computes inside a module (the pad of a
        # Conv2d subclass): quantizing its input with its parameters gives the same values
        if name not in implied and before.get(name) in found and before[name] not in plan.activations:
            found[name] = found[before[name]]
    after = _batch_norm_after(traced)
    found = {name: after.get(found[name], found[name]) for name in tensors if name in found}
    return found, [name for name in missing if name not in implied and name not in found]


def _batch_norm_after(traced: torch.fx.GraphModule) -> dict[str, str]:
    """Conv2d node -> the BatchNorm2d node that alone reads it: the ONNX export folds every such
    pair into one Conv, whose output is the BatchNorm's (a BatchNorm near the identity, fresh or
    with unit statistics, matches the Conv's values as well)."""
    modules = dict(traced.named_modules())
    pairs = {}
    for node in traced.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), torch.nn.Conv2d) or \
                len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if user.op == "call_module" and isinstance(modules.get(user.target), torch.nn.BatchNorm2d) and \
                user.args[0] is node:
            pairs[node.name] = user.name
    return pairs


#: Operators whose output holds values of their input's grid (a zero pad adds the zero point's value).
GRID_PRESERVING = ("MaxPool", "GlobalMaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
                   "Identity", "Slice", "Gather", "Split", "Pad", "DepthToSpace", "SpaceToDepth", "Expand", "Tile")


def _implied(missing: list[str], found: dict, sources: dict, view: GraphView) -> set[str]:
    """Missing tensors that need no quantizer of their own: they take their source's scale and an
    operator that keeps values on the grid made them (a Pad inside a Conv2d subclass's forward),
    so they are already quantized where their source is."""
    return {name for name in missing if sources.get(name, name) != name and sources[name] in found
            and name in view.producer and view.producer[name].op_type in GRID_PRESERVING}


def fake_quantized(traced: torch.fx.GraphModule, found: dict[str, str], plan: QuantizationPlan,
                   prepared: onnx.ModelProto, settings: QuantizerSettings = QuantizerSettings()) -> FakeQuantized:
    """``traced`` (edited in place) with ``plan``'s quantizers at the nodes ``found`` names
    (:func:`locate`); ``prepared`` is the prepared ONNX export the plan was made for."""
    view = GraphView(prepared)
    onnx_nodes = {node.name: node for node in prepared.graph.node}
    sources = scale_sources(plan, view)
    missing = [name for name in plan.activations if name not in found and sources[name] not in found]
    if missing:
        raise EdgeoptError(f"no PyTorch counterpart for the planned tensors {missing[:3]}")
    result = FakeQuantized(traced)
    weighted = sorted({node_name for node_name, _ in plan.weights})
    shapes = {name: tuple(view.constant(onnx_nodes[name].input[1]).shape) for name in weighted}
    fx_nodes = {node.name: node for node in traced.graph.nodes}
    modules = dict(traced.named_modules())
    targets = {name: _weight_target(fx_nodes[found[onnx_nodes[name].output[0]]], modules, shapes[name], name)
               for name in weighted}  # every layout checked before anything is wrapped
    _insert_activation_quantizers(result, found, plan, view, settings)
    for name in weighted:
        target, transposed = targets[name]
        quantizer = weight_quantizer_for(onnx_nodes[name], view, settings.weight_range, transposed)
        fx_node = fx_nodes[found[onnx_nodes[name].output[0]]]
        module = modules[target]
        if isinstance(module, torch.nn.BatchNorm2d):
            result.weights[name] = _fold(traced, fx_node, modules, quantizer, settings.freeze_bn_after)
        else:
            if not parametrize.is_parametrized(module, "weight"):  # a module called twice is wrapped once
                parametrize.register_parametrization(module, "weight", quantizer)
            result.weights[name] = target
    if plan.activation_type == "uint8":  # see integer_kernels: int8 activations keep the float path
        _route_pooling_and_adds(result, plan, onnx_nodes, found, fx_nodes)
        _route_integer_kernels(result, plan, onnx_nodes, {name: fx_nodes[found[onnx_nodes[name].output[0]]]
                                                          for name in weighted})
    traced.graph.lint()
    traced.recompile()
    return result


def _route_integer_kernels(result: FakeQuantized, plan: QuantizationPlan, onnx_nodes: dict, layers: dict) -> None:
    """Each planned Conv/Gemm whose input and output are quantized (the output after the
    Relu/Clip the int8 model absorbs) calls :func:`~.integer_kernels.quantized_layer`, which in
    eval mode computes what its integer kernel computes."""
    traced = result.module
    absorbed = {producer: relu for relu, producer in plan.absorbed.items()}
    for name, fx_node in layers.items():
        node = onnx_nodes[name]
        output = onnx_nodes[absorbed[name]].output[0] if name in absorbed else node.output[0]
        quantizers = [result.activations.get(node.input[0]), result.activations.get(output)]
        holder = traced.get_submodule(result.weights[name])
        if node.op_type not in ("Conv", "Gemm") or None in quantizers or not integer_kernels.applies_to(holder) \
                or fx_node.op != "call_module" or len(fx_node.args) != 1 or fx_node.kwargs:
            continue
        graph = traced.graph
        with graph.inserting_before(fx_node):
            modules = [graph.get_attr(target) for target in [result.weights[name]] + quantizers]
            kernel = graph.call_function(integer_kernels.quantized_layer, (fx_node.args[0], *modules))
        fx_node.replace_all_uses_with(kernel)
        graph.erase_node(fx_node)


def _route_pooling_and_adds(result: FakeQuantized, plan: QuantizationPlan, onnx_nodes: dict, found: dict,
                            fx_nodes: dict) -> None:
    """Each planned Add and GlobalAveragePool whose inputs and output are quantized, traced as
    ``a + b`` or ``adaptive_avg_pool2d(x, 1)``, calls its :mod:`.integer_kernels` function (the
    Add's operands in the ONNX order: the kernel is not symmetric in its rounding)."""
    graph = result.module.graph
    holders = {tensor: fx_nodes[node_name] for tensor, node_name in found.items()}  # kept current below
    for name in plan.nodes:
        node = onnx_nodes.get(name)
        if node is None or node.op_type not in ("Add", "GlobalAveragePool") or node.output[0] not in found:
            continue
        quantizers = [result.activations.get(tensor) for tensor in list(node.input) + [node.output[0]]]
        fx_node = holders[node.output[0]]
        operands = _operands(fx_node, node, holders, result)
        if None in quantizers or operands is None:
            continue
        function = integer_kernels.quantized_add if node.op_type == "Add" else integer_kernels.quantized_average
        with graph.inserting_before(fx_node):
            modules = [graph.get_attr(target) for target in quantizers]
            replacement = graph.call_function(function, (*operands, *modules))
        fx_node.replace_all_uses_with(replacement)
        graph.erase_node(fx_node)
        holders.update({tensor: replacement for tensor, held in holders.items() if held is fx_node})


def _operands(fx_node, node, holders: dict, result: FakeQuantized):
    """The traced node's tensor operands in the order of the ONNX node's inputs, each read from
    the quantizer of its ONNX input (``holders``: ONNX tensor -> traced node holding it); None
    when the traced node is not that Add or pool."""
    if fx_node.kwargs:
        return None
    if node.op_type == "Add":
        if fx_node.op != "call_function" or fx_node.target not in (operator.add, torch.add) or len(fx_node.args) != 2:
            return None
        args = list(fx_node.args)
    else:
        pooling = (fx_node.op == "call_function" and fx_node.target is torch.nn.functional.adaptive_avg_pool2d
                   and len(fx_node.args) == 2 and fx_node.args[1] in (1, (1, 1))) or \
            (fx_node.op == "call_module" and isinstance(result.module.get_submodule(fx_node.target),
                                                       torch.nn.AdaptiveAvgPool2d)
             and result.module.get_submodule(fx_node.target).output_size in (1, (1, 1)) and len(fx_node.args) == 1)
        if not pooling:
            return None
        args = [fx_node.args[0]]

    def reads(arg, tensor):
        return isinstance(arg, torch.fx.Node) and arg.op == "call_module" and \
            arg.target == result.activations.get(tensor) and (tensor not in holders or arg.args[0] is holders[tensor])

    inputs = list(node.input)
    if all(reads(arg, tensor) for arg, tensor in zip(args, inputs)):
        return args
    if len(args) == 2 and all(reads(arg, tensor) for arg, tensor in zip(args[::-1], inputs)):
        return args[::-1]
    return None


def _weight_target(fx_node, modules: dict, onnx_shape: tuple, node_name: str) -> tuple[str, bool]:
    """The module the planned Conv/Gemm/MatMul ``node_name`` maps to, checked: a Conv2d or Linear
    with the ONNX weight's layout (or a Linear holding its transpose: exported as MatMul), or a
    BatchNorm2d after such a Conv2d (folded into it by ``prepare``); and whether it is transposed."""
    module = modules.get(fx_node.target) if fx_node.op == "call_module" else None
    conv = module
    if isinstance(module, torch.nn.BatchNorm2d):
        source = fx_node.args[0]
        conv = modules.get(source.target) if getattr(source, "op", None) == "call_module" else None
        if not isinstance(conv, torch.nn.Conv2d) or len(source.users) != 1 or not module.track_running_stats:
            raise EdgeoptError(f"{fx_node.name!r} does not follow a Conv2d read by it alone (or keeps no running "
                               "statistics); expected conv -> batch norm")
    elif not isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        raise EdgeoptError(f"ONNX node {node_name!r} maps to {fx_node.name!r}, not a Conv2d, Linear or the "
                           "BatchNorm2d after a Conv2d")
    shape = tuple(conv.weight.shape)
    transposed = isinstance(conv, torch.nn.Linear) and tuple(onnx_shape) == shape[::-1] and shape[0] != shape[1]
    if tuple(onnx_shape) != shape and not transposed:
        raise EdgeoptError(f"the weight of {node_name!r} is laid out {tuple(onnx_shape)} in ONNX and "
                           f"{shape} in PyTorch; expected the same layout (or a Linear's transpose)")
    return fx_node.target, transposed


def _fold(traced: torch.fx.GraphModule, norm_node, modules: dict, quantizer, freeze_after) -> str:
    """The traced BatchNorm2d node and the Conv2d node it reads become one :class:`ConvBatchNorm`."""
    conv_node = norm_node.args[0]
    fused = ConvBatchNorm(modules[conv_node.target], modules[norm_node.target], quantizer, freeze_after)
    target = f"{norm_node.target}_folded".replace(".", "_")
    traced.add_submodule(target, fused)
    norm_node.target = target
    norm_node.args = (conv_node.args[0],)
    traced.graph.erase_node(conv_node)
    return target


def scale_sources(plan: QuantizationPlan, view: GraphView) -> dict[str, str]:
    """Planned tensor -> the tensor whose scale it reuses (itself when none): the outputs of
    data-movement operators (max pool, reshape, ...) take their input's, as the planner gives them."""
    nodes = {node.name: node for node in view.graph.node}
    sources = {name: name for name in plan.activations}
    for node_name in plan.nodes:
        node = nodes[node_name]
        rule = rule_for(node)
        if rule is None or not rule.shares_scale or not node.output:
            continue
        output, source = node.output[0], node.input[0]
        if output in sources and source in sources and same_params(plan.activations[output],
                                                                   plan.activations[source]):
            sources[output] = sources[source]
    return sources


def _insert_activation_quantizers(result: FakeQuantized, found: dict[str, str], plan: QuantizationPlan,
                                  view: GraphView, settings: QuantizerSettings) -> None:
    """A quantizer after the traced node of each planned tensor, read by every user of that node;
    one per traced node, and one per group of tensors sharing a scale."""
    traced = result.module
    fx_nodes = {node.name: node for node in traced.graph.nodes}
    sources = scale_sources(plan, view)
    nodes = {node.name: node for node in view.graph.node}
    bounds = {nodes[relu].output[0]: activation_bounds(nodes[relu], view) for relu in plan.absorbed}
    by_node: dict[str, str] = {}
    ordered = sorted(plan.activations, key=lambda name: sources[name] != name)  # sources first
    for tensor in ordered:
        if tensor not in found:  # implied by its source (see _implied)
            result.activations[tensor] = result.activations[sources[tensor]]
            continue
        node_name = found[tensor]
        if node_name in by_node:
            result.activations[tensor] = by_node[node_name]
            continue
        source = sources[tensor]
        shared = source != tensor and source in result.activations
        if shared:
            target = result.activations[source]
        else:
            target = f"edgeopt_quantizer_{len(by_node)}"
            traced.add_submodule(target, ActivationQuantizer(
                plan.activations[tensor], settings.momentum, settings.freeze_observers_after,
                bounds.get(tensor), settings.learn_scales))
        node = fx_nodes[node_name]
        with traced.graph.inserting_after(node):
            quantized = traced.graph.call_module(target, (node,), {"observe": False} if shared else {})
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user, new=quantized: user is not new)
        by_node[node_name] = result.activations[tensor] = target
