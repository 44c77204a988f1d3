"""Fake quantizers: the int8 arithmetic of :mod:`edgeopt.quantization.numerics`, in PyTorch, with
gradients (straight-through inside the range, zero outside: torch's own fake-quantize kernels).

:class:`ActivationQuantizer` starts from the post-training plan's parameters and then follows the
data with moving-average min/max until it is frozen; its parameters are formed exactly as
:func:`~edgeopt.quantization.numerics.affine_params` forms them, so what it simulates is what the
int8 model computes.
"""

from __future__ import annotations

import numpy as np
import torch

from ..quantization.numerics import INTEGER_RANGES, MIN_SCALE, QuantParams
from ..quantization.saturation import PAIR_LIMIT

#: Weight of the newest batch in the moving min/max.
MOMENTUM = 0.01


class ActivationQuantizer(torch.nn.Module):
    """Per-tensor affine fake quantization of one activation (uint8 or int8)."""

    def __init__(self, params: QuantParams, momentum: float = MOMENTUM, freeze_after: int | None = None):
        super().__init__()
        if params.dtype not in ("uint8", "int8") or np.size(params.scale) != 1:
            raise ValueError(f"activations are quantized per tensor to uint8 or int8; got {params.dtype} "
                             f"with {np.size(params.scale)} scales")
        self.dtype = params.dtype
        self.qmin, self.qmax = INTEGER_RANGES[params.dtype]
        scale, zero_point = float(params.scale), int(params.zero_point)
        self.register_buffer("low", torch.tensor((self.qmin - zero_point) * scale, dtype=torch.float32))
        self.register_buffer("high", torch.tensor((self.qmax - zero_point) * scale, dtype=torch.float32))
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.momentum = momentum
        self.freeze_after = freeze_after

    @property
    def observing(self) -> bool:
        return self.training and (self.freeze_after is None or int(self.steps) < self.freeze_after)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self._observe(x.detach())
        scale, zero_point = self.scale_and_zero_point()
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, self.qmin, self.qmax)

    def _observe(self, x: torch.Tensor) -> None:
        low, high = torch.aminmax(x.float())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every rank moves the same way: the extremes of all ranks' batches
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        self.low.mul_(1 - self.momentum).add_(self.momentum * low)
        self.high.mul_(1 - self.momentum).add_(self.momentum * high)
        self.steps += 1

    def scale_and_zero_point(self) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``affine_params`` computes them (float64, then a float32 scale; round half to even):
        the range widened to hold 0, the zero point rounded and clipped."""
        low = torch.clamp(self.low.double(), max=0.0)
        high = torch.clamp(self.high.double(), min=0.0)
        scale = torch.clamp((high - low) / (self.qmax - self.qmin), min=float(MIN_SCALE)).float()
        zero_point = torch.clamp(torch.round(self.qmin - low / scale.double()), self.qmin, self.qmax)
        return scale, zero_point.to(torch.int32)

    def params(self) -> QuantParams:
        """The parameters as the plan stores them."""
        scale, zero_point = self.scale_and_zero_point()
        return QuantParams(np.float32(scale.item()), np.array(int(zero_point.item()), dtype=self.dtype), self.dtype)


class WeightQuantizer(torch.nn.Module):
    """Symmetric int8 fake quantization of a weight held in its ONNX layout, per channel along
    ``axis`` (or per tensor), with the scale the int8 path gives that node's weight
    (:func:`~edgeopt.quantization.planner.weight_quant_params`): the largest magnitude maps to
    ``limit`` and, with a ``layout`` (the kernel's order of accumulation, ``"safe"`` weights),
    the largest same-sign neighbour pair to at most PAIR_LIMIT. Recomputed from the weight at every
    call, so the scale follows the training."""

    def __init__(self, axis: int | None, limit: int, layout: tuple[tuple[int, ...], int] | None = None):
        super().__init__()
        self.axis, self.limit, self.layout = axis, limit, layout

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        values = weight.detach().double()
        if self.layout is None:
            needed = _channel_max(values.abs(), self.axis) / self.limit
        else:
            rows = _kernel_order(values, self.layout)
            magnitude = rows.abs().reshape(rows.shape[0], -1).amax(dim=1)
            needed = torch.maximum(magnitude / self.limit, _pair_peaks(rows) / PAIR_LIMIT)
            if self.axis is None:
                needed = needed.max()
        needed = torch.clamp(needed, min=float(MIN_SCALE))
        scale = needed.float()
        if self.layout is not None:  # as paired_params: a float32 scale never rounds below the bound
            scale = torch.where(scale.double() < needed, torch.nextafter(scale, torch.tensor(float("inf"))), scale)
        return scale

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = self.scale(weight)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(weight, scale, torch.zeros((), dtype=torch.int32),
                                                         -self.limit, self.limit)
        zero_points = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale.to(weight.device), zero_points,
                                                      self.axis % weight.dim(), -self.limit, self.limit)

    def params(self, weight: torch.Tensor) -> QuantParams:
        scale = self.scale(weight).cpu().numpy().astype(np.float32)
        if self.axis is None:
            return QuantParams(np.float32(scale), np.array(0, np.int8), "int8")
        return QuantParams(scale, np.zeros(scale.shape, np.int8), "int8", self.axis % weight.dim())


def _channel_max(values: torch.Tensor, axis: int | None) -> torch.Tensor:
    if axis is None or values.dim() == 0:
        return values.max()
    axis = axis % values.dim()
    return values.transpose(0, axis).reshape(values.shape[axis], -1).amax(dim=1)


def _kernel_order(values: torch.Tensor, layout: tuple[tuple[int, ...], int]) -> torch.Tensor:
    """As ``saturation.to_kernel_order``: (outputs, sequences, K), K in the kernel's adding order."""
    permutation, reduced_axes = layout
    moved = values.permute(*permutation)
    k = int(np.prod(moved.shape[moved.dim() - reduced_axes:]))
    return moved.reshape(moved.shape[0], -1, k)


def _pair_peaks(rows: torch.Tensor) -> torch.Tensor:
    """As ``saturation.pair_peaks``: per output, the largest |w_2j + w_2j+1| of same-sign pairs."""
    if rows.shape[-1] % 2:
        rows = torch.cat([rows, torch.zeros(rows.shape[:-1] + (1,), dtype=rows.dtype)], dim=-1)
    first, second = rows[..., 0::2], rows[..., 1::2]
    peaks = torch.where(first * second > 0, (first + second).abs(), torch.zeros_like(first))
    return peaks.reshape(rows.shape[0], -1).amax(dim=1)


def weight_quantizer_for(node, view, weight_range: str = "safe") -> WeightQuantizer:
    """The quantizer of ONNX ``node``'s weight (input 1) as the int8 path would quantize it."""
    from ..quantization.operators import rule_for
    from ..quantization.planner import _range_for
    from ..quantization.saturation import WEIGHT_LIMITS

    rank = len(view.initializers[node.input[1]].dims)
    rule = rule_for(node)
    chosen = _range_for(node, view, rank, weight_range)
    axis = rule.weights[1](node, view)
    return WeightQuantizer(axis, WEIGHT_LIMITS[chosen], rule.accumulation(node, rank) if chosen == "safe" else None)


class ConvBatchNorm(torch.nn.Module):
    """A Conv2d and the BatchNorm2d after it, trained as the one convolution they deploy as: the
    weight is folded with the BatchNorm's running statistics (``gamma / sqrt(var + eps)`` per
    channel) and fake-quantized, the convolution's output is scaled back and the BatchNorm
    applied: with batch statistics while training (and updating its running ones), with the
    running ones otherwise (or after :meth:`freeze`), where the result is exactly the folded
    convolution (Jacob et al. 2018, section 3.2). Holds the user's own two modules."""

    def __init__(self, conv: torch.nn.Conv2d, norm: torch.nn.BatchNorm2d, quantizer: WeightQuantizer):
        super().__init__()
        self.conv, self.norm, self.quantizer = conv, norm, quantizer
        self.frozen = False

    def freeze(self) -> None:
        """Stop updating the BatchNorm statistics; from now on the module computes the folded
        convolution in training too."""
        self.frozen = True

    def _factor(self) -> torch.Tensor:
        weight = self.norm.weight if self.norm.affine else torch.ones_like(self.norm.running_var)
        return weight / torch.sqrt(self.norm.running_var + self.norm.eps)

    def folded_weight(self) -> torch.Tensor:
        return self.conv.weight * self._factor().reshape(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self._factor().reshape(1, -1, 1, 1)
        y = self.conv._conv_forward(x, self.quantizer(self.folded_weight()), None) / factor
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
        if self.training and not self.frozen:
            return self.norm(y)
        return torch.nn.functional.batch_norm(y, self.norm.running_mean, self.norm.running_var, self.norm.weight,
                                              self.norm.bias, False, 0.0, self.norm.eps)
