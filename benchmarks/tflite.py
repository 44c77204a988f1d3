"""edgeopt's .tflite files on LiteRT against ONNX Runtime and against ai-edge-quantizer:
``python -m benchmarks.tflite [--only CASE ...] [--samples N]``.

For each model: the float ONNX model written as .tflite (``edgeopt.export``) and run on LiteRT
(XNNPACK, as apps run it) against ONNX Runtime on the same real inputs (the case's first
``--samples`` evaluation samples): the worst relative difference, ``max |tflite - onnx| /
max |onnx|`` over samples and outputs (issue 11's bound: 1e-4; float16: 1e-2 against the float
ONNX model; the float16 row is also compared with ONNX Runtime running the float16 ONNX model it
was written from, which separates the writer's share from float16 rounding). Counted in the file:
operators, TRANSPOSEs, XNNPACK partitions and whether one covers the whole graph, validator errors.

The labelled CNN cases also get int8: edgeopt's int8 ONNX models (``Int8Config`` on the case's
calibration images, with float inputs and outputs and ``integer_only``, each with Add scales
independent and shared (``shared_add_scale``, what ``edgeopt quantize -o X.tflite`` does)) written as .tflite, each
compared with ONNX Runtime running that ONNX model on every evaluation image (share of output
elements within one step of the output's scale, and the worst difference in steps), and the
anchor: ai-edge-quantizer's static int8 recipe (``static_wi8_ai8``, int8 inputs and outputs) on
edgeopt's float .tflite with the same calibration images. Top-1 on every evaluation image; LiteRT
latency at 1 thread in interleaved rounds, as ratios to the float .tflite of the same run; sizes
raw and ``gzip -9``. Writes benchmarks/tflite.json.
"""

from __future__ import annotations

import argparse
import gzip
import pathlib
import time

import numpy as np

HERE = pathlib.Path(__file__).parent
CNN_CASES = ("default-cnn", "mobilenet-v2-fashion", "efficientnet-lite0-fashion")
#: the third-party models the writer lowers: the suite's (its recurrent ones are listed as not
#: lowered) and the reference group's MiniLM, a BERT encoder from sentence-transformers
THIRD_PARTY = ("ddddocr-det", "mtcnn-pnet", "mtcnn-rnet", "mtcnn-onet", "ppocr-det", "ppocr-rec", "ppocr-cls",
               "ppocrv5-det", "captcha-crnn", "magika", "minilm")
NOT_LOWERED = {"ddddocr-ocr": "LSTM", "lac": "GRU", "chars2vec": "Loop (Keras LSTM)", "silero-vad": "If + LSTM"}
CASES = CNN_CASES + THIRD_PARTY
FLOAT_BOUND, FLOAT16_BOUND = 1e-4, 1e-2


def _relative(ours: list[list[np.ndarray]], reference: list[list[np.ndarray]]) -> float:
    worst = 0.0
    for mine, theirs in zip(ours, reference):
        for a, b in zip(mine, theirs):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64).reshape(np.shape(a))
            worst = max(worst, float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)))
    return worst


def _feeds(case, count: int) -> list[dict]:
    return list(case.evaluation.batches(1, limit=count))


def _run(path, feeds: list[dict]) -> list[list[np.ndarray]]:
    from edgeopt.runtimes import open_runner

    runner = open_runner(path, 1)
    return [runner.run(feed) for feed in feeds]


def _file_facts(path: pathlib.Path, report: dict | None = None) -> dict:
    from edgeopt.runtimes.litert import LiteRTRunner, delegation
    from edgeopt.tflite.validate import validate

    data = path.read_bytes()
    errors = [v for v in validate(data) if v.severity == "error"]
    facts = {"bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9, mtime=0)),
             "validator_errors": len(errors), "xnnpack": delegation(LiteRTRunner(data))}
    if report is not None:
        facts.update(operators=sum(report["operators"].values()), transposes=report["operators"].get("TRANSPOSE", 0),
                     write_seconds=report["seconds"])
    return facts


def _export(model_path, path: pathlib.Path, shapes: dict) -> dict:
    from edgeopt.tflite.export import TFLiteConfig, export

    result = export(str(model_path), TFLiteConfig(input_shapes=shapes))
    result.save(path)
    return result.report


def float_rows(case, folder: pathlib.Path, samples: int) -> tuple[list[dict], dict]:
    """float and float16 .tflite against ONNX Runtime's float outputs on the same inputs."""
    import edgeopt

    feeds = _feeds(case, samples)
    shapes = {name: value.shape for name, value in feeds[0].items()}
    reference = _run(case.model, feeds)
    rows, paths = [], {}
    float16_onnx = folder / "float16.onnx"
    edgeopt.quantize(str(case.model), edgeopt.Float16Config()).save(float16_onnx)
    for variant, source, bound in (("float", case.model, FLOAT_BOUND), ("float16", float16_onnx, FLOAT16_BOUND)):
        path = folder / f"{variant}.tflite"
        report = _export(source, path, shapes)
        outputs = _run(path, feeds)
        row = {"variant": f"{variant} .tflite", "relative_difference": _relative(outputs, reference), "bound": bound,
               "top1": None, **_file_facts(path, report)}
        if variant == "float16":  # the writer's own share: the same float16 weights on ONNX Runtime
            row["relative_to_source"] = _relative(outputs, _run(float16_onnx, feeds))
        rows.append(row)
        paths[f"{variant} .tflite"] = str(path)
    return rows, paths


