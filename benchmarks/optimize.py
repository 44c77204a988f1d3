"""Produce one optimized model in this process and report its wall time and peak memory.

    python -m benchmarks.optimize VARIANT MODEL.onnx CALIBRATION.npz OUT.onnx

Run by the benchmark in a fresh process per variant, so each optimizer's peak memory (VmHWM) is
its own. Prints one JSON line.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np

#: edgeopt's default int8 configuration (calibration method "auto")
EDGEOPT_INT8 = "edgeopt int8 auto"
EDGEOPT = ("edgeopt float16", "edgeopt dynamic", "edgeopt dynamic tensor-range", EDGEOPT_INT8,
           "edgeopt int8 percentile", "edgeopt int8 minmax", "edgeopt int8 entropy", "edgeopt int8 mse",
           "edgeopt int8 scope all", "edgeopt int8 integer-only", "edgeopt int16x8")
ANCHORS = ("onnxruntime static U8S8 minmax", "onnxruntime static U8S8 entropy",
           "onnxruntime static U8S8 percentile", "onnxruntime static S8S8 minmax", "onnxruntime dynamic",
           "nncf ptq")
VARIANTS = EDGEOPT + ANCHORS
#: the third-party group: every edgeopt mode and onnxruntime's own quantizers (NNCF left out to
#: keep the suite to minutes on 2 cores)
#: the suite runs every edgeopt mode with its default settings (the calibration-method and scope
#: variants are the reference group's: on twelve models they would triple the run) and
#: onnxruntime's quantizers
THIRDPARTY_VARIANTS = ("edgeopt float16", "edgeopt dynamic", EDGEOPT_INT8, "edgeopt int8 integer-only",
                       "edgeopt int16x8") + tuple(a for a in ANCHORS if a.startswith("onnxruntime"))


def peak_memory_mb() -> float:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


#: The first words of each reason edgeopt gives for a tensor kept float, and the table's name for it.
REASON_KINDS = (("a normalization statistic", "normalization statistics"),
                ("squared values a variance", "normalization statistics"),
                ("inside a decomposed activation", "inside decomposed activations"),
                ("holds sentinel values", "sentinel values"),
                ("keeping it float alone", "kept by the fallback"),
                ("excluded by the config", "excluded"))
#: The key of the report's kept_float entry that says the whole model stayed float (weights only).
WHOLE_MODEL = "*"


def reason_kinds(kept_float: dict[str, str]) -> dict[str, int]:
    """How many tensors stayed float for each kind of reason (the report gives each one's text)."""
    counts: dict[str, int] = {}
    for reason in kept_float.values():
        kind = next((name for prefix, name in REASON_KINDS if reason.startswith(prefix)), "other")
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def calibration_feeds(model_path: str, calibration: str) -> list[dict]:
    """The anchors' calibration feeds; dims a model declares as -1 read as dynamic (as
    onnxruntime does), so an anchor meets the model as shipped."""
    from edgeopt.data import load_npz

    from .thirdparty import specs_of

    return list(load_npz(calibration, specs_of(model_path)).batches(1))


def produce(variant: str, model: str, calibration: str, output: str) -> dict:
    """Write the variant's model; returns the decisions edgeopt reports (nothing for anchors)."""
    import edgeopt

    from . import anchors

    configs = {
        "edgeopt float16": edgeopt.Float16Config(),
        "edgeopt dynamic": edgeopt.DynamicConfig(),
        "edgeopt dynamic tensor-range": edgeopt.DynamicConfig(activation_granularity="tensor"),
        EDGEOPT_INT8: edgeopt.Int8Config(),
        "edgeopt int8 percentile": edgeopt.Int8Config(calibration_method="percentile"),
        "edgeopt int8 minmax": edgeopt.Int8Config(calibration_method="minmax"),
        "edgeopt int8 entropy": edgeopt.Int8Config(calibration_method="entropy"),
        "edgeopt int8 mse": edgeopt.Int8Config(calibration_method="mse"),
        "edgeopt int8 scope all": edgeopt.Int8Config(scope="all"),
        "edgeopt int8 integer-only": edgeopt.Int8Config(integer_only=True),
        "edgeopt int16x8": edgeopt.Int16x8Config(),
    }
    if variant in configs:
        result = edgeopt.quantize(model, configs[variant], calibration=calibration)
        result.save(output)
        report = result.report
        return {key: report[key] for key in ("scope", "calibration_method", "weight_rounding", "bias_correction")
                if key in report} | \
            ({"kept_float": len(set(report["kept_float"]) - {WHOLE_MODEL}),
              "kept_float_why": reason_kinds({k: v for k, v in report["kept_float"].items() if k != WHOLE_MODEL})}
             if "kept_float" in report else {})
    elif variant.startswith("onnxruntime static"):
        method = variant.rsplit(" ", 1)[1]
        activation = "int8" if "S8S8" in variant else "uint8"
        anchors.onnxruntime_static(model, output, calibration_feeds(model, calibration), method, activation)
    elif variant == "onnxruntime dynamic":
        anchors.onnxruntime_dynamic(model, output)
    elif variant == "nncf ptq":
        anchors.nncf_ptq(model, output, calibration_feeds(model, calibration))
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    return {}


def main(argv=None) -> int:
    variant, model, calibration, output = (argv or sys.argv[1:])
    start = time.perf_counter()
    decisions = {}
    try:
        decisions = produce(variant, model, calibration, output)
        error = None
    except Exception as exc:  # recorded in the table: why this tool could not handle the model
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": peak_memory_mb(), "error": error,
                      "decisions": decisions}))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
