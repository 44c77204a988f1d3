"""Operator versions as LiteRT's versioning rules assign them (the first matching rule wins).

An interpreter refuses an operator whose version it does not register, and a version that is
too low can select a kernel without a feature the model uses; edgeopt writes exactly the version
the reference converter would. Each entry is ``op -> rule(signature) -> version`` over the types
of the operator's tensors and a few flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_I8, _I16, _F32, _F16, _U8 = (np.dtype(t) for t in (np.int8, np.int16, np.float32, np.float16, np.uint8))


@dataclass(frozen=True)
class Signature:
    """The types of an operator's first inputs and output, and flags that raise versions."""

    inputs: tuple  # numpy dtypes (None for an absent optional input)
    output: np.dtype | None
    flags: dict = field(default_factory=dict)
    max_rank: int = 4
    per_channel: bool = False

    def input(self, index: int):
        return self.inputs[index] if index < len(self.inputs) else None


def _by_type(int8: int, int16: int, default: int = 1):
    return lambda s: int16 if s.input(0) == _I16 else int8 if s.input(0) in (_I8,) else default


def _conv(s: Signature) -> int:
    if s.flags.get("grouped"):
        return 6
    if (s.input(0), s.input(1)) == (_I8, _I8):
        return 3
    if s.input(0) == _F32 and s.input(1) == _I8:
        return 5 if s.per_channel else 2
    return 1


def _depthwise(s: Signature) -> int:
    if (s.input(0), s.input(1)) == (_I8, _I8):
        return 3
    if s.input(0) == _F32 and s.input(1) == _I8:
        return 6 if s.per_channel else 4
    return 2 if s.flags.get("dilated") else 1


def _fully_connected(s: Signature) -> int:
    if s.input(0) == _F32 and s.input(1) == _I8 and s.per_channel:
        return 12
    if s.flags.get("keep_num_dims"):
        return 5
    if (s.input(0), s.input(1)) == (_I8, _I8):
        return 4
    if s.input(0) == _F32 and s.input(1) == _I8:
        return 9 if s.flags.get("asymmetric_quantize_inputs") else 3
    return 1


def _mul(s: Signature) -> int:
    if s.input(0) == _I16:
        return 4
    if s.input(0) == _I8:
        return 3 if s.flags.get("rescale_at_least_one") else 2
    return 1


def _transpose(s: Signature) -> int:
    if s.max_rank > 5:
        return 6
    if s.input(0) == _I16:
        return 5
    if s.max_rank > 4:
        return 4
    return 2 if s.input(0) == _I8 else 1


def _resize(nearest: bool):
    def rule(s: Signature) -> int:
        if s.input(0) == _I16:
            return 4
        if s.flags.get("half_pixel") or (nearest and s.flags.get("align_corners")):
            return 3
        return 2 if s.input(0) == _I8 else 1
    return rule


def _dequantize(s: Signature) -> int:
    source = s.input(0)
    if source == _F16 or source == _I16:
        return 3
    if source == _I8:
        return 5 if s.per_channel else 2
    return 1


def _quantize(s: Signature) -> int:
    if s.per_channel:
        return 3
    return 2 if s.output == _I16 else 1


def _ranked(rank_limit_version: int, int8: int, int16: int):
    return lambda s: rank_limit_version if s.max_rank > 4 else _by_type(int8, int16)(s)


def _batch_matmul(s: Signature) -> int:
    if s.input(0) == _I16:
        return 3
    if s.input(0) == _I8:
        return 2
    return 4 if s.flags.get("asymmetric_quantize_inputs") else 1


RULES = {
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _depthwise, "FULLY_CONNECTED": _fully_connected,
    "BATCH_MATMUL": _batch_matmul, "ADD": _by_type(2, 3), "SUB": _by_type(2, 5), "MUL": _mul,
    "DIV": lambda s: 2 if s.max_rank > 4 else 1, "CONCATENATION": _by_type(2, 3),
    "AVERAGE_POOL_2D": _by_type(2, 3), "MAX_POOL_2D": _by_type(2, 3), "MEAN": _by_type(2, 3),
    "SOFTMAX": _by_type(2, 3), "RELU6": _by_type(2, 3), "RELU": _by_type(2, 3), "LOGISTIC": _by_type(2, 3),
    "TANH": _by_type(2, 3), "GELU": _by_type(2, 1), "LEAKY_RELU": _by_type(1, 2), "TRANSPOSE": _transpose,
    "PAD": _ranked(4, 2, 3), "PADV2": _ranked(4, 2, 3), "SLICE": _ranked(5, 2, 4),
    "STRIDED_SLICE": lambda s: 4 if s.max_rank > 4 else _by_type(2, 1)(s), "SPLIT_V": _by_type(2, 3), "SPLIT": _by_type(2, 4),
    "GATHER": _by_type(2, 4), "RESIZE_BILINEAR": _resize(False), "RESIZE_NEAREST_NEIGHBOR": _resize(True),
    "DEQUANTIZE": _dequantize, "QUANTIZE": _quantize, "MAXIMUM": _by_type(2, 4), "MINIMUM": _by_type(2, 4),
    "REDUCE_MAX": _by_type(2, 3), "SUM": _by_type(2, 3), "LOG_SOFTMAX": _by_type(2, 1),
}


def version(op: str, signature: Signature) -> int:
    """The version of ``op`` for ``signature`` (1 for operators whose version never changes here)."""
    rule = RULES.get(op)
    return rule(signature) if rule is not None else 1
