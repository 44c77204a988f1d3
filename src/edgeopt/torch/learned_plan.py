"""The plan a trained QAT model stands for: the post-training plan's structure (tensors, nodes,
absorbed activations) with the learned parameters. Activations take their quantizer's scale and
zero point; weights the integers their fake quantization stood for (the folded weight for a
Conv2d + BatchNorm2d); biases are quantized at input scale x weight scale from the re-exported
float model, as post-training quantization does. Decides; edits no graph."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from ..quantization.graph import GraphView
from ..quantization.numerics import quantize
from ..quantization.plan import QuantizationPlan, QuantizedConstant
from ..quantization.planner import fit_weight_integers, plan_biases, quantized_constant
from ..quantization.select import Selection
from .integer_kernels import deployed_weight
from .quantizers import ConvBatchNorm


def learned_plan(start: QuantizationPlan, prepared: onnx.ModelProto, module: torch.nn.Module,
                 activations: dict[str, str], weights: dict[str, str], weight_range: str) -> QuantizationPlan:
    """``start``'s decisions for ``prepared`` (the re-exported trained model) with ``module``'s
    learned parameters; ``activations`` and ``weights`` name the quantizer modules (see
    :class:`~.fake_quant.FakeQuantized`). The inputs and outputs stay float: ``quantize`` makes
    them integers when asked to."""
    view = GraphView(prepared)
    nodes = {node.name: node for node in prepared.graph.node}
    modules = dict(module.named_modules())
    plan = QuantizationPlan(start.activation_type, nodes=list(start.nodes), absorbed=dict(start.absorbed),
                            kept_float=dict(start.kept_float), float_weight_nodes=list(start.float_weight_nodes))
    with torch.no_grad():
        for tensor in start.activations:
            plan.activations[tensor] = modules[activations[tensor]].params()
        weight_params, integers = {}, {}
        for key in start.weights:
            weight, quantizer = deployed_weight(modules[weights[key[0]]])
            weight_params[key] = quantizer.params(weight)
            integers[key] = fit_weight_integers(nodes[key[0]], view, quantizer.integers(weight), weight_range)
    selection = Selection(nodes=[nodes[name] for name, _ in start.biases],
                          biases={key: nodes[key[0]].input[key[1]] for key in start.biases})
    biases = {key: view.constant(name).astype(np.float32) for key, name in selection.biases.items()}
    bias_params = plan_biases(selection, plan, weight_params, biases)
    for key, params in weight_params.items():
        plan.weights[key] = QuantizedConstant(params, integers[key])
    for key, params in bias_params.items():
        plan.biases[key] = QuantizedConstant(params, quantize(biases[key], params).astype(np.int32))
    for key in start.constants:
        plan.constants[key] = quantized_constant(view.constant(nodes[key[0]].input[key[1]]), start.activation_type)
    return plan


def start_from(plan: QuantizationPlan, module: torch.nn.Module, weights: dict[str, str]) -> None:
    """Set each quantized layer's float weight and bias to the values ``plan`` stores for it, so
    that training starts from the post-training int8 model (its compensated integers and
    corrected biases) instead of the float weights rounded to nearest. A folded Conv2d +
    BatchNorm2d gets the weight divided by the BatchNorm's factor and the bias moved into its
    beta. The quantizers recompute the scales from these weights: the same ones wherever a
    channel's largest integer is the limit (or, for ``safe`` weights, its largest pair)."""
    modules = dict(module.named_modules())
    with torch.no_grad():
        for key, constant in plan.weights.items():
            holder = modules[weights[key[0]]]
            value = torch.from_numpy(constant.dequantized().astype(np.float32))
            bias = plan.biases.get((key[0], 2))
            bias = None if bias is None else torch.from_numpy(bias.dequantized().astype(np.float32))
            if isinstance(holder, ConvBatchNorm):
                _start_folded(holder, value, bias)
                continue
            quantizer = holder.parametrizations.weight[0]
            original = holder.parametrizations.weight.original
            original.copy_((value.t() if quantizer.transposed else value).to(original))
            if bias is not None and holder.bias is not None and holder.bias.shape == bias.shape:
                holder.bias.copy_(bias.to(holder.bias))


def _start_folded(holder: ConvBatchNorm, value: torch.Tensor, bias: torch.Tensor | None) -> None:
    factor = holder._factor().detach()
    safe = torch.where(factor == 0, torch.ones_like(factor), factor)
    holder.conv.weight.copy_((value.to(factor) / safe.reshape(-1, 1, 1, 1)).to(holder.conv.weight))
    norm = holder.norm
    if bias is not None and norm.affine:
        conv_bias = holder.conv.bias if holder.conv.bias is not None else torch.zeros_like(norm.running_mean)
        norm.bias.copy_(bias.to(factor) - (conv_bias - norm.running_mean) * factor)
