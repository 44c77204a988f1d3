"""ONNX operator -> TFLite operators, one converter function per ONNX type.

A converter takes the :class:`..lower.Lowering` and one node, asks for its inputs with
``lowering.value(name, layout)``, declares its outputs with ``lowering.output(name, layout)``
and adds TFLite operators through ``lowering.builder``. An operator without a converter is an
error naming it and listing those that have one.
"""

from __future__ import annotations

from collections.abc import Callable

from ...errors import EdgeoptError

_CONVERTERS: dict[str, Callable] = {}


def converter(*op_types: str):
    """Register the decorated function as the converter of ``op_types``."""
    def register(function):
        for op_type in op_types:
            _CONVERTERS[op_type] = function
        return function
    return register


def supported() -> list[str]:
    _load()
    return sorted(_CONVERTERS)


def converter_for(node) -> Callable:
    _load()
    if node.domain not in ("", "ai.onnx") or node.op_type not in _CONVERTERS:
        where = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
        raise EdgeoptError(f"the TFLite writer does not support the operator {where}{node.op_type} "
                           f"(node {node.name!r}); supported: {', '.join(supported())}")
    return _CONVERTERS[node.op_type]


def _load() -> None:
    from . import axis, conv, elementwise, linear, pool, reshape, resize  # noqa: F401  (they register)
