"""Quantization-aware training, first pieces: placement by value, fake quantizers (torch extra)."""

from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from edgeopt.quantization.graph import GraphView, tensor_dtypes
from edgeopt.quantization.numerics import affine_params, dequantize, quantize
from edgeopt.quantization.prepare import prepare
from edgeopt.quantization.select import select


class InvertedResidual(torch.nn.Module):
    """MobileNetV2's block: 1x1 expand, 3x3 depthwise, 1x1 project, each with BatchNorm."""

    def __init__(self, channels: int, expand: int = 4):
        super().__init__()
        wide = channels * expand
        self.expand, self.bn1 = torch.nn.Conv2d(channels, wide, 1, bias=False), torch.nn.BatchNorm2d(wide)
        self.depthwise = torch.nn.Conv2d(wide, wide, 3, padding=1, groups=wide, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(wide)
        self.project, self.bn3 = torch.nn.Conv2d(wide, channels, 1, bias=False), torch.nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.nn.functional.relu6(self.bn1(self.expand(x)))
        y = torch.nn.functional.relu6(self.bn2(self.depthwise(y)))
        return x + self.bn3(self.project(y))


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = torch.nn.Conv2d(1, 16, 3, stride=2, padding=1), torch.nn.BatchNorm2d(16)
        self.blocks = torch.nn.Sequential(InvertedResidual(16), InvertedResidual(16))
        self.fc1, self.drop, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Dropout(0.1), torch.nn.Linear(32, 10)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def _small_net():
    torch.manual_seed(0)
    model = SmallNet()
    model.train()
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28))
    return model.eval()


