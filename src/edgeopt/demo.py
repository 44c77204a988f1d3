"""``edgeopt demo``: the guide's Table 1 for the embedded default model, measured here and now."""

from __future__ import annotations

import json
import logging
import pathlib
from importlib import resources

import numpy as np

from .api import quantize
from .config import DynamicConfig, Float16Config, Int8Config
from .data import Dataset, input_specs
from .errors import EdgeoptError
from .measure import evaluate
from .model_io import check_writable, load_model, save_model, write_bytes_atomic

logger = logging.getLogger(__name__)

ROWS = (
    ("float", None),
    ("float16", Float16Config()),
    ("dynamic", DynamicConfig()),
    ("int8", Int8Config()),
    ("int8 integer-only", Int8Config(integer_only=True)),
)


def default_model_path() -> pathlib.Path:
    return pathlib.Path(str(resources.files("edgeopt") / "assets" / "fashion_cnn.onnx"))


def default_datasets() -> tuple[Dataset, Dataset]:
    """The shipped real Fashion-MNIST subsets: (calibration, labelled evaluation), float in [0, 1]."""
    specs = input_specs(load_model(default_model_path()))
    with np.load(str(resources.files("edgeopt") / "assets" / "fashion_mnist_subsets.npz")) as archive:
        calibration = archive["calibration_images"][:, None].astype(np.float32) / 255.0
        images = archive["evaluation_images"][:, None].astype(np.float32) / 255.0
        labels = archive["evaluation_labels"].astype(np.int64)
    name = specs[0].name
    return Dataset({name: calibration}, specs, where="calibration"), Dataset({name: images}, specs, labels,
                                                                             where="evaluation")


#: Printed instead of the LiteRT columns when ai-edge-litert is missing.
NO_LITERT_HINT = "the LiteRT columns (.tflite files) need the tflite extra: pip install 'edgeopt[tflite]'"

#: Printed instead of the QAT row when PyTorch is missing.
NO_TORCH_HINT = "the QAT int8 row needs PyTorch: pip install 'edgeopt[torch]'"


def run_demo(output_dir: str | pathlib.Path = "edgeopt-demo", threads: int = 1, runs: int = 200,
             qat: bool = True) -> dict:
    """Quantize the default model every way, measure each, write models, data and tables to
    ``output_dir``; with ``qat`` (and PyTorch installed) also fine-tune it on the shipped training
    images: quantization-aware training, pruning, clustering, both with QAT, and channel pruning
    (3 to 5 minutes on 2 cores)."""
    output_dir = pathlib.Path(output_dir)
    if threads < 1 or runs < 1:
        raise EdgeoptError(f"threads and runs must be >= 1, got {threads} and {runs}")
    if output_dir.exists() and not output_dir.is_dir():
        raise EdgeoptError(f"--output-dir {output_dir} is a file; expected a folder (it is created if missing)")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgeoptError(f"--output-dir {output_dir}: cannot create it ({exc.strerror})") from None
    check_writable(output_dir / "results.json")
    source = default_model_path()
    calibration, evaluation = default_datasets()
    calibration.save(output_dir / "calibration.npz")
    evaluation.save(output_dir / "evaluation.npz")
    rows = []
    for label, config in ROWS:
        path = output_dir / f"fashion_cnn.{label.replace(' ', '-')}.onnx"
        if config is None:
            save_model(load_model(source), path)
            report = {}
        else:
            result = quantize(source, config, calibration=calibration)
            result.save(path)
            report = {k: v for k, v in result.report.items() if k != "plan"}
        measured = evaluate(path, evaluation, reference=source if config else None, threads=threads, runs=runs)
        rows.append({"row": label, "model": path.name, "measurement": measured, "report": report})
        logger.info("%s: top-1 %.4f", label, measured["top1"])
    notes = []
    if qat:
        row = _qat_row(source, calibration, evaluation, output_dir, threads, runs)
        if row is None:
            notes.append(NO_TORCH_HINT)
        else:
            rows.insert(4, row)  # after int8, before integer-only
            rows.extend(_compression_rows(source, calibration, evaluation, output_dir, threads, runs))
    if not _litert_columns(rows, output_dir, evaluation, threads, runs):
        notes.append(NO_LITERT_HINT)
    table = summarise(rows)
    result = {"model": "fashion_cnn (embedded default, Fashion-MNIST)", "threads": threads,
              "evaluation_samples": len(evaluation), "calibration_samples": len(calibration),
              "rows": table, "details": rows, "notes": notes}
    write_bytes_atomic(output_dir / "results.json", (json.dumps(result, indent=2) + "\n").encode())
    write_bytes_atomic(output_dir / "results.md", (markdown_table(table) + "\n").encode())
    return result


def _qat_row(source, calibration: Dataset, evaluation: Dataset, output_dir: pathlib.Path, threads: int,
             runs: int) -> dict | None:
    """The QAT int8 row, or None without PyTorch."""
    try:
        from .torch.demo import qat_int8
    except ImportError:
        logger.info(NO_TORCH_HINT)
        return None
    path = output_dir / "fashion_cnn.qat-int8.onnx"
    report = qat_int8(source, calibration, path)
    measured = evaluate(path, evaluation, reference=source, threads=threads, runs=runs)
    logger.info("QAT int8: top-1 %.4f", measured["top1"])
    return {"row": "QAT int8", "model": path.name, "measurement": measured, "report": report}


