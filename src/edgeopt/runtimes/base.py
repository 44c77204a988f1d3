"""The runner protocol and the registry of runtimes. numpy only; runtimes import lazily."""

from __future__ import annotations

import os
import pathlib
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..errors import EdgeoptError


@runtime_checkable
class Runner(Protocol):
    """One loaded model on one runtime, taking and returning float data.

    ``prepare`` turns a float feed into what the runtime takes (an integer-only model's inputs
    are integers), so that timing ``run_prepared`` measures inference alone.
    """

    #: the inputs as the caller feeds them (float for an integer-only model's quantized inputs)
    input_specs: list
    output_names: list[str]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...

    def prepare(self, feed: dict[str, np.ndarray]) -> Any: ...

    def run_prepared(self, prepared: Any) -> Any: ...


#: runtime name -> (file suffixes it opens, factory(model, threads) -> Runner)
_RUNTIMES: dict[str, tuple[tuple[str, ...], Callable[..., Runner]]] = {}


def register_runtime(name: str, suffixes: tuple[str, ...], factory: Callable[..., Runner]) -> None:
    """Make ``open_runner`` open files ending in ``suffixes`` (or ``runtime=name``) with ``factory``."""
    _RUNTIMES[name] = (tuple(s.lower() for s in suffixes), factory)


def open_runner(model, threads: int | None = 1, runtime: str | None = None) -> Runner:
    """A :class:`Runner` for ``model`` (a path, or an in-memory model of the runtime's kind)."""
    _register_builtin()
    if runtime is None:
        runtime = _runtime_for(model)
    if runtime not in _RUNTIMES:
        raise EdgeoptError(f"unknown runtime {runtime!r}; expected one of {', '.join(sorted(_RUNTIMES))}")
    return _RUNTIMES[runtime][1](model, threads)


def _runtime_for(model) -> str:
    if not isinstance(model, (str, os.PathLike)):
        return "onnxruntime"
    suffix = pathlib.Path(model).suffix.lower()
    for name, (suffixes, _) in _RUNTIMES.items():
        if suffix in suffixes:
            return name
    known = sorted(s for suffixes, _ in _RUNTIMES.values() for s in suffixes)
    raise EdgeoptError(f"{model}: no runtime opens {suffix or 'files without a suffix'}; expected one of {known}")


def _register_builtin() -> None:
    if "onnxruntime" not in _RUNTIMES:
        from .onnxruntime import OnnxRuntimeRunner

        register_runtime("onnxruntime", (".onnx",), OnnxRuntimeRunner.open)
    if "litert" not in _RUNTIMES:
        from .litert import LiteRTRunner

        register_runtime("litert", (".tflite",), LiteRTRunner.open)
