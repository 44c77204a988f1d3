"""Tiny ONNX models built inline with ``onnx.helper``, and seeded inputs for them.

Every builder returns a checked ``onnx.ModelProto``. ``CASES`` lists the models with float
weights, each with a function that draws seeded random inputs for it, so that the tests can
calibrate on one seed and compare outputs on another (held-out) seed. Every model in ``CASES`` has
weights of at least 64x64 (or an equally large LSTM / embedding table) that make up nearly all
of its file, so that file-size ratios measure the weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _weight(rng: np.random.Generator, name: str, shape, scale: float | None = None) -> onnx.TensorProto:
    """A float32 initializer with He-like scaling so activations stay O(1) through the layers."""
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else int(shape[0])
    scale = np.sqrt(2.0 / fan_in) if scale is None else scale
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def _small(rng: np.random.Generator, name: str, size: int) -> onnx.TensorProto:
    """A float32 bias-like vector with values of about 0.1."""
    return numpy_helper.from_array((rng.standard_normal(size) * 0.1).astype(np.float32), name)


def finish(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    """The model of ``graph`` at ``opset`` (IR version 8, which every onnxruntime here reads), checked."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def conv_net(seed: int = 0) -> onnx.ModelProto:
    """Conv+BN+Relu+MaxPool twice, Flatten, Gemm+Relu, Gemm; input (N, 3, 16, 16), dynamic batch."""
    rng = np.random.default_rng(seed)
    inits = [
        _weight(rng, "conv1_w", (16, 3, 3, 3)),
        _small(rng, "conv1_b", 16),
        _weight(rng, "conv2_w", (32, 16, 3, 3)),
        _weight(rng, "fc1_w", (128, 512)),  # transB=1: (out, in)
        _small(rng, "fc1_b", 128),
        _weight(rng, "fc2_w", (128, 10)),
        _small(rng, "fc2_b", 10),
    ]
    for prefix, channels in (("bn1", 16), ("bn2", 32)):
        inits += [
            numpy_helper.from_array(rng.uniform(0.5, 1.5, channels).astype(np.float32), f"{prefix}_scale"),
            _small(rng, f"{prefix}_bias", channels),
            _small(rng, f"{prefix}_mean", channels),
            numpy_helper.from_array(rng.uniform(0.5, 2.0, channels).astype(np.float32), f"{prefix}_var"),
        ]
    nodes = [
        helper.make_node("Conv", ["input", "conv1_w", "conv1_b"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn1_scale", "bn1_bias", "bn1_mean", "bn1_var"], ["b1"],
                         name="bn1", epsilon=1e-5),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_w"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", "bn2_scale", "bn2_bias", "bn2_mean", "bn2_var"], ["b2"],
                         name="bn2", epsilon=1e-5),
        helper.make_node("Relu", ["b2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc1_w", "fc1_b"], ["g1"], name="fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "fc2_w", "fc2_b"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "conv_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits)
    return finish(graph)


def attention(seed: int = 0) -> onnx.ModelProto:
    """x (N, 8, 64): q, k, v projections (64x64 MatMul + Add), Softmax(q k^T / 8) v, output projection."""
    rng = np.random.default_rng(seed)
    inits = []
    for name in ("q", "k", "v", "o"):
        inits.append(_weight(rng, f"w{name}", (64, 64), scale=1.0 / 8.0))
        inits.append(_small(rng, f"b{name}", 64))
    inits.append(numpy_helper.from_array(np.array(1.0 / 8.0, dtype=np.float32), "inv_sqrt_d"))
    nodes = []
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("MatMul", ["x", f"w{name}"], [f"{name}_mm"], name=f"{name}_matmul"),
                  helper.make_node("Add", [f"{name}_mm", f"b{name}"], [name], name=f"{name}_add")]
    nodes += [
        helper.make_node("Transpose", ["k"], ["k_t"], name="k_transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "k_t"], ["scores_raw"], name="scores_matmul"),
        helper.make_node("Mul", ["scores_raw", "inv_sqrt_d"], ["scores"], name="scores_scale"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["probs", "v"], ["context"], name="context_matmul"),
        helper.make_node("MatMul", ["context", "wo"], ["o_mm"], name="o_matmul"),
        helper.make_node("Add", ["o_mm", "bo"], ["y"], name="o_add"),
    ]
    graph = helper.make_graph(
        nodes, "attention",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 64])],
        inits)
    return finish(graph)


