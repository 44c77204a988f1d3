"""ONNX -> ``.tflite``: the model at a static shape, lowered, serialised, checked by reading back."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import onnx

from ..errors import EdgeoptError
from . import schema as fb
from .lower import Lowering
from .static import static_model

logger = logging.getLogger(__name__)

IO_LAYOUTS = ("nchw", "nhwc")


@dataclass(frozen=True)
class TFLiteConfig:
    """How the ONNX model becomes a TFLite one.

    ``io_layout``: ``nchw`` keeps the ONNX model's input and output layout (TRANSPOSE at the
    boundary), ``nhwc`` gives 3-D to 5-D inputs and outputs channels last, as TFLite apps feed
    images. ``input_shapes``: ``{input name: shape}`` for inputs with dynamic dimensions (a dynamic
    first dimension alone becomes 1)."""

    io_layout: str = "nchw"
    input_shapes: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.io_layout not in IO_LAYOUTS:
            raise EdgeoptError(f"io_layout must be one of {', '.join(IO_LAYOUTS)}; got {self.io_layout!r}")
        for name, shape in dict(self.input_shapes).items():
            if not isinstance(name, str) or not all(isinstance(d, int) and d > 0 for d in shape):
                raise EdgeoptError(f"input_shapes must map input names to positive sizes; got {name!r}: {shape!r}")


@dataclass
class TFLiteResult:
    data: bytes
    report: dict

    def save(self, path) -> None:
        from ..model_io import write_bytes_atomic

        write_bytes_atomic(path, self.data)


def export(model, config: TFLiteConfig | None = None) -> TFLiteResult:
    """Lower an ONNX model (path or ``onnx.ModelProto``) to a TFLite model; ``result.save(path)``
    writes it. The same model and config give byte-identical files."""
    from ..model_io import load_model

    config = config or TFLiteConfig()
    if not isinstance(config, TFLiteConfig):
        raise EdgeoptError(f"config must be a TFLiteConfig; got {type(config).__name__}")
    fb.module()  # the extra's absence is an error before any work
    model = load_model(model)
    started = time.perf_counter()
    static = static_model(model, {k: tuple(v) for k, v in dict(config.input_shapes).items()})
    lowering = Lowering(static, config.io_layout)
    data = fb.serialize(lowering.run())
    fb.parse(data, "the TFLite model edgeopt wrote")
    counts: dict[str, int] = {}
    for operator in lowering.builder.operators:
        code = [c for c, i in lowering.builder._codes.items() if i == operator.opcodeIndex][0][0]
        counts[fb.builtin_name(code)] = counts.get(fb.builtin_name(code), 0) + 1
    report = {"format": "tflite", "io_layout": config.io_layout, "operators": dict(sorted(counts.items())),
              "size_bytes": len(data), "seconds": round(time.perf_counter() - started, 3)}
    logger.info("wrote a TFLite model of %d operators (%d bytes)", sum(counts.values()), len(data))
    return TFLiteResult(data, report)
