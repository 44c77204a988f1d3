"""A prepared QAT model in eval mode computes what ONNX Runtime's integer kernels compute, bit
for bit; in training mode it keeps the float fake quantization and its gradients (torch extra)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgeopt  # noqa: E402
from edgeopt.runtimes.onnxruntime import make_session  # noqa: E402
from test_qat import CONFIG, Same, _prepared, _train  # noqa: E402
from test_torch_qat import PlainNet, _small_net  # noqa: E402


def _layers(qat) -> int:
    from edgeopt.torch.integer_kernels import quantized_layer

    return sum(node.op == "call_function" and node.target is quantized_layer for node in qat.graph.nodes)


def _int8_outputs(qat, path, inputs: torch.Tensor) -> np.ndarray:
    import edgeopt.torch as et

    result = et.convert(qat, path)
    return make_session(result.model).run(None, {"x": inputs.numpy()})[0]


@pytest.mark.parametrize("build", [PlainNet, _small_net, Same], ids=["plain", "batch-norm", "padding-subclass"])
def test_eval_mode_is_the_int8_model_bit_for_bit(tmp_path, build, monkeypatch):
    """After training steps, every logit of the eval-mode model equals the ONNX Runtime int8
    model's (no tolerance: both are (q - zero point) * scale of the same integers q), with the
    float32 sums and with the float64 ones forced; every Conv/Gemm runs as its integer kernel."""
    from edgeopt.torch import integer_kernels

    torch.manual_seed(0)
    qat = _train(_prepared(build().eval()), steps=3)
    held_out = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(11))
    theirs = _int8_outputs(qat, tmp_path / "m.onnx", held_out)
    with torch.no_grad():
        ours = qat(held_out).numpy()
        monkeypatch.setattr(integer_kernels, "FLOAT32_EXACT", 0.0)
        in_float64 = qat(held_out).numpy()
    assert _layers(qat) == {PlainNet: 4, _small_net: 9, Same: 3}[build]
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(in_float64, theirs)


def test_training_mode_keeps_the_float_fake_quantization_and_its_gradients():
    """Training runs the user's layers (the integer kernels have no gradient): the loss reaches
    every weight, and the output differs from the eval-mode integer one by at most a step or two
    of the output grid for 99% of the logits (float sums and float biases; no BatchNorm here,
    whose batch statistics would move the training output further)."""
    torch.manual_seed(0)
    qat = _prepared(PlainNet().eval(), edgeopt.QATConfig(calibration_method="minmax", freeze_observers_after=0))
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    qat.train()
    trained = qat(x)
    trained.square().mean().backward()
    weights = [p for name, p in qat.named_parameters() if name.endswith("original")]
    assert weights and all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)
    with torch.no_grad():
        evaluated = qat.eval()(x)
    from edgeopt.torch.qat import state_of

    _, state = state_of(qat)
    scale = float(dict(qat.named_modules())[state.activations["output"]].params().scale)
    steps = (trained.detach() - evaluated).abs().numpy() / scale
    assert np.mean(steps <= 2.0 + 1e-3) >= 0.99, np.sort(steps.ravel())[-5:]


def test_int8_activations_keep_the_float_path():
    """With int8 activations ONNX Runtime runs some convolutions in float: no layer is routed
    through the integer kernels."""
    qat = _prepared(PlainNet().eval(), edgeopt.QATConfig(calibration_method="minmax", activation_type="int8"))
    assert _layers(qat) == 0
    assert _layers(_prepared(PlainNet().eval(), CONFIG)) == 4
