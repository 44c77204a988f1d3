"""Kept for old imports: ONNX Runtime sessions now live in :mod:`edgeopt.runtimes.onnxruntime`."""

from .runtimes.onnxruntime import make_session, run_checked

__all__ = ["make_session", "run_checked"]
