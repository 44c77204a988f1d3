"""edgeopt: make trained neural networks small and fast for edge devices, and measure it.

    import edgeopt
    result = edgeopt.quantize("model.onnx", edgeopt.Int8Config(), calibration="calibration.npz")
    result.save("model.int8.onnx")
    print(edgeopt.evaluate("model.int8.onnx", "test.npz", reference="model.onnx"))

Heavy dependencies (onnxruntime, torch) load only when a function needs them.
"""

from .api import QuantizationResult, quantize
from .compression.prune import PruningResult, prune
from .config import DynamicConfig, Float16Config, Int8Config, Int16x8Config, PruneConfig, QATConfig
from .data import Dataset, ImagePreprocessing
from .errors import EdgeoptError
from .measure import evaluate
from .quantization.plan import QuantizationPlan, QuantizedConstant
from .quantization.read_plan import read_plan

__version__ = "0.1.0"

__all__ = [
    "Dataset",
    "DynamicConfig",
    "EdgeoptError",
    "Float16Config",
    "ImagePreprocessing",
    "Int8Config",
    "Int16x8Config",
    "PruneConfig",
    "PruningResult",
    "QATConfig",
    "QuantizationPlan",
    "QuantizationResult",
    "QuantizedConstant",
    "evaluate",
    "prune",
    "quantize",
    "read_plan",
]
