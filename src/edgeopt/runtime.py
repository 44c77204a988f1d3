"""ONNX Runtime sessions, imported lazily so that ``import edgeopt`` stays light."""

from __future__ import annotations

import os

import onnx


def make_session(model: "onnx.ModelProto | str | os.PathLike", threads: int | None = None,
                 optimize: bool = True):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        from .errors import EdgeoptError

        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeoptError(f"ONNX Runtime cannot load the model: {message[:240]}") from None


def run_checked(session, names, feed, where: str) -> list:
    """``session.run`` with the runtime's complaints about the data turned into one-line errors."""
    try:
        return session.run(names, feed)
    except Exception as exc:
        from .errors import EdgeoptError

        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EdgeoptError(f"{where} does not run through the model: {message[:240]}") from None
