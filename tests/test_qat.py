"""Quantization-aware training's lifecycle (torch extra): prepare_qat, a training loop, export,
then int8 without calibration data; the learned plan is what post-training quantization places;
bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import edgeopt  # noqa: E402
from edgeopt.errors import EdgeoptError  # noqa: E402
from edgeopt.runtimes.onnxruntime import make_session  # noqa: E402
from test_torch_qat import PlainNet, _small_net  # noqa: E402

CONFIG = edgeopt.QATConfig(calibration_method="minmax")


def _calibration(seed: int = 3, count: int = 64):
    return torch.randn(count, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def _prepared(model, config=CONFIG, calibration=None):
    import edgeopt.torch as et

    calibration = _calibration() if calibration is None else calibration
    loader = [(calibration[i:i + 16], torch.zeros(16)) for i in range(0, len(calibration), 16)]
    return et.prepare_qat(model, calibration[:4], config, calibration=loader)


def _train(qat, steps: int = 6, seed: int = 5, lr: float = 0.02):
    """A plain loop: regress the logits to fixed random targets."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(qat.parameters(), lr=lr, momentum=0.9)
    qat.train()
    for _ in range(steps):
        x = torch.randn(16, 1, 28, 28, generator=generator)
        target = torch.randn(16, 10, generator=generator)
        loss = torch.nn.functional.mse_loss(qat(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return qat.eval()


@pytest.mark.parametrize("build", [PlainNet, _small_net], ids=["plain", "batch-norm"])
def test_exported_qat_model_becomes_int8_without_data_and_computes_what_training_simulated(tmp_path, build):
    """After training steps (BatchNorm in training mode, ranges moving), the export is standard
    ONNX with QuantizeLinear/DequantizeLinear only; quantize() rebuilds it without calibration
    data; on held-out inputs its logits equal the eval-mode model's, every one (the issue's bound
    was one output step for 99%: eval mode runs the integer kernels, see test_integer_kernels)."""
    import edgeopt.torch as et

    torch.manual_seed(0)
    model = build().eval()
    qat = _train(_prepared(model))
    path = tmp_path / "model.qat.onnx"
    plan = et.export(qat, path)
    exported = onnx.load(str(path))
    assert {node.domain for node in exported.graph.node} <= {"", "ai.onnx"}
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in exported.graph.node}
    onnx.checker.check_model(exported, full_check=True)
    result = edgeopt.quantize(path, edgeopt.Int8Config())
    assert result.report["from_plan"]
    # the same decisions; the rebuild reads the Relu/Clip the export dropped as float-free nodes
    assert [line for line in plan.differences(result.plan) if not line.startswith(("absorbed", "nodes"))] == []
    held_out = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        ours = qat(held_out).numpy()
    theirs = make_session(result.model).run(None, {"x": held_out.numpy()})[0]
    np.testing.assert_array_equal(ours, theirs)


def test_learned_plan_places_what_post_training_quantization_places_on_the_exported_graph(tmp_path):
    """The export's quantized tensors, weights, biases, nodes and absorbed activations are those
    post-training quantization (same settings) chooses for the same float graph; only the
    parameters differ, and the activations' are the trained quantizers' own."""
    import edgeopt.torch as et
    from edgeopt.torch.qat import float_onnx, state_of

    qat = _train(_prepared(_small_net()))
    plan = et.export(qat, tmp_path / "m.onnx")
    again = edgeopt.quantize(float_onnx(qat), CONFIG.int8_config(), calibration={"x": _calibration().numpy()}).plan
    assert plan.activations.keys() == again.activations.keys()
    assert plan.weights.keys() == again.weights.keys() and plan.biases.keys() == again.biases.keys()
    assert set(plan.nodes) == set(again.nodes) and plan.absorbed == again.absorbed
    module, state = state_of(qat)
    quantizers = dict(module.named_modules())
    for tensor, params in plan.activations.items():
        assert params.scale == quantizers[state.activations[tensor]].params().scale
    assert any(plan.activations[t].scale != state.plan.activations[t].scale for t in plan.activations)


def test_the_users_model_is_untouched_and_the_prepared_one_trains_its_own_copy():
    model = _small_net()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    _train(_prepared(model))
    assert all(torch.equal(model.state_dict()[name], value) for name, value in before.items())
    assert set(model.state_dict()) == set(before)


def test_shared_scale_tensors_share_one_quantizer_that_observes_once():
    """PlainNet's max pools and flatten: each output takes its input's scale, in the plan and in
    the export, through one quantizer (called again without observing)."""
    from edgeopt.torch.qat import state_of

    qat = _train(_prepared(PlainNet()), steps=3)
    module, state = state_of(qat)
    pools = [node for node in module.graph.nodes if node.op == "call_module" and node.kwargs.get("observe") is False]
    assert len(pools) == 3  # two max pools, the flatten
    assert all(int(module.get_submodule(node.target).steps) == 3 for node in pools)
    groups = {}
    for tensor, target in state.activations.items():
        groups.setdefault(target, []).append(tensor)
    assert sorted(len(g) for g in groups.values() if len(g) > 1) == [2, 3]  # conv2's relu, pool, flatten


def test_observers_and_batch_norm_statistics_freeze_after_their_steps():
    from edgeopt.torch.quantizers import ActivationQuantizer, ConvBatchNorm

    config = edgeopt.QATConfig(calibration_method="minmax", freeze_observers_after=2, freeze_bn_after=3)
    qat = _train(_prepared(_small_net(), config), steps=2)
    observers = [m for m in qat.modules() if isinstance(m, ActivationQuantizer)]
    folded = [m for m in qat.modules() if isinstance(m, ConvBatchNorm)]
    assert observers and folded
    ranges = [(m.low.clone(), m.high.clone()) for m in observers]
    _train(qat, steps=1, seed=6)  # step 3: ranges frozen, batch statistics still move
    assert all(torch.equal(m.low, low) and torch.equal(m.high, high) for m, (low, high) in zip(observers, ranges))
    assert all(int(m.steps) == 3 and m.frozen for m in folded)
    statistics = [m.norm.running_mean.clone() for m in folded]
    _train(qat, steps=2, seed=7)
    assert all(torch.equal(m.norm.running_mean, s) for m, s in zip(folded, statistics))


def test_learned_scales_train_by_gradient_and_are_what_the_export_stores(tmp_path):
    import edgeopt.torch as et
    from edgeopt.torch.qat import state_of

    qat = _prepared(_small_net(), edgeopt.QATConfig(calibration_method="minmax", learn_scales=True))
    module, state = state_of(qat)
    start = {name: float(m.scale) for name, m in module.named_modules() if hasattr(m, "learn_scales")}
    _train(qat, steps=4, lr=0.05)
    moved = {name: float(m.scale) for name, m in module.named_modules() if hasattr(m, "learn_scales")}
    assert any(moved[name] != value for name, value in start.items())
    plan = et.export(qat, tmp_path / "m.onnx")
    for tensor, target in state.activations.items():
        quantizer = module.get_submodule(target)
        assert plan.activations[tensor].scale == np.float32(quantizer.scale_and_zero_point()[0].item())


def test_integer_only_rebuild_of_a_qat_export(tmp_path):
    import edgeopt.torch as et

    qat = _train(_prepared(_small_net(), edgeopt.QATConfig(calibration_method="minmax", integer_only=True)))
    et.export(qat, tmp_path / "m.onnx")
    result = edgeopt.quantize(tmp_path / "m.onnx", edgeopt.Int8Config(integer_only=True))
    assert result.model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    converted = et.convert(qat, tmp_path / "direct.onnx", edgeopt.Int8Config(integer_only=True))
    assert converted.plan.weights == result.plan.weights and (tmp_path / "direct.onnx").exists()


class Tokens(torch.nn.Module):
    """A Linear on [batch, tokens, features]: ONNX computes it as MatMul then Add, and the
    MatMul's output exists nowhere in PyTorch."""

    def __init__(self):
        super().__init__()
        self.proj, self.head = torch.nn.Linear(28, 16), torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.head(torch.relu(self.proj(x.squeeze(1))).mean(dim=1))


def test_a_tensor_without_a_pytorch_counterpart_stays_float_with_the_reason(tmp_path, caplog):
    import edgeopt.torch as et
    from edgeopt.torch.qat import NO_COUNTERPART, state_of

    torch.manual_seed(0)
    qat = _prepared(Tokens().eval())
    _, state = state_of(qat)
    assert NO_COUNTERPART in state.plan.kept_float.values()
    assert state.plan.weights  # the head (a 2-D Gemm) is still quantized
    _train(qat, steps=2)
    edgeopt.quantize(et.export(qat, tmp_path / "m.onnx") and tmp_path / "m.onnx", edgeopt.Int8Config())


class Untraceable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            return self.conv(x)
        return self.conv(-x)


def test_bad_inputs_are_one_line_errors_and_leave_nothing_behind(tmp_path):
    import edgeopt.torch as et

    calibration = _calibration(count=16)
    qat = _prepared(PlainNet())
    cases = [
        (lambda: et.prepare_qat(qat, calibration[:4], CONFIG, calibration=calibration), "already prepared"),
        (lambda: et.export(PlainNet(), tmp_path / "a.onnx"), "expected a model from edgeopt.torch.prepare_qat"),
        (lambda: et.prepare_qat(torch.nn.LayerNorm(28), calibration[:4], CONFIG, calibration=calibration),
         "nothing in the model can be quantized"),
        (lambda: et.prepare_qat(Untraceable(), calibration[:4], CONFIG, calibration=calibration), "cannot trace"),
        (lambda: et.prepare_qat(PlainNet(), calibration[:4], CONFIG), "needs calibration data"),
        (lambda: et.prepare_qat(PlainNet(), calibration[:4], edgeopt.Int8Config(), calibration=calibration),
         "must be a QATConfig"),
        (lambda: et.prepare_qat(PlainNet(), "not a tensor", CONFIG, calibration=calibration), "example_inputs"),
        (lambda: et.convert(qat, tmp_path / "b.onnx", edgeopt.DynamicConfig()), "needs an Int8Config"),
        (lambda: edgeopt.quantize(tmp_path / "missing.onnx", CONFIG), "QATConfig is for"),
    ]
    for call, message in cases:
        with pytest.raises(EdgeoptError, match=message) as caught:
            call()
        assert "\n" not in str(caught.value)
    assert not list(tmp_path.iterdir())
    with pytest.raises(EdgeoptError, match="not writable|does not exist|cannot"):
        et.export(qat, tmp_path / "no" / "such" / "folder" / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_qat_config_checks_its_values_and_round_trips():
    config = edgeopt.QATConfig(freeze_bn_after=100, learn_scales=True)
    assert edgeopt.QATConfig.from_dict(config.to_dict()) == config
    for bad, message in [({"freeze_bn_after": -1}, "freeze_bn_after"), ({"observer_momentum": 0.0}, "momentum"),
                         ({"scope": "auto"}, "scope"), ({"activation_type": "int16"}, "activation_type"),
                         ({"freeze_observers_after": 1.5}, "freeze_observers_after")]:
        with pytest.raises(EdgeoptError, match=message):
            edgeopt.QATConfig(**bad)


class InPlace(torch.nn.Module):
    """Conv, BatchNorm, ReLU6(inplace=True), as torchvision's MobileNetV2 writes its blocks."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                                        torch.nn.ReLU6(inplace=True), torch.nn.Conv2d(8, 8, 3, padding=1),
                                        torch.nn.ReLU(inplace=True))
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3)))


def test_in_place_activations_do_not_hide_the_tensors_before_them():
    """Regression: the traced values were views, and ReLU6(inplace=True) clipped the BatchNorm's
    recorded output afterwards, so no traced node matched the (unclipped) ONNX Conv output and
    every such convolution stayed float."""
    from edgeopt.torch.qat import NO_COUNTERPART, state_of

    _, state = state_of(_prepared(InPlace().eval()))
    assert NO_COUNTERPART not in state.plan.kept_float.values()
    assert len(state.weights) == 3


def test_a_batch_norm_the_user_puts_in_eval_mode_stays_frozen():
    """The usual way to freeze BatchNorm in a fine-tuning loop: model.train(), then each
    BatchNorm .eval(); the folded convolution then trains with the running statistics."""
    from edgeopt.torch.quantizers import ConvBatchNorm

    qat = _prepared(_small_net())
    folded = [m for m in qat.modules() if isinstance(m, ConvBatchNorm)]
    before = [m.norm.running_mean.clone() for m in folded]
    qat.train()
    for module in qat.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    qat(torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(9)))
    assert all(torch.equal(m.norm.running_mean, b) for m, b in zip(folded, before))
    stem = next(m for m in folded if m.conv.in_channels == 1)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        training = stem(x)
        torch.testing.assert_close(training, stem.eval()(x), rtol=0, atol=0)  # the deployed arithmetic exactly


class PaddingConv(torch.nn.Conv2d):
    """A Conv2d subclass that pads in its forward (TensorFlow's "SAME" padding, as
    EfficientNet-Lite ports write it): ONNX has Pad -> Conv, PyTorch one module."""

    def forward(self, x):
        return super().forward(torch.nn.functional.pad(x, (0, 1, 0, 1)))


class Same(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn = PaddingConv(1, 8, 3, stride=2, bias=False), torch.nn.BatchNorm2d(8)
        self.depthwise, self.bn2 = PaddingConv(8, 8, 3, stride=2, groups=8, bias=False), torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = torch.nn.functional.relu6(self.bn(self.stem(x)))
        x = torch.nn.functional.relu6(self.bn2(self.depthwise(x)))
        return self.head(x.mean(dim=(2, 3)))


def test_conv2d_subclasses_that_pad_are_quantized_and_folded(tmp_path):
    """The subclass stays one traced module (its BatchNorm folds into it, its forward's pad runs);
    the Pad outputs ONNX quantizes take their input's quantizer (the graph input's for the stem,
    the shared ReLU6 one inside): nothing stays float and the int8 model computes what the
    eval-mode model computes, bit for bit."""
    import edgeopt.torch as et
    from edgeopt.torch.qat import state_of
    from edgeopt.torch.quantizers import ConvBatchNorm

    torch.manual_seed(0)
    qat = _train(_prepared(Same().eval()), steps=3)  # fresh BatchNorms: unit statistics, still folded
    _, state = state_of(qat)
    assert not state.plan.kept_float and len(state.weights) == 3
    assert sum(isinstance(m, ConvBatchNorm) for m in qat.modules()) == 2
    et.export(qat, tmp_path / "m.onnx")
    result = edgeopt.quantize(tmp_path / "m.onnx", edgeopt.Int8Config())
    held_out = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        ours = qat(held_out).numpy()
    theirs = make_session(result.model).run(None, {"x": held_out.numpy()})[0]
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("build", [PlainNet, _small_net], ids=["plain", "batch-norm"])
def test_training_starts_from_the_post_training_model(tmp_path, build):
    """start="post-training" (the default): before any step, the export stores the starting
    plan's compensated integers and corrected biases (folded ones through the BatchNorm), so
    the QAT model begins as edgeopt's post-training int8 model; start="float" begins from the
    float weights rounded to nearest."""
    import edgeopt.torch as et
    from edgeopt.torch.qat import state_of

    torch.manual_seed(0)
    model = build().eval()
    qat = _prepared(model).eval()
    _, state = state_of(qat)
    assert state.plan.compensated_weights or state.plan.corrected_biases
    plan = et.export(qat, tmp_path / "start.onnx")
    same = [np.mean(plan.weights[key].values == state.plan.weights[key].values) for key in state.plan.weights]
    assert min(same) >= 0.99, same
    for key, bias in state.plan.biases.items():
        np.testing.assert_allclose(plan.biases[key].dequantized(), bias.dequantized(), rtol=0,
                                   atol=float(np.max(bias.params.scale)) * 2)
    floating = _prepared(model, edgeopt.QATConfig(calibration_method="minmax", start="float")).eval()
    _, float_state = state_of(floating)
    assert not float_state.plan.compensated_weights and not float_state.plan.corrected_biases