def _step_agreement(ours: np.ndarray, reference: np.ndarray, step: float) -> dict:
    """The share of output elements within one quantization step, the worst difference in steps."""
    steps = np.abs(np.asarray(ours, np.float64) - np.asarray(reference, np.float64)) / step
    return {"within_one_step": float(np.mean(steps <= 1 + 1e-3)), "max_steps": round(float(steps.max()), 2),
            "elements_compared": int(steps.size)}


def _labelled_outputs(paths: dict, case) -> dict:
    """Each file's first output on the whole evaluation set (LiteRT or ONNX Runtime, 1 thread)."""
    from .__main__ import outputs_of

    return {variant: outputs_of(str(path), case.evaluation, threads=1)[0] for variant, path in paths.items()}


#: edgeopt's int8 variants: (.tflite row, the ONNX Runtime row it is compared with, config)
INT8_VARIANTS = (("edgeopt int8 .tflite", "int8 .onnx (ONNX Runtime)", {}),
                 ("edgeopt int8 shared Add scale .tflite (the CLI's default)", "int8 shared Add scale .onnx (ONNX Runtime)",
                  {"shared_add_scale": True}),
                 ("edgeopt int8 integer-only .tflite", "int8 integer-only .onnx (ONNX Runtime)",
                  {"integer_only": True}),
                 ("edgeopt int8 integer-only shared Add scale .tflite",
                  "int8 integer-only shared Add scale .onnx (ONNX Runtime)",
                  {"integer_only": True, "shared_add_scale": True}))


def int8_rows(case, folder: pathlib.Path) -> tuple[list[dict], dict]:
    """edgeopt's int8 .tflite files (float and int8 inputs and outputs) and ai-edge-quantizer's;
    each edgeopt file is later compared with ONNX Runtime running the int8 ONNX model it came from."""
    import edgeopt

    shapes = {name: value.shape for name, value in _feeds(case, 1)[0].items()}
    rows, paths = [], {}
    for variant, onnx_variant, options in INT8_VARIANTS:
        started = time.perf_counter()
        result = edgeopt.quantize(str(case.model), edgeopt.Int8Config(**options), calibration=case.calibration)
        onnx_path = folder / f"{len(paths)}.onnx"
        result.save(onnx_path)
        seconds = time.perf_counter() - started
        path = onnx_path.with_suffix(".tflite")
        report = _export(onnx_path, path, shapes)
        output = result.model.graph.output[0].name
        step = float(np.asarray(result.plan.activations[output].scale).reshape(-1)[0])
        rows.append({"variant": variant, "compared_with": onnx_variant, "output_step": step,
                     "quantize_seconds": round(seconds, 1), **_file_facts(path, report)})
        paths.update({variant: str(path), onnx_variant: str(onnx_path)})
    anchor = folder / "aeq_int8.tflite"
    seconds = _ai_edge_quantizer(folder / "float.tflite", anchor, case)
    rows.append({"variant": "ai-edge-quantizer static int8", "quantize_seconds": round(seconds, 1),
                 **_file_facts(anchor)})
    paths["ai-edge-quantizer static int8"] = str(anchor)
    return rows, paths


def _ai_edge_quantizer(float_path: pathlib.Path, output: pathlib.Path, case) -> float:
    from ai_edge_quantizer import quantizer, recipe

    from edgeopt.runtimes.litert import quiet_stderr

    started = time.perf_counter()
    anchor = quantizer.Quantizer(str(float_path))
    anchor.load_quantization_recipe(recipe.static_wi8_ai8())
    samples = [dict(feed) for feed in case.calibration.batches(1)]
    with quiet_stderr():
        calibrated = anchor.calibrate({"serving_default": samples})
        anchor.quantize(calibrated).export_model(str(output), overwrite=True)
    return time.perf_counter() - started