def constant_weights(seed: int = 0) -> onnx.ModelProto:
    """MatMul (64x128) + Add + Relu + MatMul (128x16) whose weights live in Constant nodes."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((64, 128)) * np.sqrt(2.0 / 64)).astype(np.float32)
    b1 = numpy_helper.to_array(_small(rng, "b1", 128))
    w2 = (rng.standard_normal((128, 16)) * np.sqrt(2.0 / 128)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w1"], name="const_w1", value=numpy_helper.from_array(w1, "w1")),
        helper.make_node("Constant", [], ["b1"], name="const_b1", value=numpy_helper.from_array(b1, "b1")),
        helper.make_node("Constant", [], ["w2"], name="const_w2", value=numpy_helper.from_array(w2, "w2")),
        helper.make_node("MatMul", ["x", "w1"], ["h_mm"], name="mm1"),
        helper.make_node("Add", ["h_mm", "b1"], ["h"], name="add1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu1"),
        helper.make_node("MatMul", ["h_relu", "w2"], ["y"], name="mm2"),
    ]
    graph = helper.make_graph(
        nodes, "constant_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])])
    return finish(graph)


def opset11_mlp(seed: int = 0) -> onnx.ModelProto:
    """Opset 11: Gemm (64 -> 128) + Relu + Gemm (128 -> 10)."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "w1", (64, 128)), _small(rng, "b1", 128),
             _weight(rng, "w2", (128, 10)), _small(rng, "b2", 10)]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu1"),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "opset11_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits)
    return finish(graph, opset=11)


def two_inputs_two_outputs(seed: int = 0) -> onnx.ModelProto:
    """a, b (N, 64): sum = Relu(a Wa + b Wb) (64x64 each); out_sum = sum W1 (64x64), out_b = b W2 (64x32)."""
    rng = np.random.default_rng(seed)
    inits = [_weight(rng, "wa", (64, 64)), _weight(rng, "wb", (64, 64)), _weight(rng, "w1", (64, 64)),
             _weight(rng, "w2", (64, 32))]
    nodes = [
        helper.make_node("MatMul", ["a", "wa"], ["a_mm"], name="a_matmul"),
        helper.make_node("MatMul", ["b", "wb"], ["b_mm"], name="b_matmul"),
        helper.make_node("Add", ["a_mm", "b_mm"], ["summed"], name="add"),
        helper.make_node("Relu", ["summed"], ["summed_relu"], name="relu"),
        helper.make_node("MatMul", ["summed_relu", "w1"], ["out_sum"], name="sum_matmul"),
        helper.make_node("MatMul", ["b", "w2"], ["out_b"], name="b_out_matmul"),
    ]
    graph = helper.make_graph(
        nodes, "two_io",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 64]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("out_sum", TensorProto.FLOAT, ["N", 64]),
         helper.make_tensor_value_info("out_b", TensorProto.FLOAT, ["N", 32])],
        inits)
    return finish(graph)


VOCABULARY = 512


def embedding(seed: int = 0) -> onnx.ModelProto:
    """ids (N, 8) int64 -> Gather on a 512x64 table -> ReduceMean over tokens -> MatMul (64x16)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((VOCABULARY, 64)).astype(np.float32), "table"),
             _weight(rng, "w", (64, 16))]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["embedded"], name="gather", axis=0),
        # Opset 17: ReduceMean still takes its axes as an attribute.
        helper.make_node("ReduceMean", ["embedded"], ["pooled"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "w"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes, "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        inits)
    return finish(graph)


def lstm(seed: int = 0, time_major: bool = False) -> onnx.ModelProto:
    """x (N, 4, 16) -> Transpose to time-major -> LSTM (hidden 32) -> last hidden state -> Gemm (32 -> 10).

    With ``time_major`` the input is the LSTM's own (4, N, 16) layout, with no Transpose.
    """
    rng = np.random.default_rng(seed)
    hidden = 32
    inits = [
        _weight(rng, "W", (1, 4 * hidden, 16), scale=0.25),
        _weight(rng, "R", (1, 4 * hidden, hidden), scale=0.18),
        numpy_helper.from_array((rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32), "B"),
        _weight(rng, "fc_w", (hidden, 10)),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "squeeze_axes"),
    ]
    nodes = [] if time_major else [helper.make_node("Transpose", ["x"], ["x_t"], name="to_time_major",
                                                    perm=[1, 0, 2])]
    nodes += [
        helper.make_node("LSTM", ["x" if time_major else "x_t", "W", "R", "B"], ["", "h_last"], name="lstm",
                         hidden_size=hidden),
        helper.make_node("Squeeze", ["h_last", "squeeze_axes"], ["h"], name="squeeze"),
        helper.make_node("Gemm", ["h", "fc_w"], ["y"], name="fc"),
    ]
    shape = [4, "N", 16] if time_major else ["N", 4, 16]
    graph = helper.make_graph(
        nodes, "lstm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits)
    return finish(graph)


def no_float_weights() -> onnx.ModelProto:
    """Only a Relu: nothing to quantize."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "relu_only",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    return finish(graph)


