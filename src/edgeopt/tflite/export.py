"""ONNX -> ``.tflite``: the model at a static shape, lowered, serialised, checked by reading back."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

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
    #: an int8 model's inputs and outputs become int8 too (a plan made integer-only always does)
    integer_only: bool = False

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
    shapes = {k: tuple(v) for k, v in dict(config.input_shapes).items()}
    plan = _plan_of(model)
    if plan is not None:
        lowering = _quantized_lowering(model, plan, shapes, config)
    else:
        lowering = _float_lowering(model, shapes, config)
    data = fb.serialize(lowering.run())
    _check_written(data)
    counts = lowering.builder.operator_counts()
    report = {"format": "tflite", "io_layout": config.io_layout, "operators": counts,
              "quantized": plan is not None, "integer_only": lowering.integer_only,
              "size_bytes": len(data), "seconds": round(time.perf_counter() - started, 3)}
    logger.info("wrote a TFLite model of %d operators (%d bytes)", sum(counts.values()), len(data))
    return TFLiteResult(data, report)


def _plan_of(model):
    """The plan of a QDQ model edgeopt wrote (None for a float model); other quantized models are
    refused with what was found."""
    from ..api import QUANTIZED_OPERATORS, _is_qdq
    from ..quantization.read_plan import read_plan

    if _is_qdq(model):
        return read_plan(model)
    found = sorted({node.op_type for node in model.graph.node} & QUANTIZED_OPERATORS)
    ours_dynamic = set(found) <= {"MatMulInteger", "DynamicQuantizeLinear"} and all(
        node.name.endswith("_MatMulInteger") for node in model.graph.node if node.op_type == "MatMulInteger")
    if found and not ours_dynamic:
        raise EdgeoptError(f"the model is quantized ({', '.join(found)}) but not by edgeopt; the TFLite writer takes "
                           "float models and edgeopt's QDQ models (quantize the float model with edgeopt)")
    return None


def _quantized_lowering(model, plan, shapes, config: TFLiteConfig) -> Lowering:
    """The lowering of an edgeopt QDQ model: its float graph, and the plan its pairs describe."""
    import onnx

    from ..quantization.strip import strip_qdq
    from .quantized import QuantizedTensors

    stripped = onnx.ModelProto()
    stripped.CopyFrom(model)
    if plan.integer_only:
        from .integer_io import as_float_io

        as_float_io(stripped)
    strip_qdq(stripped)
    static = static_model(stripped, shapes, fold_float=False)
    return Lowering(static, config.io_layout, QuantizedTensors(plan), integer_only=config.integer_only or plan.integer_only)


def float16_weights(model) -> set[str]:
    """Tensors edgeopt's float16 mode stores as float16 initializers read through a Cast to float:
    they stay float16 in the TFLite file (read through DEQUANTIZE)."""
    import onnx

    halves = {init.name for init in model.graph.initializer if init.data_type == onnx.TensorProto.FLOAT16}
    return {node.output[0] for node in model.graph.node
            if node.op_type == "Cast" and node.input and node.input[0] in halves
            and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)}


def _check_written(data: bytes) -> None:
    """Every file edgeopt writes follows the specification (:mod:`.validate`), warnings included."""
    from .validate import validate

    found = validate(data, "the TFLite model edgeopt wrote")
    if found:
        raise EdgeoptError(f"internal: the TFLite model edgeopt wrote breaks {len(found)} rule(s) of the TFLite "
                           f"specification, first: {found[0]}; please report this with the model")


def _float_lowering(model, shapes, config: TFLiteConfig) -> Lowering:
    """A float model's lowering; float16 and int8 (dynamic range) weights stay as stored."""
    import onnx

    from . import dynamic
    from .patterns import fuse_erf_gelu

    float16, int8 = float16_weights(model), {}
    if dynamic.is_dynamic(model):
        edited = onnx.ModelProto()
        edited.CopyFrom(model)
        int8 = dynamic.int8_weights(edited)
        model = edited
    static = static_model(model, shapes)
    fuse_erf_gelu(static.model)
    lowering = Lowering(static, config.io_layout)
    lowering.float16_weights, lowering.int8_weights = float16, int8
    return lowering
