"""LiteRT (the TFLite interpreter from ``ai-edge-litert``, the ``tflite`` extra) behind the runner protocol.

The interpreter applies the XNNPACK delegate as an app using LiteRT's defaults would
(``kernels="builtin"`` runs without it, ``"reference"`` on the reference kernels). Integer inputs
and outputs with quantization parameters take and give float data, like edgeopt's integer-only
ONNX models; a batch larger than the model's fixed first dimension of 1 runs row by row.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import numpy as np

from ..data import InputSpec
from ..errors import EdgeoptError

KERNELS = ("default", "builtin", "reference")


@contextlib.contextmanager
def quiet_stderr():
    """Silence the interpreter's C++ INFO lines ("Created TensorFlow Lite XNNPACK delegate")."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def interpreter(content: bytes, threads: int | None = 1, kernels: str = "default"):
    """A LiteRT interpreter of ``content`` with its tensors allocated."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        raise EdgeoptError("running .tflite files needs the tflite extra: pip install 'edgeopt[tflite]'") from None
    if kernels not in KERNELS:
        raise EdgeoptError(f"kernels must be one of {', '.join(KERNELS)}; got {kernels!r}")
    resolver = {"default": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                "reference": OpResolverType.BUILTIN_REF}[kernels]
    try:
        with quiet_stderr():
            loaded = Interpreter(model_content=content, num_threads=threads, experimental_op_resolver_type=resolver)
    except ValueError as exc:
        raise EdgeoptError(f"LiteRT cannot load the model: {str(exc).strip().splitlines()[0][:240]}") from None
    try:
        with quiet_stderr():
            loaded.allocate_tensors()
    except RuntimeError as exc:
        dynamic = any(-1 in d["shape_signature"] for d in loaded.get_input_details())
        if not dynamic:  # a model with dynamic inputs is allocated once the data gives their sizes
            raise EdgeoptError(f"LiteRT cannot prepare the model: {str(exc).strip().splitlines()[0][:240]}") from None
    return loaded


class LiteRTRunner:
    """One LiteRT interpreter taking and returning float data."""

    def __init__(self, content: bytes, threads: int | None = 1, kernels: str = "default"):
        self.interpreter = interpreter(content, threads, kernels)
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        self.output_names = [detail["name"] for detail in self.outputs]
        self.input_specs = [InputSpec(d["name"], np.dtype(np.float32) if _scale(d) else np.dtype(d["dtype"]),
                                      tuple(int(n) if n > 0 else None for n in d["shape_signature"]))
                            for d in self.inputs]

    @classmethod
    def open(cls, model, threads: int | None = 1) -> LiteRTRunner:
        if isinstance(model, (bytes, bytearray)):
            return cls(bytes(model), threads)
        path = pathlib.Path(model)
        if not path.is_file():
            raise EdgeoptError(f"{path}: no such file (expected a .tflite model)")
        content = path.read_bytes()
        if len(content) < 8 or content[4:8] != b"TFL3":
            raise EdgeoptError(f"{path} is not a TFLite flatbuffer (expected the identifier TFL3 at byte 4)")
        return cls(content, threads)

    def prepare(self, feed: dict) -> list:
        """Per call of the interpreter: the (tensor index, array) pairs to set, rows split where
        the model takes one sample and the feed holds several."""
        rows = self._rows(feed)
        calls = []
        for row in range(rows):
            pairs = []
            for detail in self.inputs:
                value = np.asarray(feed[detail["name"]])
                if rows > 1:
                    value = value[row:row + 1]
                pairs.append((detail["index"], _encode(value, detail)))
            calls.append(pairs)
        return calls

    def run_prepared(self, prepared: list) -> list:
        results = []
        for pairs in prepared:
            try:
                for index, value in pairs:
                    self.interpreter.set_tensor(index, value)
                self.interpreter.invoke()
            except (RuntimeError, ValueError) as exc:
                raise EdgeoptError(f"LiteRT cannot run the data through the model: "
                                   f"{str(exc).strip().splitlines()[0][:200]}") from None
            results.append([self.interpreter.get_tensor(d["index"]) for d in self.outputs])
        if len(results) == 1:
            return results[0]
        return [np.concatenate([r[i] for r in results]) for i in range(len(self.outputs))]

    def run(self, feed: dict) -> list:
        missing = sorted({d["name"] for d in self.inputs} - set(feed))
        if missing:
            raise EdgeoptError(f"the data has no input {', '.join(missing)}; the model's inputs are "
                               f"{[d['name'] for d in self.inputs]}")
        outputs = self.run_prepared(self.prepare(feed))
        return [_decode(value, detail) for value, detail in zip(outputs, self.outputs)]

    def _resize_dynamic(self, feed: dict) -> None:
        """Inputs declared with dynamic dimensions (-1) take the feed's sizes there."""
        changed = False
        for detail in self.inputs:
            value = np.asarray(feed[detail["name"]])
            signature = tuple(int(n) for n in detail["shape_signature"])
            if (-1 in signature and value.ndim == len(signature) and value.shape != tuple(detail["shape"])
                    and all(s in (-1, v) for s, v in zip(signature, value.shape))):
                self.interpreter.resize_tensor_input(detail["index"], list(value.shape), strict=True)
                changed = True
        if changed:
            try:
                with quiet_stderr():
                    self.interpreter.allocate_tensors()
            except RuntimeError as exc:
                raise EdgeoptError(f"LiteRT cannot run the model at the data's shapes: "
                                   f"{str(exc).strip().splitlines()[0][:200]}") from None
            self.inputs = self.interpreter.get_input_details()
            self.outputs = self.interpreter.get_output_details()

    def _rows(self, feed: dict) -> int:
        self._resize_dynamic(feed)
        rows = set()
        for detail in self.inputs:
            value = np.asarray(feed[detail["name"]])
            expected = tuple(int(n) for n in detail["shape"])
            if value.shape == expected:
                rows.add(1)
            elif expected and expected[0] == 1 and value.shape[1:] == expected[1:]:
                rows.add(value.shape[0])
            else:
                raise EdgeoptError(f"input {detail['name']!r} has shape {value.shape}; the model takes {expected}")
        if len(rows) > 1:
            raise EdgeoptError(f"the inputs hold different numbers of samples: {sorted(rows)}")
        return rows.pop() if rows else 1


