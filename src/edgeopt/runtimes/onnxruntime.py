"""ONNX Runtime: sessions (imported lazily, so that ``import edgeopt`` stays light) and its runner."""

from __future__ import annotations

import os

import numpy as np
import onnx

from .. import external_data
from ..errors import EdgeoptError


def make_session(model: "onnx.ModelProto | bytes | str | os.PathLike", threads: int | None = None,
                 optimize: bool = True, arena: bool = True):
    """A CPU session of a model, its serialised bytes or its path; ``arena=False`` returns each
    run's memory instead of keeping the largest run's (calibration, whose runs return every
    intermediate tensor)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = arena
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if isinstance(model, onnx.ModelProto) and external_data.too_large(model):
        source, names, arrays = external_data.session_parts(model)
        values = [ort.OrtValue.ortvalue_from_numpy(array) for array in arrays]
        options.add_external_initializers(names, values)
        session = _session(source, options)
        session.edgeopt_initializers = values  # ONNX Runtime reads them in place: they live as long as it
        return session
    if isinstance(model, bytes):
        return _session(model, options)
    return _session(model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model), options)


def _session(source, options):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EdgeoptError(f"ONNX Runtime cannot load the model: {_first_line(exc)[:240]}") from None


def run_checked(session, names, feed, where: str) -> list:
    """``session.run`` with the runtime's complaints about the data turned into one-line errors."""
    try:
        return session.run(names, feed)
    except Exception as exc:
        raise EdgeoptError(f"{where} does not run through the model: {_first_line(exc)[:240]}") from None


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _io_quant_params(entry: dict):
    """The QuantParams an integer-only model's ``edgeopt.io.<name>`` metadata entry describes."""
    from ..quantization.numerics import QuantParams

    return QuantParams(np.float32(entry["scale"]), np.array(entry["zero_point"], dtype=entry["dtype"]), entry["dtype"])


def encode_feed(feed: dict, io_params: dict) -> dict:
    """Float inputs to the integers an integer-only model takes (its stored scales)."""
    from ..quantization.numerics import quantize

    return {name: quantize(value, _io_quant_params(io_params[name]))
            if io_params.get(name, {}).get("role") == "input" else value for name, value in feed.items()}


def decode_outputs(outputs: list, names: list[str], io_params: dict) -> list:
    """An integer-only model's integer outputs back to float."""
    from ..quantization.numerics import dequantize

    return [dequantize(value, _io_quant_params(io_params[name]))
            if io_params.get(name, {}).get("role") == "output" else value for name, value in zip(names, outputs)]


class OnnxRuntimeRunner:
    """One ONNX Runtime session that takes and returns float data, integer-only models included."""

    def __init__(self, model: onnx.ModelProto, threads: int | None = 1, optimize: bool = True):
        from ..data import input_specs
        from ..quantization.integer_io import read_io_params

        self.io_params = read_io_params(model)
        self.session = make_session(model, threads=threads, optimize=optimize)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.input_specs = input_specs(model)
        if self.io_params:
            self.input_specs = [s.__class__(s.name, np.dtype(np.float32) if s.name in self.io_params else s.dtype,
                                            s.shape) for s in self.input_specs]

    @classmethod
    def open(cls, model, threads: int | None = 1) -> "OnnxRuntimeRunner":
        from ..model_io import load_model

        return cls(load_model(model), threads)

    def prepare(self, feed: dict) -> dict:
        return encode_feed(feed, self.io_params) if self.io_params else feed

    def run_prepared(self, prepared: dict) -> list:
        return run_checked(self.session, None, prepared, "the data")

    def run(self, feed: dict) -> list:
        outputs = self.run_prepared(self.prepare(feed))
        return decode_outputs(outputs, self.output_names, self.io_params) if self.io_params else outputs