def _exported(model, example):
    buffer = io.BytesIO()
    torch.onnx.export(model, (example,), buffer, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    exported = onnx.load_from_string(buffer.getvalue())
    prepare(exported)
    return exported


def _fake(model, example, plan, exported):
    """``model`` traced (a copy) with ``plan``'s quantizers, placed on ``example``."""
    from edgeopt.torch.fake_quant import fake_quantized, locate, traced_copy

    _, traced = traced_copy(model)
    found, missing = locate(traced.eval(), (example,), plan, exported)
    assert not missing
    return fake_quantized(traced, found, plan, exported).module


def test_every_planned_tensor_is_found_in_the_traced_module_by_value():
    from edgeopt.torch import placement

    model = _small_net()
    example = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    exported = _exported(model, example)
    selection = select(GraphView(exported), tensor_dtypes(exported), integer_only=False, per_channel=True)
    planned = sorted(selection.activations)
    traced = torch.fx.symbolic_trace(model)
    found, missing = placement.correspondence(
        placement.onnx_values(exported, planned, {"image": example.numpy()}),
        placement.node_values(traced, (example,)))
    assert not missing and set(found) == set(planned)
    # prepare folded each BatchNorm into its Conv: the Conv's ONNX output is the BatchNorm's in PyTorch
    convolutions = [node for node in exported.graph.node if node.op_type == "Conv"]
    assert len(convolutions) == 7
    assert {found[node.output[0]] for node in convolutions if node.output[0] in found} >= {"bn", "blocks_0_bn1"}
    assert found["image"] == "x"
    # the eval-mode Dropout holds fc1's ReLU values: the ReLU, first in graph order, is the match
    assert "drop" not in found.values()
    assert not any(v.startswith("output") for v in found.values())
    assert exported.graph.output[0].name == "logits" and len(exported.graph.output) == 1  # left as it was


@pytest.mark.parametrize("low,high,dtype", [(-1.3, 4.1, "uint8"), (0.0, 6.0, "uint8"), (-0.02, 0.5, "int8"),
                                            (0.25, 3.0, "uint8"), (-7.0, -1.0, "int8")])
def test_activation_quantizer_computes_what_the_int8_model_computes(low, high, dtype):
    """Same scale and zero point as affine_params (bit for bit), and fake-quantized values those of
    numpy's quantize -> dequantize, the arithmetic of ONNX Runtime's QuantizeLinear/DequantizeLinear:
    torch's kernel multiplies by 1/scale where they divide, so a value within a rounding error of a
    tie may land one step away (1 of these 4,001 on 0-6 uint8); never further."""
    from edgeopt.torch.quantizers import ActivationQuantizer

    params = affine_params(low, high, dtype)
    quantizer = ActivationQuantizer(params).eval()
    again = quantizer.params()
    assert np.float32(again.scale) == np.float32(params.scale) and int(again.zero_point) == int(params.zero_point)
    x = torch.linspace(low - 1.0, high + 1.0, 4001)
    expected = dequantize(quantize(x.numpy(), params), params)
    steps = np.abs(quantizer(x).numpy() - expected) / np.float32(params.scale)
    assert steps.max() <= 1.0 + 1e-4 and np.mean(steps < 1e-4) >= 0.999


def test_activation_quantizer_follows_the_data_until_frozen():
    from edgeopt.torch.quantizers import ActivationQuantizer

    quantizer = ActivationQuantizer(affine_params(0.0, 1.0), momentum=0.5, freeze_after=2).train()
    for _ in range(4):
        quantizer(torch.full((8,), 3.0))
    # two moves of half the way from 1 to 3, then frozen
    assert quantizer.high.item() == pytest.approx(2.5) and int(quantizer.steps) == 2
    x = torch.tensor([0.5, 9.0], requires_grad=True)
    quantizer(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]  # straight through inside the range, nothing outside


def _weight_node(op_type: str, weight: np.ndarray, **attributes):
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node(op_type, ["x", "w"], ["y"], name="n", **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return model.graph.node[0], GraphView(model)


WEIGHTS = [("Conv", (8, 4, 3, 3), {}), ("Conv", (8, 1, 3, 3), {"group": 8}), ("Gemm", (10, 16), {"transB": 1}),
           ("Gemm", (16, 10), {}), ("MatMul", (16, 10), {}), ("Conv", (6, 5, 1, 1), {})]


@pytest.mark.parametrize("op_type,shape,attributes", WEIGHTS)
@pytest.mark.parametrize("weight_range", ["safe", "half", "full"])
def test_weight_quantizer_picks_the_int8_paths_scales(op_type, shape, attributes, weight_range):
    """Bit-equal per-channel scales to the planner's for each range choice (pairs limited in the
    kernel's order for "safe", the depthwise Conv at full range), and fake-quantized weights
    within one step of the stored integers, equal for 99.9% (torch multiplies by 1/scale)."""
    from edgeopt.quantization.planner import weight_quant_params
    from edgeopt.torch.quantizers import weight_quantizer_for

    rng = np.random.default_rng(len(shape) + shape[0])
    weight = (rng.standard_normal(shape) * rng.uniform(0.01, 1.0, (shape[0],) + (1,) * (len(shape) - 1)))
    weight = weight.astype(np.float32)
    node, view = _weight_node(op_type, weight, **attributes)
    quantizer = weight_quantizer_for(node, view, weight_range)
    theirs = weight_quant_params(node, view, weight, quantizer.axis, weight_range)
    ours = quantizer.params(torch.from_numpy(weight))
    np.testing.assert_array_equal(np.asarray(ours.scale, np.float32), np.asarray(theirs.scale, np.float32))
    assert ours.axis == theirs.axis
    expected = dequantize(quantize(weight, theirs, (-quantizer.limit, quantizer.limit)), theirs)
    steps = np.abs(quantizer(torch.from_numpy(weight)).numpy() - expected) / \
        np.asarray(theirs.scale, np.float32).reshape([-1 if i == theirs.axis else 1 for i in range(weight.ndim)])
    assert steps.max() <= 1.0 + 1e-4 and np.mean(steps < 1e-4) >= 0.999


class PlainNet(torch.nn.Module):
    """Conv, ReLU, max pool, Conv, ReLU, flatten, Linear, ReLU, Linear: no BatchNorm to fold."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(16 * 7 * 7, 32), torch.nn.Linear(32, 10)

    def forward(self, x):
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.mark.parametrize("build", [PlainNet, _small_net], ids=["plain", "batch-norm"])
def test_fake_quantized_model_computes_what_onnx_runtime_int8_computes(build):
    """The traced model with the plan's quantizers against edgeopt's int8 model on ONNX Runtime's
    integer kernels, on held-out inputs: in eval mode every logit is the int8 model's (the
    issue's bound was one step of the output grid for 99%). With BatchNorm, each Conv2d +
    BatchNorm2d pair is one module quantizing the folded weight."""
    import edgeopt
    from edgeopt.runtimes.onnxruntime import make_session
    from edgeopt.torch.quantizers import ConvBatchNorm

    torch.manual_seed(0)
    model = build().eval()
    generator = torch.Generator().manual_seed(3)
    calibration = torch.randn(64, 1, 28, 28, generator=generator)
    exported = _exported(model, calibration[:4])
    config = edgeopt.Int8Config(calibration_method="minmax", weight_rounding="nearest", bias_correction=False,
                                fallback=False)
    result = edgeopt.quantize(exported, config, calibration={"image": calibration.numpy()})
    fake = _fake(model, calibration[:4], result.plan, exported).eval()
    held_out = torch.randn(32, 1, 28, 28, generator=generator)
    with torch.no_grad():
        ours = fake(held_out).numpy()
    theirs = make_session(result.model).run(None, {"image": held_out.numpy()})[0]
    np.testing.assert_array_equal(ours, theirs)
    folded = [m for m in fake.modules() if isinstance(m, ConvBatchNorm)]
    assert len(folded) == (7 if build is _small_net else 0)


def test_conv_batch_norm_trains_with_batch_statistics_and_deploys_as_the_folded_convolution():
    from edgeopt.torch.quantizers import ConvBatchNorm, WeightQuantizer

    torch.manual_seed(0)
    conv, norm = torch.nn.Conv2d(4, 6, 3, padding=1), torch.nn.BatchNorm2d(6)
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2.0)
    fused = ConvBatchNorm(conv, norm, WeightQuantizer(axis=0, limit=127))
    x = torch.randn(8, 4, 10, 10)
    def folded_convolution():
        """What the int8 model stores: the weight and bias folded with the running statistics."""
        factor = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = (conv.bias - norm.running_mean) * factor + norm.bias
        return torch.nn.functional.conv2d(x, fused.quantizer(fused.folded_weight()), bias, padding=1)

    with torch.no_grad():
        # eval: the folded convolution (float32 rounding of the scale-back only)
        torch.testing.assert_close(fused.eval()(x), folded_convolution(), rtol=1e-5, atol=1e-5)
        before = norm.running_mean.clone()
        fused.train()
        fused(x)
        assert not torch.equal(norm.running_mean, before)  # batch statistics while training
        fused.freeze()
        frozen = norm.running_mean.clone()
        torch.testing.assert_close(fused(x), folded_convolution(), rtol=1e-5, atol=1e-5)
        assert torch.equal(norm.running_mean, frozen)
    fused(x).sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_fake_quantized_leaves_the_users_model_as_it_was():
    import edgeopt

    model = _small_net()
    state = {name: value.clone() for name, value in model.state_dict().items()}
    example = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    exported = _exported(model, example)
    result = edgeopt.quantize(exported, edgeopt.Int8Config(calibration_method="minmax", fallback=False),
                              calibration={"image": torch.randn(16, 1, 28, 28).numpy()})
    fake = _fake(model, example, result.plan, exported)
    fake.train()(example).sum().backward()
    assert set(model.state_dict()) == set(state)  # no parametrization, no fused module added to it
    assert all(torch.equal(model.state_dict()[name], value) for name, value in state.items())
    assert not any(isinstance(m, torch.nn.utils.parametrize.ParametrizationList) for m in model.modules())
