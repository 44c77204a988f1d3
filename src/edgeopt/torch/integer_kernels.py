"""The integer arithmetic of ONNX Runtime's CPU kernels, in PyTorch, for a prepared model in eval
mode: each quantized Conv and Gemm runs as QLinearConv and QGemm run it, so evaluating the QAT
model is evaluating the int8 model it exports.

Fake quantization in float (what training needs, for its gradients) differs from the kernels in
two ways that move an output by a whole step now and then, and a deep network amplifies those
steps (MobileNetV2: top-1 agreement 99.5% with its own int8 model): the float bias against the
int32 one at input scale x weight scale, and float32 sums in another order against exact int32
ones. The kernels compute, per output channel ``c`` (checked against ONNX Runtime in the tests)::

    acc = sum((x_q - x_zero_point) * w_q) + bias_q          # exact int32
    y_q = clip(round_half_even(float32(acc) * M_c) + y_zero_point)
    M_c = float32(float32(x_scale * w_scale_c) / y_scale)

with ``bias_q = round_half_even(bias / float32(x_scale * w_scale_c))``, as the int8 path stores
it. Here the sum runs in float32 when no partial sum can reach 2**24 (then every order gives the
exact integer), in float64 otherwise and on accelerators (whose float32 convolutions may run in
TF32). An Add of two quantized tensors runs as QLinearAdd's AVX2 kernel computes it (float32
ratios of the scales, fused multiply-adds on the raw integers; on MobileNetV2 the float formula
rounded 82 of 590,000 sums of one block the other way, and every later layer moved), a global
average pool as QLinearGlobalAveragePool (the integer sum times one float32 factor). Max
pooling and reshapes keep values on the grid: nothing to do.

Only for uint8 activations: with int8 ones ONNX Runtime runs some convolutions in float (see
../shared/runtime-notes.md), which the float fake quantization simulates better. A layer whose
input or output stays float, a MatMul, and a Linear exported transposed keep the float path.
"""

from __future__ import annotations

import torch

from .quantizers import ActivationQuantizer, ConvBatchNorm, WeightQuantizer

#: Sums of integers below this magnitude are exact in float32 in any order of addition.
FLOAT32_EXACT = 2.0 ** 24
INT32_MAX = 2.0 ** 31 - 1


def deployed_weight(holder: torch.nn.Module) -> tuple[torch.Tensor, WeightQuantizer]:
    """The float weight the int8 model quantizes (module layout) and its quantizer."""
    if isinstance(holder, ConvBatchNorm):
        return holder.folded_weight().detach(), holder.quantizer
    return holder.parametrizations.weight.original.detach(), holder.parametrizations.weight[0]


def deployed_bias(holder: torch.nn.Module) -> torch.Tensor | None:
    """The float bias the int8 model quantizes to int32 (``None``: no bias)."""
    if isinstance(holder, ConvBatchNorm):
        return holder.folded_bias().detach()
    return None if holder.bias is None else holder.bias.detach()


def applies_to(holder: torch.nn.Module) -> bool:
    """Whether :func:`quantized_layer` can run ``holder`` as its integer kernel: a folded or
    parametrized Conv2d, or a Linear stored in its ONNX layout (Gemm), quantized per output
    channel or per tensor."""
    if isinstance(holder, ConvBatchNorm):
        quantizer = holder.quantizer
    elif isinstance(holder, (torch.nn.Conv2d, torch.nn.Linear)) and hasattr(holder, "parametrizations"):
        quantizer = holder.parametrizations.weight[0]
    else:
        return False
    return not quantizer.transposed and quantizer.axis in (None, 0)


def quantized_layer(x: torch.Tensor, holder: torch.nn.Module, inputs: ActivationQuantizer,
                    outputs: ActivationQuantizer) -> torch.Tensor:
    """``holder(x)`` while training; in eval mode the integer kernel's output (dequantized, on
    ``outputs``' grid), ``x`` being on ``inputs``' grid. The traced model calls this in place of
    each layer :func:`applies_to` accepts whose input and output are quantized."""
    if holder.training:
        return holder(x)
    with torch.no_grad():
        return _integer_kernel(x, holder, inputs, outputs)


def _integer_kernel(x, holder, inputs: ActivationQuantizer, outputs: ActivationQuantizer) -> torch.Tensor:
    x_scale, x_zero = (value.to(x.device) for value in inputs.scale_and_zero_point())
    y_scale, y_zero = (value.to(x.device) for value in outputs.scale_and_zero_point())
    integers, w_scale, bias_q = layer_integers(holder, x_scale)
    x_q = torch.round(x / x_scale)  # x_q - zero point, exactly: x is (x_q - zero point) * scale
    reach = max(float(x_zero) - inputs.qmin, inputs.qmax - float(x_zero))
    largest = reach * float(integers.abs().reshape(integers.shape[0], -1).sum(dim=1).max()) + \
        float(bias_q.abs().max())
    exact = torch.float32 if largest < FLOAT32_EXACT and x.device.type == "cpu" else torch.float64
    acc = _accumulate(holder, x_q.to(exact), integers.to(exact), bias_q.to(exact)).float()
    multiplier = (x_scale * w_scale) / y_scale
    if multiplier.dim() and isinstance(holder, (ConvBatchNorm, torch.nn.Conv2d)):
        multiplier = multiplier.reshape(-1, 1, 1)  # channels of (N, C, H, W); a Linear's are last
    q = acc.mul_(multiplier).round_().add_(y_zero).clamp_(outputs.qmin, outputs.qmax)
    return q.sub_(y_zero).mul_(y_scale)


