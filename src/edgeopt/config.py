"""Configuration objects: one frozen dataclass per technique, serialisable with a type and version.

Pass one to :func:`edgeopt.quantize`. Unknown keys and out-of-range values are errors.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from dataclasses import dataclass

from .compression.schedules import schedule_from
from .errors import EdgeoptError
from .quantization.calibration import CALIBRATION_METHODS
from .quantization.saturation import WEIGHT_RANGE_CHOICES

CONFIG_VERSION = 4
#: Keys an older config dict may lack, with the behaviour it had: version 2 added int8's ``scope``
#: and made ``auto`` the default calibration method; version 3 added ``weight_range`` ("safe" by
#: default; before, weights used the full range) and raised int8's ``target_cosine`` to 0.98;
#: version 4 made "safe" limit the pairs x86 kernels add instead of every weight (version 3's
#: "safe", [-64, 64], is now called "half").
_OLD_DEFAULTS = {
    1: {"Int8Config": {"scope": "all", "calibration_method": "percentile", "weight_range": "full",
                       "target_cosine": 0.97},
        "Int16x8Config": {"scope": "all", "weight_range": "full"}, "DynamicConfig": {"weight_range": "full"}},
    2: {"Int8Config": {"weight_range": "full", "target_cosine": 0.97}, "Int16x8Config": {"weight_range": "full"},
        "DynamicConfig": {"weight_range": "full"}},
    3: {"Int8Config": {"weight_range": "half"}, "DynamicConfig": {"weight_range": "half"}},
}
#: Values an older config dict spelled differently: key -> {old value: value now}.
_RENAMED = {3: {"weight_range": {"safe": "half"}}}
ACTIVATION_GRANULARITIES = ("row", "tensor")
QAT_STARTS = ("post-training", "float")
QAT_PRESERVABLE = ("sparsity", "clusters")
# WEIGHT_RANGE_CHOICES: "safe" (exact on every x86 CPU), "half" ([-64, 64]) or "full"
# ([-127, 127]); defined with the arithmetic in quantization.saturation.
WEIGHT_ROUNDINGS = ("compensated", "nearest")
#: ``auto`` tries these methods and keeps the one with the lowest output error on the check samples.
AUTO_CALIBRATION_METHODS = ("percentile", "mse", "entropy", "minmax")
#: the method that clips nothing (what the fallback is tried on again, see ``api._search_scopes``)
FULL_RANGE_METHOD = "minmax"
CALIBRATION_CHOICES = ("auto",) + CALIBRATION_METHODS
#: ``all``: every operator with an integer kernel; ``matmul-inputs``: only the inputs of MatMul/Gemm
#: with constant weights; ``auto``: ``all``, or ``matmul-inputs`` where that misses the target on a
#: model without convolutions.
SCOPES = ("auto", "all", "matmul-inputs")


@dataclass(frozen=True)
class _Config:
    #: Node names or operator types to keep in float. A name that matches nothing is an error.
    exclude: tuple[str, ...] = ()

    mode = ""

    def __post_init__(self):
        if isinstance(self.exclude, str) or not all(isinstance(e, str) for e in self.exclude):
            raise EdgeoptError(f"exclude must be a list of node names or operator types, got {self.exclude!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def to_dict(self) -> dict:
        fields = dataclasses.asdict(self)
        fields["exclude"] = list(self.exclude)
        return {"type": type(self).__name__, "version": CONFIG_VERSION, **fields}

    @classmethod
    def from_dict(cls, data: dict) -> _Config:
        data = dict(data)
        kind = data.pop("type", cls.__name__)
        version = data.pop("version", CONFIG_VERSION)
        target = _CONFIG_TYPES.get(kind)
        if target is None or (cls is not _Config and target is not cls):
            raise EdgeoptError(f"unknown config type {kind!r}; expected one of {sorted(_CONFIG_TYPES)}")
        if version not in (*_OLD_DEFAULTS, CONFIG_VERSION):
            raise EdgeoptError(f"config version {version} is not supported; expected 1 to {CONFIG_VERSION}")
        data = {**_OLD_DEFAULTS.get(version, {}).get(kind, {}), **data}
        for old, renamed in _RENAMED.items():
            if version <= old:
                data.update({key: values.get(data[key], data[key]) for key, values in renamed.items() if key in data})
        names = {f.name for f in dataclasses.fields(target)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise EdgeoptError(f"unknown {kind} keys {unknown}; expected some of {sorted(names)}")
        if "exclude" in data:
            data["exclude"] = tuple(data["exclude"])
        return target(**data)


@dataclass(frozen=True)
class Float16Config(_Config):
    """Float16 weights: about half the size, latency that of float.

    ONNX Runtime's x86 CPU kernels compute in float32, so the weights are stored as float16 and
    widened once when the session loads: the file halves, latency stays that of float.
    """

    #: Tensors with fewer elements stay float32: biases, depthwise and first-layer kernels, where a
    #: rounded weight is not averaged over a long dot product. They are a few percent of a CNN's
    #: file and most of its float16 error: MobileNetV2-Fashion's float16 .tflite moves the worst
    #: logit by 2.3e-2 of the largest with 16 (which stores nearly everything), by 7.1e-4 with
    #: 4096, at 1.7% more bytes (the float16 row of ``python -m benchmarks.tflite``, 16 inputs).
    min_elements: int = 4096
    mode = "float16"

    def __post_init__(self):
        super().__post_init__()
        if self.min_elements < 1:
            raise EdgeoptError(f"min_elements must be >= 1, got {self.min_elements}")


@dataclass(frozen=True)
class DynamicConfig(_Config):
    """Dynamic range: int8 weights, activations quantized at run time. Needs no data.

    MatMul and Gemm run integer kernels on activations quantized per inference; convolutions keep
    int8 weights on disk only (ONNX Runtime's run-time-quantized convolution is many times slower
    than float on x86), which still gives the 4x smaller file.
    """

    per_channel: bool = True
    #: Weights with fewer elements stay float.
    min_elements: int = 256
    #: ``"row"``: each row of a MatMul input (one token, one sample) gets its own uint8 range, as
    #: TFLite's hybrid kernels do; a sample's result then does not depend on the rest of its batch.
    #: ``"tensor"``: one range per input tensor (ONNX Runtime's ``DynamicQuantizeLinear``; fewer
    #: operators, coarser).
    activation_granularity: str = "row"
    #: ``"safe"``: int8 weights whose neighbouring pairs x86 CPUs without VNNI (AVX2) add in 16 bits
    #: cannot overflow; ``"half"``: [-64, 64], exact whatever the kernel pairs; ``"full"``:
    #: [-127, 127], for CPUs with VNNI, ARM, or a runtime that accumulates in 32 bits.
    weight_range: str = "safe"
    mode = "dynamic"

    def __post_init__(self):
        super().__post_init__()
        _check_weight_range(self.weight_range)
        if self.activation_granularity not in ACTIVATION_GRANULARITIES:
            raise EdgeoptError(f"activation_granularity must be one of {', '.join(ACTIVATION_GRANULARITIES)}, "
                               f"got {self.activation_granularity!r}")
        if self.min_elements < 1:
            raise EdgeoptError(f"min_elements must be >= 1, got {self.min_elements}")


@dataclass(frozen=True)
class Int8Config(_Config):
    """Full-integer static quantization from a representative data set.

    int8 weights (symmetric, per output channel unless ``per_channel=False``), activations per
    tensor with ranges from calibration. ``activation_type="uint8"`` is what ONNX Runtime's x86
    integer kernels need to be fast; ``"int8"`` follows TFLite's spec. With ``integer_only`` the
    model's inputs and outputs become integers and a float operator left anywhere is an error
    (what Edge TPU-class accelerators require). With ``fallback`` the tensors that cost the most
    accuracy stay float until the worst output cosine on calibration data reaches
    ``target_cosine``.
    """

    #: ``"auto"`` builds the model with each of percentile, mse, entropy and minmax ranges and keeps
    #: the one whose outputs are closest to float on the check samples.
    calibration_method: str = "auto"
    #: What is quantized: see ``SCOPES``.
    scope: str = "auto"
    percentile: float = 99.99
    per_channel: bool = True
    activation_type: str = "uint8"
    integer_only: bool = False
    fallback: bool = True
    #: The worst output's cosine to float on the check samples (pooled over them) the fallback
    #: aims for. 0.98: held-out inputs came out up to 0.02 below the check samples on the
    #: third-party suite, and 0.97 is the bound there.
    target_cosine: float = 0.98
    #: Subtract the mean shift int8 weights cause from each Conv/Gemm bias (from calibration means).
    bias_correction: bool = True
    #: ``"compensated"``: int8 weights rounded for the layer's output on calibration data (GPTQ-style,
    #: kept only when it lowers the measured output error); ``"nearest"``: each weight on its own.
    weight_rounding: str = "compensated"
    #: At most this share of the activation tensors may stay float (the speed-up survives).
    fallback_max_fraction: float = 0.1
    max_calibration_samples: int | None = None
    #: Report where the error comes from even when the target is met (per-layer error attribution,
    #: one simulated run per block of tensors; the fallback computes it anyway when it runs).
    attribution: bool = False
    #: ``"safe"``: exact on every x86 CPU, including AVX2 ones without VNNI, whose uint8 x int8
    #: instruction adds pairs of products in 16 bits and saturates: each weight in [-127, 127] and
    #: each pair it adds within 128 in magnitude (:mod:`.quantization.saturation`); ``"half"``:
    #: [-64, 64], exact whatever the kernel pairs; ``"full"``: [-127, 127], for CPUs with VNNI,
    #: ARM, or LiteRT/XNNPACK.
    weight_range: str = "safe"
    #: One scale for the two activations an Add sums and its result (each keeps its zero point),
    #: so the Add needs no rescaling and every runtime computes the same integers: LiteRT's
    #: XNNPACK then matches ONNX Runtime on residual networks (``python -m benchmarks.tflite``).
    #: Costs resolution on the narrower operands.
    shared_add_scale: bool = False
    mode = "int8"

    def __post_init__(self):
        super().__post_init__()
        _check_weight_range(self.weight_range)
        if self.calibration_method not in CALIBRATION_CHOICES:
            raise EdgeoptError(f"unknown calibration method {self.calibration_method!r}; "
                               f"expected one of {', '.join(CALIBRATION_CHOICES)}")
        if self.scope not in SCOPES:
            raise EdgeoptError(f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if self.scope == "matmul-inputs" and (self.integer_only or self.activation_type == "int16"):
            raise EdgeoptError("scope 'matmul-inputs' leaves float operators and needs 8-bit activations: "
                               "it cannot be combined with integer_only or int16x8")
        if not 50.0 < self.percentile <= 100.0:
            raise EdgeoptError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.activation_type not in self._activation_types():
            raise EdgeoptError(f"activation_type must be one of {self._activation_types()}, "
                               f"got {self.activation_type!r}")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise EdgeoptError(f"weight_rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, "
                               f"got {self.weight_rounding!r}")
        if not 0.0 <= self.fallback_max_fraction <= 1.0:
            raise EdgeoptError(f"fallback_max_fraction must be in [0, 1], got {self.fallback_max_fraction}")
        if not 0.0 < self.target_cosine <= 1.0:
            raise EdgeoptError(f"target_cosine must be in (0, 1], got {self.target_cosine}")
        if self.max_calibration_samples is not None and self.max_calibration_samples < 1:
            raise EdgeoptError(f"max_calibration_samples must be >= 1, got {self.max_calibration_samples}")

    @staticmethod
    def _activation_types():
        return ("uint8", "int8")


@dataclass(frozen=True)
class Int16x8Config(Int8Config):
    """16-bit activations (symmetric) with 8-bit weights, for activations int8 cannot hold.

    Much closer to float than int8; ONNX Runtime has no 16-bit integer kernels on x86, so this is
    a size (and accelerator) format, not a CPU speed-up.
    """

    calibration_method: str = "minmax"
    scope: str = "all"
    activation_type: str = "int16"
    target_cosine: float = 0.995
    #: no 16-bit integer kernels on x86, so no 16-bit pair sums to overflow
    weight_range: str = "full"
    mode = "int16x8"

    @staticmethod
    def _activation_types():
        return ("int16",)


@dataclass(frozen=True)
class QATConfig(_Config):
    """Quantization-aware training (``edgeopt.torch.prepare_qat``, the ``torch`` extra).

    The float model is exported to ONNX and quantized post-training with these settings (no
    fallback: training adapts the weights instead); the result's plan places the fake quantizers
    and gives their starting ranges, and with ``start="post-training"`` the starting weights. A *step* is one
    training-mode forward pass of the prepared model.
    """

    calibration_method: str = "auto"
    #: ``"all"`` or ``"matmul-inputs"`` (see ``SCOPES``; ``auto`` is not a choice here: there is no
    #: target to measure a scope against before training)
    scope: str = "all"
    percentile: float = 99.99
    per_channel: bool = True
    activation_type: str = "uint8"
    #: the exported model can be rebuilt integer-only (every operator fake-quantized)
    integer_only: bool = False
    weight_range: str = "safe"
    max_calibration_samples: int | None = None
    #: weight of the newest batch in the activation ranges' moving min/max
    observer_momentum: float = 0.01
    #: stop moving the activation ranges after this many steps (None: never)
    freeze_observers_after: int | None = None
    #: use the BatchNorm running statistics (and stop updating them) after this many steps
    freeze_bn_after: int | None = None
    #: learn the activation scales by gradient (LSQ, Esser et al. 2020) instead of moving min/max
    learn_scales: bool = False
    #: ``"post-training"``: training starts from edgeopt's post-training int8 model (compensated
    #: rounding and bias correction: the weights and biases are set to the ones it stores);
    #: ``"float"``: from the float weights, rounded to nearest
    start: str = "post-training"
    #: the structure of a pruned or clustered model kept through training and into the int8 file
    #: (``edgeopt.torch.preserve``): ``"sparsity"`` (every exact zero stays zero), ``"clusters"``
    #: (weights sharing a value keep sharing one); empty: neither
    preserve: tuple[str, ...] = ("sparsity", "clusters")
    mode = "qat"

    def __post_init__(self):
        super().__post_init__()
        if self.scope not in ("all", "matmul-inputs"):
            raise EdgeoptError(f"QAT scope must be 'all' or 'matmul-inputs', got {self.scope!r}")
        if not 0.0 < self.observer_momentum <= 1.0:
            raise EdgeoptError(f"observer_momentum must be in (0, 1], got {self.observer_momentum}")
        for name in ("freeze_observers_after", "freeze_bn_after"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise EdgeoptError(f"{name} must be a step count >= 0 or None, got {value!r}")
        if self.start not in QAT_STARTS:
            raise EdgeoptError(f"start must be one of {', '.join(QAT_STARTS)}, got {self.start!r}")
        if not isinstance(self.preserve, (tuple, list)) or not all(item in QAT_PRESERVABLE for item in self.preserve):
            raise EdgeoptError(f"preserve must be a list of {', '.join(QAT_PRESERVABLE)}, got {self.preserve!r}")
        object.__setattr__(self, "preserve", tuple(self.preserve))
        self.int8_config()  # the post-training settings are checked as Int8Config checks them

    def int8_config(self) -> Int8Config:
        """The post-training quantization that gives the starting plan."""
        return Int8Config(calibration_method=self.calibration_method, scope=self.scope, percentile=self.percentile,
                          per_channel=self.per_channel, activation_type=self.activation_type,
                          integer_only=self.integer_only, fallback=False,
                          bias_correction=self.start == "post-training",
                          weight_rounding="compensated" if self.start == "post-training" else "nearest",
                          max_calibration_samples=self.max_calibration_samples,
                          weight_range=self.weight_range, exclude=self.exclude)


def _check_weight_range(value: str) -> None:
    if value not in WEIGHT_RANGE_CHOICES:
        raise EdgeoptError(f"weight_range must be one of {', '.join(WEIGHT_RANGE_CHOICES)}, got {value!r}")


#: Weight patterns pruning knows: any weight, blocks of 1 x 4 (one output, four consecutive
#: inputs) or 4 x 1 (four outputs, one input), or "N:M" (N kept in each M consecutive inputs).
PRUNE_PATTERNS = ("unstructured", "1x4", "4x1")
PRUNE_METHODS = ("auto", "magnitude", "data-aware")
PRUNE_RANKINGS = ("layer", "global")


@dataclass(frozen=True)
class PruneConfig(_Config):
    """One-shot pruning of an ONNX model's Conv, Gemm and MatMul weights (``edgeopt.prune``).

    ``method="magnitude"`` zeroes the weights of smallest magnitude; ``"data-aware"`` (needs
    calibration data) ranks them by how much removing each changes the layer's output and moves
    the weights that stay to make up for the ones removed (Optimal Brain Surgeon, in SparseGPT's
    blocked form, on the input second moments int8's compensated rounding also uses); ``"auto"``
    is data-aware when data is given. ``exclude`` names nodes or operator types to leave dense.
    """

    #: fraction of each selected weight set to zero, in [0, 1); ignored for an N:M pattern
    sparsity: float = 0.5
    #: ``"unstructured"``, ``"1x4"``, ``"4x1"`` or ``"N:M"`` such as ``"2:4"`` (along input channels)
    pattern: str = "unstructured"
    method: str = "auto"
    #: ``"layer"``: each weight gets ``sparsity``; ``"global"`` (unstructured): ``sparsity`` of all
    #: the weights together, by one magnitude threshold, or with data by each weight's output cost
    #: relative to its layer's output (each layer then pruned data-aware at its share)
    ranking: str = "layer"
    #: node-name patterns (``fnmatch``) or operator types to prune; empty: every Conv, Gemm, MatMul
    #: (in PyTorch: module names or class names such as ``Conv2d``)
    layers: tuple[str, ...] = ()
    #: per-layer targets, pattern -> sparsity, overriding ``sparsity`` for the layers it matches
    #: (the first matching pattern wins; a pattern matching nothing is an error)
    layer_sparsity: dict = dataclasses.field(default_factory=dict)
    #: prune depthwise convolutions too: they hold few weights (9 per channel for 3 x 3) and each
    #: one removed costs the most (MobileNetV2-Fashion at 50%, one-shot data-aware: 89.06% top-1
    #: with them, 90.29% without, against 91.66% float)
    depthwise: bool = False
    max_calibration_samples: int | None = 256
    #: training-time pruning only (``edgeopt.torch.prepare_pruning``): how sparsity rises over the
    #: steps, a :class:`~edgeopt.ConstantSparsity` or :class:`~edgeopt.PolynomialDecay`; None:
    #: ``ConstantSparsity()`` (the target from the first step)
    schedule: object = None
    mode = "prune"

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= float(self.sparsity) < 1.0:
            raise EdgeoptError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        n_of_m(self.pattern)  # checks the pattern
        if self.method not in PRUNE_METHODS:
            raise EdgeoptError(f"method must be one of {', '.join(PRUNE_METHODS)}, got {self.method!r}")
        if self.ranking not in PRUNE_RANKINGS:
            raise EdgeoptError(f"ranking must be one of {', '.join(PRUNE_RANKINGS)}, got {self.ranking!r}")
        if self.ranking == "global" and self.pattern != "unstructured":
            raise EdgeoptError("ranking='global' is for unstructured pruning (an N:M or block pattern sets each "
                               "group's share); expected ranking='layer'")
        if isinstance(self.layers, str) or not all(isinstance(item, str) for item in self.layers):
            raise EdgeoptError(f"layers must be a list of node-name patterns or operator types, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_sample_limit(self.max_calibration_samples)
        _check_layer_targets(self.layer_sparsity)
        if self.ranking == "global" and self.layer_sparsity:
            raise EdgeoptError("layer_sparsity sets each layer's own target; ranking='global' ranks all layers "
                               "together: expected one of the two")
        if not isinstance(self.depthwise, bool):
            raise EdgeoptError(f"depthwise must be True or False, got {self.depthwise!r}")
        object.__setattr__(self, "schedule", schedule_from(self.schedule))

    def sparsity_for(self, name: str, kind: str) -> float:
        """The target of the layer called ``name`` of operator or class ``kind``."""
        for pattern, value in self.layer_sparsity.items():
            if pattern == kind or fnmatch.fnmatchcase(name, pattern):
                return float(value)
        return float(self.sparsity)

    def to_dict(self) -> dict:
        schedule = None if self.schedule is None else self.schedule.to_dict()
        return {**super().to_dict(), "layers": list(self.layers), "schedule": schedule}


def _check_sample_limit(value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise EdgeoptError(f"max_calibration_samples must be an integer >= 1 or None, got {value!r}")


def _check_layer_targets(targets) -> None:
    if not isinstance(targets, dict) or not all(isinstance(key, str) for key in targets):
        raise EdgeoptError(f"layer_sparsity must map layer patterns to sparsities, got {targets!r}")
    for pattern, value in targets.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
            raise EdgeoptError(f"layer_sparsity[{pattern!r}] must be in [0, 1), got {value!r}")


#: Where clustering's centroids start (see :mod:`edgeopt.compression.kmeans`).
CLUSTER_INITS = ("linear", "random", "density", "kmeans++")
CLUSTER_METHODS = ("auto", "nearest", "data-aware")
#: ``scaled``: one codebook per layer times a scale per output channel (each channel its own
#: values, and the same integers in every channel after per-channel int8, which gzip compresses);
#: ``channel``: each output channel its own centroids; ``layer``: one set of values per layer
CLUSTER_CODEBOOKS = ("scaled", "channel", "layer")
#: how ``bits`` is spent: ``layer``, each layer at most ``bits``; ``global``, ``bits`` on average
#: over all clustered weights, one rate for the model (:func:`edgeopt.compression.rate.allocate`)
BIT_ALLOCATIONS = ("layer", "global")


@dataclass(frozen=True)
class ClusterConfig(_Config):
    """Weight clustering (weight sharing): each output channel keeps at most ``clusters`` distinct
    values, the centroids of a k-means of its weights (``codebook``: see ``CLUSTER_CODEBOOKS``;
    per-channel values are what survives per-channel int8). One-shot on ONNX (``edgeopt.cluster``): ``"nearest"``
    moves each weight to its nearest centroid; ``"data-aware"`` (needs calibration data) weighs
    the k-means by each input's second moment and moves the weights one input at a time, pushing
    each move's output error onto the weights not yet moved (as compensated rounding does);
    ``"auto"`` is data-aware when data is given. In PyTorch (``edgeopt.torch.prepare_clustering``)
    the weights are tied to trainable centroids. With ``preserve_sparsity`` a pruned weight's zeros
    stay zero and count as one of the ``clusters`` values."""

    clusters: int = 16
    codebook: str = "scaled"
    init: str = "kmeans++"
    preserve_sparsity: bool = True
    method: str = "auto"
    #: node-name patterns or operator types to cluster (in PyTorch: module or class names)
    layers: tuple[str, ...] = ()
    max_calibration_samples: int | None = 256
    seed: int = 0
    #: entropy-constrained clustering (``codebook="scaled"``): each layer's cluster indices hold at
    #: most this entropy, bits per weight, so that gzip stores them in fewer; None: plain k-means
    bits: float | None = None
    #: ``BIT_ALLOCATIONS``; ``global`` is for ``edgeopt.cluster`` (one shot)
    allocation: str = "layer"
    mode = "cluster"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.clusters, bool) or not isinstance(self.clusters, int) or not 2 <= self.clusters <= 256:
            raise EdgeoptError(f"clusters must be an integer in [2, 256], got {self.clusters!r}")
        if self.codebook not in CLUSTER_CODEBOOKS:
            raise EdgeoptError(f"codebook must be one of {', '.join(CLUSTER_CODEBOOKS)}, got {self.codebook!r}")
        if self.init not in CLUSTER_INITS:
            raise EdgeoptError(f"init must be one of {', '.join(CLUSTER_INITS)}, got {self.init!r}")
        if self.method not in CLUSTER_METHODS:
            raise EdgeoptError(f"method must be one of {', '.join(CLUSTER_METHODS)}, got {self.method!r}")
        if isinstance(self.layers, str) or not all(isinstance(item, str) for item in self.layers):
            raise EdgeoptError(f"layers must be a list of node-name patterns or operator types, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        _check_sample_limit(self.max_calibration_samples)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise EdgeoptError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.preserve_sparsity, bool):
            raise EdgeoptError(f"preserve_sparsity must be True or False, got {self.preserve_sparsity!r}")
        self._check_bits()

    def _check_bits(self):
        if self.allocation not in BIT_ALLOCATIONS:
            raise EdgeoptError(f"allocation must be one of {', '.join(BIT_ALLOCATIONS)}, got {self.allocation!r}")
        if self.bits is None:
            if self.allocation != "layer":
                raise EdgeoptError(f"allocation {self.allocation!r} spends bits: expected bits too")
            return
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)) or not 0 < self.bits:
            raise EdgeoptError(f"bits must be a positive number of bits per weight, got {self.bits!r}")
        if self.bits >= math.log2(self.clusters):
            raise EdgeoptError(f"bits must be below log2(clusters) = {math.log2(self.clusters):g} to constrain "
                               f"anything, got {self.bits!r}")
        if self.codebook != "scaled":
            raise EdgeoptError(f"bits needs codebook 'scaled' (one codebook per layer), got {self.codebook!r}")
        object.__setattr__(self, "bits", float(self.bits))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "layers": list(self.layers)}


def n_of_m(pattern: str) -> tuple[int, int] | None:
    """``(N, M)`` of an ``"N:M"`` pattern, None for the other patterns; an error for anything else."""
    if pattern in PRUNE_PATTERNS:
        return None
    n, _, m = str(pattern).partition(":")
    if n.isdigit() and m.isdigit() and 0 < int(n) < int(m):
        return int(n), int(m)
    raise EdgeoptError(f"pattern must be one of {', '.join(PRUNE_PATTERNS)} or N:M with 0 < N < M (such as 2:4), "
                       f"got {pattern!r}")


CHANNEL_IMPORTANCES = ("l2", "l1", "bn-scale")


@dataclass(frozen=True)
class ChannelPruneConfig(_Config):
    """Structured pruning that removes whole channels (``edgeopt.torch.prune_channels``, the
    ``torch`` extra): the model gets physically smaller and faster. ``ratio`` of each layer's
    output channels go (``ranking="global"``: one ranking over all layers, at most
    ``max_ratio`` from any one), ranked by ``importance`` over each group of coupled channels
    (the channels a residual addition, a depthwise convolution or a concatenation ties together
    go or stay together): the L2 or L1 norm of their weights, or their BatchNorm scale. Channel
    counts stay multiples of ``round_to``. The layer that produces the model's output keeps its
    channels; ``exclude`` names modules (or class names) to keep whole as well."""

    ratio: float = 0.5
    importance: str = "l2"
    ranking: str = "layer"
    max_ratio: float = 0.9
    round_to: int | None = 8
    mode = "channels"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 < self.ratio < 1.0:
            raise EdgeoptError(f"ratio must be in (0, 1), got {self.ratio!r}")
        if isinstance(self.max_ratio, bool) or not isinstance(self.max_ratio, (int, float)) or \
                not 0.0 < self.max_ratio < 1.0 or self.max_ratio < self.ratio:
            raise EdgeoptError(f"max_ratio must be in [ratio, 1), got {self.max_ratio!r}")
        if self.importance not in CHANNEL_IMPORTANCES:
            raise EdgeoptError(f"importance must be one of {', '.join(CHANNEL_IMPORTANCES)}, got {self.importance!r}")
        if self.ranking not in PRUNE_RANKINGS:
            raise EdgeoptError(f"ranking must be one of {', '.join(PRUNE_RANKINGS)}, got {self.ranking!r}")
        if self.round_to is not None and (isinstance(self.round_to, bool) or not isinstance(self.round_to, int)
                                          or self.round_to < 1):
            raise EdgeoptError(f"round_to must be an integer >= 1 or None, got {self.round_to!r}")


_CONFIG_TYPES = {cls.__name__: cls for cls in (Float16Config, DynamicConfig, Int8Config, Int16x8Config, QATConfig,
                                               PruneConfig, ClusterConfig, ChannelPruneConfig)}
#: the modes ``quantize`` runs
MODES = {cls.mode: cls for cls in _CONFIG_TYPES.values() if cls not in (QATConfig, PruneConfig, ClusterConfig, ChannelPruneConfig)}
