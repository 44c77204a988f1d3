"""Runtimes that measure a model, behind one small protocol (:class:`.base.Runner`).

``evaluate``, ``demo`` and the benchmark open models through :func:`open_runner`; ONNX Runtime
is the first implementation, LiteRT plugs in the same way (``register_runtime``).
"""

from .base import Runner, open_runner, register_runtime

__all__ = ["Runner", "open_runner", "register_runtime"]