def run_case(name: str, samples: int, folder: pathlib.Path) -> dict:
    from .__main__ import interleaved_latency
    from .cases import CASES as ALL

    case = ALL[name]()
    rows, paths = float_rows(case, folder, samples)
    labelled = name in CNN_CASES
    if labelled:
        more, more_paths = int8_rows(case, folder)
        rows += more
        paths.update(more_paths)
        outputs = _labelled_outputs({**paths, "float .onnx": case.model}, case)
        latency = interleaved_latency(paths, case.evaluation, threads=1, rounds=8, runs=30)
        onnx_rows = [{"variant": onnx_variant} for _, onnx_variant, _ in INT8_VARIANTS]
        for row in rows + onnx_rows:
            row["top1"] = float(np.mean(outputs[row["variant"]].argmax(1) == case.evaluation.labels))
            if "output_step" in row:  # over every evaluation input, against the int8 ONNX model it came from
                row.update(_step_agreement(outputs[row["variant"]], outputs[row["compared_with"]],
                                           row["output_step"]))
            row["latency_ms"] = latency[row["variant"]]["median"]
            row["latency_ratio"] = row["latency_ms"] / latency["float .tflite"]["median"]
        rows += onnx_rows
    return {"case": name, "title": case.title, "model": str(case.model), "samples": samples, "rows": rows,
            "float_top1": float(np.mean(outputs["float .onnx"].argmax(1) == case.evaluation.labels)) if labelled else None}


def main(argv=None) -> int:
    from .runs import command_line, run_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--samples", type=int, default=16, help="inputs compared per model (default 16)")
    args = parser.parse_args(argv)
    run_cases(HERE / "tflite.json", command_line("tflite", argv), args.only, CASES,
              lambda name, folder: run_case(name, args.samples, folder), extra={"not_lowered": NOT_LOWERED})
    return 0


def _cell(value, form: str) -> str:
    return "" if value is None else format(value, form)


def _step_cell(row: dict) -> str:
    cell = f"{100 * row['within_one_step']:.2f}% within one step"
    if "max_steps" in row:
        cell += f" of {row['elements_compared']:,} elements (worst {row['max_steps']:g} steps)"
    return cell


def _row_line(row: dict, float_top1) -> str:
    xnnpack = row.get("xnnpack") or {}
    delegated = "" if not xnnpack else ("whole" if xnnpack["whole"] else f"{xnnpack['partitions']} partitions")
    agreement = (f"{row['relative_difference']:.1e} (bound {row['bound']:.0e})" if "relative_difference" in row
                 else _step_cell(row) if "within_one_step" in row else "")
    if "relative_to_source" in row:
        agreement += f"; {row['relative_to_source']:.1e} against the float16 ONNX model"
    change = "" if row.get("top1") is None or float_top1 is None else f" ({100 * (row['top1'] - float_top1):+.2f})"
    top1 = "" if row.get("top1") is None else f"{100 * row['top1']:.2f}%{change}"
    latency = "" if "latency_ms" not in row else f"{row['latency_ms']:.3f} ({row['latency_ratio']:.2f}x)"
    size = "" if "bytes" not in row else f"{row['bytes'] / 1000:.1f} / {row['gzip_bytes'] / 1000:.1f}"
    return (f"| {row['variant']} | {agreement} | {top1} | {latency} | {size} | {delegated} | "
            f"{_cell(row.get('transposes'), 'd')} | {_cell(row.get('validator_errors'), 'd')} |")


def section(path: pathlib.Path) -> list[str]:
    """RESULTS.md's .tflite tables from tflite.json."""
    import json

    from .runs import heading

    if not path.exists():
        return []
    run = json.loads(path.read_text())
    lines = ["## .tflite on LiteRT", "",
             (f"Each case's command and date are under its title; the last run's machine: {run['machine']}. "
              "LiteRT 2.3 with XNNPACK (as apps run it), 1 thread. Agreement: float and float16 rows, the worst "
              "max |tflite - onnx| / max |onnx| against the float ONNX model on ONNX Runtime over the compared "
              "inputs; int8, the share of output elements within one step of the output's scale of ONNX Runtime "
              "running the same int8 ONNX model, over every evaluation image. An int8 file with float inputs "
              "rounds them onto the input's grid (DIV, ROUND, MUL) before QUANTIZE, since XNNPACK's QUANTIZE "
              "multiplies by 1 / scale where ONNX Runtime divides, so both runtimes take the same integers. The "
              "shared Add scale rows tie each "
              "residual Add's operands and result to one scale (`Int8Config(shared_add_scale=True)`), so the "
              "Add rescales nothing and the two runtimes' roundings cannot part. "
              "Latency: median, rounds interleaved, x the float .tflite. The "
              "anchor is ai-edge-quantizer 0.10's static int8 recipe on edgeopt's float .tflite with the same "
              "calibration images."), "",
             "Not lowered (no TFLite builtin for their recurrent operators yet): "
             + ", ".join(f"{name} ({op})" for name, op in run.get("not_lowered", {}).items()) + ".", ""]
    for case in run["cases"]:
        lines += [heading(case), "", (f"`{case.get('command', run['command']).strip()}`, {case.get('date', run['date'])}, "
                                      f"{case['samples']} inputs compared"), "",
                  ("| variant | agreement with ONNX Runtime | top-1 (change vs float ONNX) | LiteRT ms (x float .tflite) "
                   "| KB / gzip KB | XNNPACK | TRANSPOSE | validator errors |"),
                  "|---|---|---|---|---|---|---|---|"]
        lines += [_row_line(row, case.get("float_top1")) for row in case["rows"]] + [""]
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
