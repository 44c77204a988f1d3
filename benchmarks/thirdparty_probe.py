"""Probe edgeopt's three main modes on every third-party model, through the public API only.

    python -m benchmarks.thirdparty_probe [--only NAME ...]

For each case of the ``thirdparty`` group: ``edgeopt.quantize`` with Float16Config, DynamicConfig
and Int8Config() (calibration given as a dict of arrays, the way a user would, so edgeopt's own
input checks apply), then the held-out fidelity (benchmarks/thirdparty_fidelity.py) of what it
built, run in plain onnxruntime. Prints one line per mode: seconds, ok or the one-line error,
mean worst-output cosine, SQNR per output, top-1 agreement, and for int8 the report's
``kept_float`` count and ``worst_output_cosine_on_calibration``.

A model that declares ``dim_value: -1`` inputs gets its calibration refused by edgeopt (known
bug); the probe then also runs the modes on a copy with those dims made symbolic, marked
"(dims fixed)". Models are written to benchmarks/.cache/thirdparty/probe/ (not committed).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from . import cases as registry
from . import thirdparty
from . import thirdparty_fidelity as fidelity

logger = logging.getLogger(__name__)

OUT = thirdparty.ROOT / "probe"
MODES = ("float16", "dynamic", "int8")


def _config(mode: str):
    import edgeopt

    return {"float16": edgeopt.Float16Config(), "dynamic": edgeopt.DynamicConfig(),
            "int8": edgeopt.Int8Config()}[mode]


def _one_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def _scores(result: dict) -> str:
    """The fidelity numbers of one model as one line."""
    parts = [f"worst-output cosine {result['metric']:.4f} (worst sample {result['cosine_worst']:.4f})"
             if result["metric"] is not None else "no sample with a non-silent output"]
    for name, entry in result["outputs"].items():
        text = f"{name}: SQNR {entry['sqnr_db']:.1f} dB"
        if "top1_agreement" in entry:
            text += f", top-1 {100 * entry['top1_agreement']:.1f}%"
        if entry["silent"]:
            text += (f", {entry['silent']} silent samples (pooled error/signal "
                     f"{entry['silent_relative_error']:.3g})")
        if entry["non_finite"]:
            text += f", {entry['non_finite']} samples with NaN/inf"
        parts.append(text)
    return "; ".join(parts)


def probe_mode(case, model_path, mode: str, reference: dict, tag: str) -> str:
    """Quantize one way and measure it; the line to print."""
    import edgeopt

    output = OUT / f"{case.name}{tag.replace(' ', '_')}.{mode}.onnx"
    OUT.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        result = edgeopt.quantize(str(model_path), _config(mode),
                                  calibration=dict(case.calibration.arrays) if mode == "int8" else None)
        result.save(str(output))
    except Exception as exc:  # noqa: BLE001 (the one-line reason is what the probe reports)
        return f"  {mode}{tag}: {time.perf_counter() - start:.1f} s, FAILED {_one_line(exc)}"
    seconds = time.perf_counter() - start
    try:
        measured = fidelity.fidelity(reference, fidelity.outputs_of(output, case.evaluation),
                                     case.classifier_outputs)
    except Exception as exc:  # noqa: BLE001 (reported: the model edgeopt wrote does not run)
        return f"  {mode}{tag}: {seconds:.1f} s, built but does not run in onnxruntime: {_one_line(exc)}"
    line = f"  {mode}{tag}: {seconds:.1f} s, ok, {_scores(measured)}"
    if mode == "int8":
        report = result.report
        line += (f"; kept_float {len(report.get('kept_float') or [])}, worst_output_cosine_on_calibration "
                 f"{report.get('worst_output_cosine_on_calibration')}, scope {report.get('scope')}, "
                 f"calibration_method {report.get('calibration_method')}")
    return line


def probe_case(name: str) -> list[str]:
    """Every mode on one case (and on the dims-fixed copy where the model declares -1 dims)."""
    start = time.perf_counter()
    case = registry.CASES[name]()
    about = thirdparty.describe(case.model)
    lines = [(f"{name}: {thirdparty.MODELS[name].requirement} {thirdparty.MODELS[name].member}; exporter "
             f"{about['exporter']}; opsets {about['opsets']}; inputs {about['inputs']}; outputs {about['outputs']}; "
             f"{len(case.calibration)} calibration / {len(case.evaluation)} evaluation samples "
             f"(built in {time.perf_counter() - start:.1f} s)")]
    print(lines[0], flush=True)
    reference = fidelity.outputs_of(case.model, case.evaluation)
    targets = [(case.model, "")]
    if thirdparty.has_negative_dims(case.model):
        fixed = thirdparty.without_negative_dims(case.model, OUT / f"{name}.dims-fixed.onnx")
        targets.append((fixed, " (dims fixed)"))
    for path, tag in targets:
        for mode in MODES:
            lines.append(probe_mode(case, path, mode, reference, tag))
            print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    names = [n for n, g in registry.GROUPS.items() if g == thirdparty.GROUP]
    parser = argparse.ArgumentParser(description="edgeopt's modes on the third-party models")
    parser.add_argument("--only", nargs="+", choices=names)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    np.seterr(all="ignore")
    for name in args.only or names:
        try:
            probe_case(name)
        except Exception as exc:  # noqa: BLE001 (a case that cannot be built is reported; the rest go on)
            print(f"{name}: could not build the case: {_one_line(exc)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
