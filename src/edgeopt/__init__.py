"""edgeopt: make trained neural networks small and fast for edge devices, and measure it.

    import edgeopt
    result = edgeopt.quantize("model.onnx", edgeopt.Int8Config(), calibration="calibration.npz")
    result.save("model.int8.onnx")
    print(edgeopt.evaluate("model.int8.onnx", "test.npz", reference="model.onnx"))

Heavy dependencies (onnxruntime, torch) load only when a function needs them.
"""

from .api import QuantizationResult, quantize
from .compression.cluster import cluster
from .compression.layers import CompressionResult
from .compression.prune import prune
from .compression.schedules import ConstantSparsity, PolynomialDecay
from .config import (
    ChannelPruneConfig,
    ClusterConfig,
    DynamicConfig,
    Float16Config,
    Int8Config,
    Int16x8Config,
    PruneConfig,
    QATConfig,
)
from .data import Dataset, ImagePreprocessing
from .errors import EdgeoptError
from .measure import evaluate
from .quantization.plan import QuantizationPlan, QuantizedConstant
from .quantization.read_plan import read_plan
from .tflite.export import TFLiteConfig, TFLiteResult, export

__version__ = "0.1.0"

#: the name ``edgeopt.prune`` returned its result under before clustering shared it
PruningResult = CompressionResult

__all__ = [
    "ChannelPruneConfig",
    "ClusterConfig",
    "CompressionResult",
    "ConstantSparsity",
    "Dataset",
    "DynamicConfig",
    "EdgeoptError",
    "Float16Config",
    "ImagePreprocessing",
    "Int8Config",
    "Int16x8Config",
    "PolynomialDecay",
    "PruneConfig",
    "PruningResult",
    "QATConfig",
    "QuantizationPlan",
    "QuantizationResult",
    "QuantizedConstant",
    "TFLiteConfig",
    "TFLiteResult",
    "cluster",
    "evaluate",
    "export",
    "prune",
    "quantize",
    "read_plan",
]