def _compression_rows(source, calibration: Dataset, evaluation: Dataset, output_dir: pathlib.Path, threads: int,
                      runs: int) -> list[dict]:
    """The pruning and clustering rows (PyTorch is there: the QAT row ran)."""
    from .torch.compression_demo import compression_rows

    rows = []
    for label, path, report in compression_rows(source, calibration, output_dir):
        measured = evaluate(path, evaluation, reference=source, threads=threads, runs=runs)
        logger.info("%s: top-1 %.4f", label, measured["top1"])
        rows.append({"row": label, "model": path.name, "measurement": measured, "report": report})
    return rows


def _litert_columns(rows: list[dict], output_dir: pathlib.Path, evaluation: Dataset, threads: int,
                    runs: int) -> bool:
    """Write each row's model as .tflite and measure it on LiteRT (``row["litert"]``); False when
    the tflite extra is missing."""
    from importlib.util import find_spec

    if find_spec("ai_edge_litert") is None:
        logger.info(NO_LITERT_HINT)
        return False
    from .tflite.export import export

    for row in rows:
        onnx_path = output_dir / row["model"]
        path = onnx_path.with_suffix(".tflite")
        result = export(onnx_path)
        result.save(path)
        measured = evaluate(path, evaluation, threads=threads, runs=runs)
        row["litert"] = {"model": path.name, "measurement": measured, "operators": result.report["operators"]}
        logger.info("%s on LiteRT: top-1 %.4f", row["row"], measured["top1"])
    return True


def summarise(rows: list[dict]) -> list[dict]:
    base = rows[0]["measurement"]
    int8 = next((row["measurement"] for row in rows if row["row"] == "int8"), base)
    table = []
    for row in rows:
        m = row["measurement"]
        table.append({
            "row": row["row"],
            "top1": m["top1"],
            "top1_change_points": 100.0 * (m["top1"] - base["top1"]),
            "latency_ms": m["latency_ms"]["median"],
            "latency_p90_ms": m["latency_ms"]["p90"],
            "latency_ratio": m["latency_ms"]["median"] / base["latency_ms"]["median"],
            "size_bytes": m["size"]["raw_bytes"],
            "size_ratio": m["size"]["raw_bytes"] / base["size"]["raw_bytes"],
            "gzip_bytes": m["size"]["gzip_bytes"],
            "gzip_ratio": m["size"]["gzip_bytes"] / base["size"]["gzip_bytes"],
            "gzip_vs_int8": m["size"]["gzip_bytes"] / int8["size"]["gzip_bytes"],
            "cosine_worst": (m["fidelity"] or {}).get("cosine_worst"),
            "sparsity": (m.get("weights") or {}).get("sparsity"),
            "distinct_per_channel_max": (m.get("weights") or {}).get("distinct_per_channel_max"),
        })
        table[-1].update(_litert_summary(row, rows[0]))
    return table


def _litert_summary(row: dict, base: dict) -> dict:
    if "litert" not in row:
        return {}
    m, float_m = row["litert"]["measurement"], base["litert"]["measurement"]
    return {"litert_top1": m["top1"], "litert_latency_ms": m["latency_ms"]["median"],
            "litert_latency_ratio": m["latency_ms"]["median"] / float_m["latency_ms"]["median"],
            "tflite_bytes": m["size"]["raw_bytes"], "tflite_gzip_bytes": m["size"]["gzip_bytes"]}


def markdown_table(table: list[dict]) -> str:
    litert = any("litert_top1" in r for r in table)
    head = ("| model | top-1 | change | latency ms (x float) | size KB (x float) | gzip KB (x float) | gzip x int8 "
            "| sparsity | distinct weights / channel |")
    rule = "|---|---|---|---|---|---|---|---|---|"
    if litert:
        head += " LiteRT top-1 | LiteRT ms (x float) | .tflite KB | .tflite gzip KB |"
        rule += "---|---|---|---|"
    lines = [head, rule]
    for r in table:
        sparsity = "" if r.get("sparsity") is None else f"{100 * r['sparsity']:.1f}%"
        distinct = "" if r.get("distinct_per_channel_max") is None else str(r["distinct_per_channel_max"])
        line = (f"| {r['row']} | {100 * r['top1']:.2f}% | {r['top1_change_points']:+.2f} | "
                f"{r['latency_ms']:.3f} ({r['latency_ratio']:.2f}x) | {r['size_bytes'] / 1000:.1f} "
                f"({r['size_ratio']:.3f}x) | {r['gzip_bytes'] / 1000:.1f} ({r['gzip_ratio']:.3f}x) | "
                f"{r.get('gzip_vs_int8', float('nan')):.3f}x | {sparsity} | {distinct} |")
        if litert and "litert_top1" in r:
            line += (f" {100 * r['litert_top1']:.2f}% | {r['litert_latency_ms']:.3f} ({r['litert_latency_ratio']:.2f}x)"
                     f" | {r['tflite_bytes'] / 1000:.1f} | {r['tflite_gzip_bytes'] / 1000:.1f} |")
        elif litert:
            line += " | | | |"
        lines.append(line)
    return "\n".join(lines)