def layer_integers(holder: torch.nn.Module, input_scale: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's int8 weight (as floats, module layout), its scales and its int32 bias (as
    floats; zeros without a bias) at ``input_scale``, as the int8 path stores them."""
    weight, quantizer = deployed_weight(holder)
    integers, w_scale = quantizer.integer_values(weight)
    bias = deployed_bias(holder)
    if bias is None:
        return integers, w_scale, torch.zeros(integers.shape[0], device=integers.device)
    # as planner.plan_biases: a bias too large for int32 at input x weight scale widens its
    # channel's weight scale (a channel whose weights trained to about zero), the integers stay
    scale = w_scale.double()
    needed = bias.double().abs() / (input_scale.double() * INT32_MAX)
    if bool((needed > scale).any()):
        scale = torch.maximum(scale, needed * 1.01)
        scale = scale.max() if w_scale.dim() == 0 else scale
        w_scale = scale.float()
    bias_scale = (input_scale.double() * scale).float()
    return integers, w_scale, torch.clamp(torch.round(bias.float() / bias_scale), -INT32_MAX - 1, INT32_MAX)


def _accumulate(holder, x_q: torch.Tensor, integers: torch.Tensor, bias_q: torch.Tensor) -> torch.Tensor:
    """The layer's own forward (a Conv2d subclass may pad first) on integers."""
    if isinstance(holder, ConvBatchNorm):
        return holder._convolve(x_q, integers, bias_q)
    with holder.parametrizations.weight[0].bypassed():  # the weight is already integers
        return torch.func.functional_call(
            holder, {"parametrizations.weight.original": integers, "bias": bias_q}, (x_q,))


def _f32(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32)


def _fma(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """float32 ``x * y + z`` rounded once, as a fused multiply-add does: in float64 the product of
    an 8-bit integer and a float32 and its sum with a float32 are exact."""
    return (x.double() * y.double() + z.double()).float()


def quantized_add(a: torch.Tensor, b: torch.Tensor, a_quantizer: ActivationQuantizer,
                  b_quantizer: ActivationQuantizer, outputs: ActivationQuantizer) -> torch.Tensor:
    """``a + b`` while training; in eval mode QLinearAdd's output (``a`` its first input)."""
    if outputs.training:
        return a + b
    with torch.no_grad():
        (a_scale, a_zero), (b_scale, b_zero), (c_scale, c_zero) = (
            (value.cpu() for value in q.scale_and_zero_point()) for q in (a_quantizer, b_quantizer, outputs))
        a_ratio, b_ratio = _f32(a_scale / c_scale), _f32(b_scale / c_scale)
        # zc - (ra * za + rb * zb), the first product fused with the sum as the compiled kernel
        # does it (the unfused sum rounded 372 of 1,032,192 outputs of an EfficientNet block apart)
        fixed = _f32(c_zero) - _fma(_f32(a_zero), a_ratio, b_ratio * _f32(b_zero))
        a_q = torch.round(a / a_scale.to(a.device)) + float(a_zero)  # the stored integers
        b_q = torch.round(b / b_scale.to(b.device)) + float(b_zero)
        total = _fma(a_q, a_ratio.to(a.device), _fma(b_q, b_ratio.to(b.device), fixed.to(b.device)))
        q = torch.clamp(torch.round(total), outputs.qmin, outputs.qmax)
        return (q - float(c_zero)) * c_scale.to(q.device)


def quantized_average(x: torch.Tensor, inputs: ActivationQuantizer, outputs: ActivationQuantizer) -> torch.Tensor:
    """Global average pooling over the last two axes (keeping them) while training; in eval mode
    QLinearGlobalAveragePool's output."""
    if outputs.training:
        return torch.nn.functional.adaptive_avg_pool2d(x, 1)
    with torch.no_grad():
        x_scale = inputs.scale_and_zero_point()[0].cpu()
        y_scale, y_zero = (value.cpu() for value in outputs.scale_and_zero_point())
        count = x.shape[-1] * x.shape[-2]
        total = torch.round(x / x_scale.to(x.device)).double().sum(dim=(-2, -1), keepdim=True)
        factor = _f32(x_scale / (y_scale * _f32(count)))
        q = torch.clamp(torch.round(total.float() * factor.to(x.device)) + float(y_zero), outputs.qmin, outputs.qmax)
        return (q - float(y_zero)) * y_scale.to(q.device)