# --- seeded inputs -----------------------------------------------------------------------------


def _normal(shape):
    def draw(rng: np.random.Generator, count: int) -> np.ndarray:
        return rng.standard_normal((count, *shape)).astype(np.float32)
    return draw


def _ids(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, VOCABULARY, size=(count, 8), dtype=np.int64)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], onnx.ModelProto]
    inputs: dict[str, Callable[[np.random.Generator, int], np.ndarray]]

    def feeds(self, seed: int, count: int) -> dict[str, np.ndarray]:
        """``count`` seeded samples per input, as one batch (a dict of arrays)."""
        rng = np.random.default_rng(seed)
        return {name: draw(rng, count) for name, draw in self.inputs.items()}


CASES = {
    "conv_net": Case("conv_net", conv_net, {"input": _normal((3, 16, 16))}),
    "attention": Case("attention", attention, {"x": _normal((8, 64))}),
    "constant_weights": Case("constant_weights", constant_weights, {"x": _normal((64,))}),
    "opset11": Case("opset11", opset11_mlp, {"x": _normal((64,))}),
    "two_io": Case("two_io", two_inputs_two_outputs, {"a": _normal((64,)), "b": _normal((64,))}),
    "embedding": Case("embedding", embedding, {"ids": _ids}),
    "lstm": Case("lstm", lstm, {"x": _normal((4, 16))}),
}


def run(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray], optimize: bool = False
        ) -> list[np.ndarray]:
    """Outputs of ``model`` on ``feeds`` through ONNX Runtime (graph optimizations off by default,
    so the graph that runs is the graph edgeopt wrote)."""
    from edgeopt.runtimes.onnxruntime import make_session

    return make_session(model, optimize=optimize).run(None, feeds)


def worst_cosine(reference: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """Lowest per-sample cosine similarity over every output (float64 arithmetic, samples on axis 0)."""
    worst = 1.0
    for ref, out in zip(reference, outputs, strict=True):
        ref = np.asarray(ref, dtype=np.float64)
        out = np.asarray(out, dtype=np.float64)
        ref, out = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
        cosine = np.sum(ref * out, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
        worst = min(worst, float(cosine.min()))
    return worst


def run_integer_only(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimize: bool = False
                     ) -> list[np.ndarray]:
    """Run an integer-only model on float feeds: quantize inputs and dequantize outputs with the scales
    stored in its metadata (``edgeopt.io.<name>``), written out here independently of edgeopt's helpers."""
    import json

    params = {entry.key[len("edgeopt.io."):]: json.loads(entry.value) for entry in model.metadata_props
              if entry.key.startswith("edgeopt.io.")}
    encoded = {}
    for name, value in feeds.items():
        p = params.get(name)
        if p is None:
            encoded[name] = value
            continue
        info = np.iinfo(p["dtype"])
        q = np.rint(value.astype(np.float64) / np.float32(p["scale"])) + p["zero_point"]
        encoded[name] = np.clip(q, info.min, info.max).astype(p["dtype"])
    outputs = run(model, encoded, optimize=optimize)
    names = [value.name for value in model.graph.output]
    decoded = []
    for name, value in zip(names, outputs, strict=True):
        p = params.get(name)
        decoded.append(value if p is None else
                       ((value.astype(np.float64) - p["zero_point"]) * p["scale"]).astype(np.float32))
    return decoded