def _scale(detail) -> float:
    scale, _ = detail.get("quantization", (0.0, 0))
    return float(scale) if np.dtype(detail["dtype"]).kind in "iu" else 0.0


def _encode(value: np.ndarray, detail) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    scale = _scale(detail)
    if scale:
        zero = detail["quantization"][1]
        info = np.iinfo(dtype)
        # in float32, as edgeopt's quantize and ONNX Runtime's QuantizeLinear divide (float64 rounds
        # a value next to a half step the other way now and then)
        steps = np.asarray(value, np.float32) / np.float32(scale)
        return np.clip(np.rint(steps) + zero, info.min, info.max).astype(dtype)
    return value.astype(dtype, copy=False)


def _decode(value: np.ndarray, detail) -> np.ndarray:
    scale = _scale(detail)
    if scale:
        return ((value.astype(np.float32) - detail["quantization"][1]) * scale).astype(np.float32)
    return value


def delegation(runner: LiteRTRunner) -> dict:
    """How the default delegate (XNNPACK) took the graph: its partitions, and whether one of them
    covers it whole (its inputs are the graph's inputs, its outputs the graph's outputs)."""
    ops = runner.interpreter._get_ops_details()
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    graph_inputs = {d["index"] for d in runner.inputs}
    graph_outputs = {d["index"] for d in runner.outputs}
    constants = {t["index"] for t in runner.interpreter.get_tensor_details()
                 if t["index"] not in graph_inputs and _is_constant(runner, t["index"])}
    whole = (len(delegates) == 1 and set(delegates[0]["outputs"]) == graph_outputs
             and set(delegates[0]["inputs"]) - constants <= graph_inputs)
    return {"partitions": len(delegates), "operators": len(ops) - len(delegates), "whole": whole}


def _is_constant(runner: LiteRTRunner, index: int) -> bool:
    produced = {i for op in runner.interpreter._get_ops_details() if op["op_name"] != "DELEGATE"
                for i in op["outputs"]}
    return index not in produced
