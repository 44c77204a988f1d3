"""Run edgeopt's benchmarks and write benchmarks/RESULTS.md and results.json.

    python -m benchmarks            # the default CNN on the full Fashion-MNIST test set
    python -m benchmarks --quick    # 2,000 shipped test images, fewer latency runs

Every row is measured in this run on this machine; latency ratios compare rows measured in
interleaved rounds of the same run, since shared machines are noisy.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import pathlib
import platform
import time

import numpy as np

import edgeopt
from edgeopt.data import Dataset, input_specs
from edgeopt.demo import default_datasets, default_model_path
from edgeopt.model_io import load_model

from . import anchors

HERE = pathlib.Path(__file__).resolve().parent
FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


def full_test_set(specs) -> Dataset | None:
    """The 10,000 Fashion-MNIST test images from the Debian package, when it is installed."""
    images_path, labels_path = FASHION / "t10k-images-idx3-ubyte.gz", FASHION / "t10k-labels-idx1-ubyte.gz"
    if not images_path.exists():
        return None
    images = np.frombuffer(gzip.decompress(images_path.read_bytes()), np.uint8, offset=16).reshape(-1, 1, 28, 28)
    labels = np.frombuffer(gzip.decompress(labels_path.read_bytes()), np.uint8, offset=8).astype(np.int64)
    return Dataset({specs[0].name: images.astype(np.float32) / 255.0}, specs, labels, where="fashion-mnist test")


def build_variants(work: pathlib.Path, calibration: Dataset) -> dict[str, tuple[pathlib.Path, float]]:
    """Every optimized model: name -> (path, seconds to produce it)."""
    source = default_model_path()
    variants = {"float": (source, 0.0)}
    edgeopt_configs = {
        "edgeopt float16": edgeopt.Float16Config(),
        "edgeopt dynamic": edgeopt.DynamicConfig(),
        **{f"edgeopt int8 {m}": edgeopt.Int8Config(calibration_method=m)
           for m in ("percentile", "minmax", "entropy", "mse")},
        "edgeopt int8 integer-only": edgeopt.Int8Config(integer_only=True),
        "edgeopt int16x8": edgeopt.Int16x8Config(),
    }
    for name, config in edgeopt_configs.items():
        path = work / (name.replace(" ", "_") + ".onnx")
        start = time.perf_counter()
        edgeopt.quantize(source, config, calibration=calibration).save(path)
        variants[name] = (path, time.perf_counter() - start)
    feeds = anchors.batches_of_one(calibration.arrays)
    for method in ("minmax", "entropy", "percentile"):
        path = work / f"ort_static_{method}.onnx"
        start = time.perf_counter()
        anchors.onnxruntime_static(source, path, feeds, method)
        variants[f"onnxruntime static U8S8 {method}"] = (path, time.perf_counter() - start)
    path = work / "ort_static_s8s8_minmax.onnx"
    start = time.perf_counter()
    anchors.onnxruntime_static(source, path, feeds, "minmax", activation_type="int8")
    variants["onnxruntime static S8S8 minmax"] = (path, time.perf_counter() - start)
    path = work / "ort_dynamic.onnx"
    start = time.perf_counter()
    anchors.onnxruntime_dynamic(source, path)
    variants["onnxruntime dynamic"] = (path, time.perf_counter() - start)
    return variants


def interleaved_latency(paths: dict[str, pathlib.Path], dataset: Dataset, threads: int, rounds: int,
                        runs: int) -> dict[str, dict]:
    """Median and p90 single-image latency, rounds interleaved across models to share the noise."""
    from edgeopt.measure import _Runner

    runners = {name: _Runner(load_model(path), threads) for name, path in paths.items()}
    feeds = {name: [r.encode(f) for f in dataset.batches(1, limit=32)] for name, r in runners.items()}
    times = {name: [] for name in paths}
    for name, runner in runners.items():
        for feed in feeds[name][:10]:
            runner.run_encoded(feed)
    for _ in range(rounds):
        for name, runner in runners.items():
            for i in range(runs):
                start = time.perf_counter()
                runner.run_encoded(feeds[name][i % len(feeds[name])])
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: {"median": float(np.median(t)), "p90": float(np.percentile(t, 90))} for name, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="edgeopt benchmarks")
    parser.add_argument("--quick", action="store_true", help="shipped 2,000-image subset, fewer latency runs")
    parser.add_argument("--work", type=pathlib.Path, default=HERE / ".cache")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)

    specs = input_specs(load_model(default_model_path()))
    calibration, subset = default_datasets()
    test = None if args.quick else full_test_set(specs)
    test = test or subset
    variants = build_variants(args.work, calibration)
    rows = {}
    for name, (path, seconds) in variants.items():
        measured = edgeopt.evaluate(path, test, reference=None if name == "float" else default_model_path(),
                                    runs=1, warmup=0)
        rows[name] = {"top1": measured["top1"], "size": measured["size"], "seconds": seconds,
                      "fidelity": measured["fidelity"]}
    paths = {name: path for name, (path, _) in variants.items()}
    for threads in (1, 2):
        latency = interleaved_latency(paths, test, threads, rounds=3 if args.quick else 10, runs=50)
        for name in rows:
            rows[name][f"latency_{threads}t"] = latency[name]
    write_results(rows, len(test), args.quick)
    return 0


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnx
    import onnxruntime

    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, onnx {onnx.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, edgeopt {edgeopt.__version__}")


def write_results(rows: dict, samples: int, quick: bool) -> None:
    base = rows["float"]
    lines = [
        "# edgeopt benchmark results", "",
        f"Generated by `python -m benchmarks{' --quick' if quick else ''}` on "
        f"{datetime.date.today().isoformat()}: {machine()}.", "",
        f"## Default CNN (embedded model), Fashion-MNIST, {samples:,} test images", "",
        "Calibration: the 500 shipped calibration images (held-out training images), the same for every tool. "
        "Latency: single-image inference on ONNX Runtime, median (p90) over interleaved rounds.", "",
        "| variant | top-1 | change (points) | latency 1 thread ms | x float | latency 2 threads ms | size KB | "
        "x float | gzip KB | cosine worst | optimizer s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        l1, l2 = r["latency_1t"], r["latency_2t"]
        cosine = (r["fidelity"] or {}).get("cosine_worst")
        lines.append(
            f"| {name} | {100 * r['top1']:.2f}% | {100 * (r['top1'] - base['top1']):+.2f} | "
            f"{l1['median']:.3f} ({l1['p90']:.3f}) | {l1['median'] / base['latency_1t']['median']:.2f} | "
            f"{l2['median']:.3f} ({l2['p90']:.3f}) | {r['size']['raw_bytes'] / 1000:.1f} | "
            f"{r['size']['raw_bytes'] / base['size']['raw_bytes']:.3f} | {r['size']['gzip_bytes'] / 1000:.1f} | "
            f"{'' if cosine is None else f'{cosine:.4f}'} | {r['seconds']:.1f} |")
    ort = {k: v for k, v in rows.items() if k.startswith("onnxruntime static")}
    best_name = max(ort, key=lambda k: (ort[k]["top1"], -ort[k]["latency_1t"]["median"]))
    ours = rows["edgeopt int8 percentile"]
    best = ort[best_name]
    lines += [
        "", "## edgeopt int8 (default settings) against the best onnxruntime static configuration", "",
        f"Best onnxruntime static configuration by top-1: **{best_name}**.", "",
        "| | edgeopt int8 | best onnxruntime | edgeopt / onnxruntime |", "|---|---|---|---|",
        f"| top-1 | {100 * ours['top1']:.2f}% | {100 * best['top1']:.2f}% | "
        f"{100 * (ours['top1'] - best['top1']):+.2f} points |",
        f"| latency 1 thread | {ours['latency_1t']['median']:.3f} ms | {best['latency_1t']['median']:.3f} ms | "
        f"{ours['latency_1t']['median'] / best['latency_1t']['median']:.2f}x |",
        f"| size | {ours['size']['raw_bytes']:,} B | {best['size']['raw_bytes']:,} B | "
        f"{ours['size']['raw_bytes'] / best['size']['raw_bytes']:.3f}x |",
        "", "## Reading the table", "", (HERE / "READING.md").read_text().strip(), "",
    ]
    (HERE / "RESULTS.md").write_text("\n".join(lines))
    (HERE / "results.json").write_text(json.dumps({"samples": samples, "machine": machine(), "rows": rows},
                                                  indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
