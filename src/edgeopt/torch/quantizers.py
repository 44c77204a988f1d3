"""Fake quantizers: the int8 arithmetic of :mod:`edgeopt.quantization.numerics`, in PyTorch, with
gradients (straight-through inside the range, zero outside: torch's own fake-quantize kernels).

:class:`ActivationQuantizer` starts from the post-training plan's parameters and then follows the
data with moving-average min/max until it is frozen; its parameters are formed exactly as
:func:`~edgeopt.quantization.numerics.affine_params` forms them, so what it simulates is what the
int8 model computes.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from ..quantization.numerics import INTEGER_RANGES, MIN_SCALE, QuantParams
from ..quantization.saturation import PAIR_LIMIT

#: Weight of the newest batch in the moving min/max.
MOMENTUM = 0.01


class QuantizeDequantize(torch.autograd.Function):
    """ONNX's QuantizeLinear then DequantizeLinear, as ONNX Runtime computes them: ``x / scale``
    in float32, rounded half to even, plus the zero point, clipped; then ``(q - zero point) *
    scale``. torch's own kernel multiplies by ``1 / scale``, which rounds a value near a tie the
    other way now and then (1 in 4,000 on a 0-6 grid); through a deep network each such step
    moves later ones (on MobileNetV2 about half the elements of the late layers). The gradient
    is straight through inside the range and zero outside."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        shifted = torch.round(x / scale) + zero_point
        ctx.save_for_backward((shifted >= qmin) & (shifted <= qmax))
        return (torch.clamp(shifted, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


class ActivationQuantizer(torch.nn.Module):
    """Per-tensor affine fake quantization of one activation (uint8 or int8).

    ``bounds`` is the clamp of a Relu/Clip the int8 model absorbs into the quantization of this
    tensor: the range never leaves it, so the deployed model (which drops the Relu/Clip) clamps
    as the trained one did. With ``learn_scales`` the scale is a parameter trained by gradient
    (LSQ) from the starting one and the zero point stays where it started; otherwise the range
    follows the data by moving min/max until ``freeze_after`` steps.
    """

    def __init__(self, params: QuantParams, momentum: float = MOMENTUM, freeze_after: int | None = None,
                 bounds: tuple[float, float] | None = None, learn_scales: bool = False):
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
        self.bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
        self.learn_scales = learn_scales
        if learn_scales:
            self.scale = torch.nn.Parameter(torch.tensor([scale], dtype=torch.float32))
            self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.float32))

    @property
    def observing(self) -> bool:
        return self.training and not self.learn_scales and (
            self.freeze_after is None or int(self.steps) < self.freeze_after)

    def forward(self, x: torch.Tensor, observe: bool = True) -> torch.Tensor:
        """``observe=False``: a tensor that shares this quantizer's parameters (the output of a max
        pool or a reshape of the tensor it quantizes) is quantized without moving the range."""
        if observe and self.observing:
            self._observe(x.detach())
        if self.learn_scales:
            scale = self._learned_scale()
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, scale, self.zero_point, self.qmin, self.qmax, 1.0 / math.sqrt(x.numel() * self.qmax))
        scale, zero_point = self.scale_and_zero_point()
        return QuantizeDequantize.apply(x, scale.to(x.device), zero_point.to(x.device), self.qmin, self.qmax)

    def _learned_scale(self) -> torch.Tensor:
        """The scale parameter, kept positive and, with ``bounds``, small enough for the range to
        stay inside them."""
        scale = torch.clamp(self.scale, min=float(MIN_SCALE))
        if self.bounds is not None:
            zero_point = float(self.zero_point)
            limits = [bound / (q - zero_point) for bound, q in zip(self.bounds, (self.qmin, self.qmax))
                      if q != zero_point and np.isfinite(bound) and bound / (q - zero_point) > 0]
            if limits:
                scale = torch.clamp(scale, max=min(limits))
        return scale

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
        the range widened to hold 0 (and narrowed to ``bounds``), the zero point rounded and clipped."""
        if self.learn_scales:
            return self._learned_scale().detach().reshape(()), self.zero_point.reshape(()).to(torch.int32)
        low, high = self.low.double(), self.high.double()
        if self.bounds is not None:
            low, high = torch.clamp(low, min=self.bounds[0]), torch.clamp(high, max=self.bounds[1])
        low, high = torch.clamp(low, max=0.0), torch.clamp(high, min=0.0)
        scale = torch.clamp((high - low) / (self.qmax - self.qmin), min=float(MIN_SCALE)).float()
        zero_point = torch.clamp(torch.round(self.qmin - low / scale.double()), self.qmin, self.qmax)
        return scale, zero_point.to(torch.int32)

    def params(self) -> QuantParams:
        """The parameters as the plan stores them."""
        scale, zero_point = self.scale_and_zero_point()
        return QuantParams(np.float32(scale.item()), np.array(int(zero_point.item()), dtype=self.dtype), self.dtype)


class WeightQuantizer(torch.nn.Module):
    """Symmetric int8 fake quantization of a weight, per channel along ``axis`` (or per tensor) of
    its ONNX layout, with the scale the int8 path gives that node's weight
    (:func:`~edgeopt.quantization.planner.weight_quant_params`): the largest magnitude maps to
    ``limit`` and, with a ``layout`` (the kernel's order of accumulation, ``"safe"`` weights),
    the largest same-sign neighbour pair to at most PAIR_LIMIT. Recomputed from the weight at every
    call, so the scale follows the training. ``transposed``: the module holds the weight as the
    transpose of the ONNX one (a Linear exported as MatMul)."""

    def __init__(self, axis: int | None, limit: int, layout: tuple[tuple[int, ...], int] | None = None,
                 transposed: bool = False):
        super().__init__()
        self.axis, self.limit, self.layout, self.transposed = axis, limit, layout, transposed
        self.bypass = False
        #: scales proportional to each channel's largest magnitude (a weight clustered on a scaled
        #: codebook: every channel then stores the same integers, as the int8 path plans it)
        self.proportional = False

    def _onnx_layout(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.t() if self.transposed else weight

    def scale(self, weight: torch.Tensor) -> torch.Tensor:
        """The scales for ``weight`` in its ONNX layout."""
        values = weight.detach().double()
        if self.layout is None:
            needed = _channel_max(values.abs(), self.axis) / self.limit
        else:
            rows = _kernel_order(values, self.layout)
            magnitude = rows.abs().reshape(rows.shape[0], -1).amax(dim=1)
            needed = torch.maximum(magnitude / self.limit, _pair_peaks(rows) / PAIR_LIMIT)
            if self.axis is None:
                needed = needed.max()
        if self.proportional and self.axis is not None:
            needed = _proportional(needed, _channel_max(values.abs(), self.axis))
        needed = torch.clamp(needed, min=float(MIN_SCALE))
        scale = needed.float()
        if self.layout is not None:  # as paired_params: a float32 scale never rounds below the bound
            scale = torch.where(scale.double() < needed, torch.nextafter(scale, torch.tensor(float("inf"))), scale)
        return scale

    def _fake_quantized(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` in ONNX layout, fake-quantized."""
        scale = self.scale(weight)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(weight, scale, torch.zeros((), dtype=torch.int32),
                                                         -self.limit, self.limit)
        zero_points = torch.zeros(scale.shape, dtype=torch.int32, device=weight.device)
        return torch.fake_quantize_per_channel_affine(weight, scale.to(weight.device), zero_points,
                                                      self.axis % weight.dim(), -self.limit, self.limit)

    @contextlib.contextmanager
    def bypassed(self):
        """Pass weights through unchanged meanwhile: a layer run on weights already integers."""
        self.bypass = True
        try:
            yield
        finally:
            self.bypass = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.bypass:
            return weight
        quantized = self._fake_quantized(self._onnx_layout(weight))
        return quantized.t() if self.transposed else quantized

    def params(self, weight: torch.Tensor) -> QuantParams:
        """The parameters of ``weight`` (the module's layout) as the plan stores them."""
        onnx_weight = self._onnx_layout(weight)
        scale = self.scale(onnx_weight).cpu().numpy().astype(np.float32)
        if self.axis is None:
            return QuantParams(np.float32(scale), np.array(0, np.int8), "int8")
        return QuantParams(scale, np.zeros(scale.shape, np.int8), "int8", self.axis % onnx_weight.dim())

    def integer_values(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The int8 values the fake quantization of ``weight`` stands for (as floats, in the ONNX
        layout) and their scales (one per channel along ``axis``, or one)."""
        with torch.no_grad():
            onnx_weight = self._onnx_layout(weight).detach()
            scale = self.scale(onnx_weight).to(onnx_weight.device)
            shaped = scale
            if self.axis is not None:
                shaped = scale.reshape([-1 if i == self.axis % onnx_weight.dim() else 1
                                        for i in range(onnx_weight.dim())])
            return torch.round(self._fake_quantized(onnx_weight) / shaped), scale

    def integers(self, weight: torch.Tensor) -> np.ndarray:
        """The int8 values the fake quantization of ``weight`` stands for, in the ONNX layout."""
        return self.integer_values(weight)[0].cpu().numpy().astype(np.int8)


def _proportional(needed: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """As ``structure.proportional_scales``: each channel's magnitude times the largest ratio."""
    live = magnitude > 0
    if not bool(live.any()):
        return needed
    ratio = (needed[live] / magnitude[live]).max()
    return torch.where(live, torch.maximum(magnitude * ratio, needed), needed)


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


def weight_quantizer_for(node, view, weight_range: str = "safe", transposed: bool = False) -> WeightQuantizer:
    """The quantizer of ONNX ``node``'s weight (input 1) as the int8 path would quantize it."""
    from ..quantization.operators import rule_for
    from ..quantization.planner import _range_for
    from ..quantization.saturation import WEIGHT_LIMITS

    rank = len(view.initializers[node.input[1]].dims)
    rule = rule_for(node)
    chosen = _range_for(node, view, rank, weight_range)
    axis = rule.weights[1](node, view)
    return WeightQuantizer(axis, WEIGHT_LIMITS[chosen], rule.accumulation(node, rank) if chosen == "safe" else None,
                           transposed)


class ConvBatchNorm(torch.nn.Module):
    """A Conv2d and the BatchNorm2d after it, trained as the one convolution they deploy as: the
    weight is folded with the BatchNorm's running statistics (``gamma / sqrt(var + eps)`` per
    channel) and fake-quantized, the convolution's output is scaled back and the BatchNorm
    applied: with batch statistics while training (and updating its running ones), with the
    running ones otherwise, where the result is exactly the folded convolution (Jacob et al.
    2018, section 3.2). After :meth:`freeze`, or ``freeze_after`` training steps, or while the
    BatchNorm module itself is in eval mode, the running statistics stay as they are and training
    computes the folded convolution too. Under
    DistributedDataParallel the running statistics move by the mean of all ranks' batch
    statistics, so every rank folds the same weight. Holds the user's own two modules."""

    def __init__(self, conv: torch.nn.Conv2d, norm: torch.nn.BatchNorm2d, quantizer: WeightQuantizer,
                 freeze_after: int | None = None):
        super().__init__()
        self.conv, self.norm, self.quantizer = conv, norm, quantizer
        self.freeze_after = freeze_after
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self.register_buffer("is_frozen", torch.tensor(False))

    def freeze(self) -> None:
        """Stop updating the BatchNorm statistics; from now on the module computes the folded
        convolution in training too."""
        self.is_frozen.fill_(True)

    @property
    def frozen(self) -> bool:
        return bool(self.is_frozen) or (self.freeze_after is not None and int(self.steps) >= self.freeze_after)

    def _factor(self) -> torch.Tensor:
        weight = self.norm.weight if self.norm.affine else torch.ones_like(self.norm.running_var)
        return weight / torch.sqrt(self.norm.running_var + self.norm.eps)

    def folded_weight(self) -> torch.Tensor:
        return self.conv.weight * self._factor().reshape(-1, 1, 1, 1)

    def folded_bias(self) -> torch.Tensor:
        norm = self.norm
        bias = norm.bias if norm.affine else torch.zeros_like(norm.running_mean)
        conv_bias = self.conv.bias if self.conv.bias is not None else torch.zeros_like(norm.running_mean)
        return bias + (conv_bias - norm.running_mean) * self._factor()

    def _convolve(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The user's convolution module run with other parameters (its own forward: a Conv2d
        subclass may pad first, as TensorFlow's "SAME" padding needs)."""
        return torch.func.functional_call(self.conv, {"weight": weight, "bias": bias}, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.quantizer(self.folded_weight())
        if not self.training or self.frozen or not self.norm.training:
            # what the int8 model computes, in its order: the folded weight and bias (also when
            # the user froze the BatchNorm by putting it in eval mode)
            return self._convolve(x, weight, self.folded_bias())
        factor = self._factor().reshape(1, -1, 1, 1)
        # a channel whose gamma is 0 has a zero folded weight: divide its zeros by 1, not 0
        y = self._convolve(x, weight, None) / torch.where(factor == 0, torch.ones_like(factor), factor)
        if self.conv.bias is not None:
            y = y + self.conv.bias.reshape(1, -1, 1, 1)
        self.steps += 1
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.norm(y)
        self._update_running_statistics(y.detach())
        norm = self.norm
        return torch.nn.functional.batch_norm(y, None, None, norm.weight, norm.bias, True, 0.0, norm.eps)

    def _update_running_statistics(self, y: torch.Tensor) -> None:
        """BatchNorm2d's update, with each rank's batch mean and variance averaged over ranks."""
        norm = self.norm
        count = y.numel() // y.shape[1]
        mean = y.mean(dim=(0, 2, 3))
        variance = y.var(dim=(0, 2, 3), unbiased=count > 1)
        statistics = torch.stack([mean, variance])
        torch.distributed.all_reduce(statistics)
        statistics /= torch.distributed.get_world_size()
        norm.num_batches_tracked += 1
        momentum = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
        norm.running_mean.mul_(1 - momentum).add_(momentum * statistics[0])
        norm.running_var.mul_(1 - momentum).add_(momentum * statistics[1])
