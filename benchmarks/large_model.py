"""A model over protobuf's 2 GiB limit through every mode: ``python -m benchmarks.large_model``.

The model is an MLP of 9 MatMul+Relu layers, 8192 wide (2.4 GB of float32 weights, stored with
external data as exporters write such models). Its weights are seeded random (scaled so that
activations keep their size through the layers): this measures that edgeopt reads, quantizes,
checks, runs and writes a model this large, its time and peak memory, not accuracy. Each mode
runs in a fresh process (``edgeopt quantize``), so the peak resident memory is that mode's.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

CACHE = pathlib.Path(__file__).parent / ".cache" / "large"
WIDTH, LAYERS = 8192, 9
MODES = {"float16": ["--mode", "float16"], "dynamic": ["--mode", "dynamic"], "int8": ["--mode", "int8"]}


def build(path: pathlib.Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, previous = [], [], "x"
    for layer in range(LAYERS):
        weight = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * np.float32(np.sqrt(2.0 / WIDTH)))
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"], name=f"matmul{layer}"))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"r{layer}"], name=f"relu{layer}"))
        previous = f"r{layer}"
    graph = helper.make_graph(nodes, "large_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


def data(path: pathlib.Path, seed: int, count: int) -> None:
    rng = np.random.default_rng(seed)
    np.savez(path, x=np.abs(rng.standard_normal((count, WIDTH), dtype=np.float32)))


def run_mode(source: pathlib.Path, mode: str, calibration: pathlib.Path) -> dict:
    output = CACHE / f"large_{mode}.onnx"
    for stale in (output, output.with_name(output.name + ".data")):
        stale.unlink(missing_ok=True)
    arguments = ["quantize", str(source), "-o", str(output), *MODES[mode], "--calibration", str(calibration)]
    # the CLI in a fresh process that reports its own peak resident memory as it exits
    script = ("import resource, sys\nfrom edgeopt.cli import entry_point\ntry:\n    status = entry_point(sys.argv[1:])\n"
              "finally:\n    print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
              "sys.exit(status)")
    started = time.perf_counter()
    finished = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    peaks = [line.split()[1] for line in finished.stderr.splitlines() if line.startswith("PEAK_KB ")]
    peak_mb = int(peaks[-1]) / 1024 if peaks else float("nan")
    if finished.returncode:
        lines = [line for line in finished.stderr.strip().splitlines() if not line.startswith("PEAK_KB")]
        return {"mode": mode, "error": (lines or ["?"])[-1], "seconds": seconds}
    files = sorted(p.name for p in CACHE.glob(f"large_{mode}.onnx*"))
    size = sum((CACHE / name).stat().st_size for name in files)
    return {"mode": mode, "seconds": round(seconds, 1), "peak_mb": round(peak_mb), "bytes": size,
            "files": files}


def fidelity(source: pathlib.Path, mode: str, held_out: pathlib.Path) -> float:
    from edgeopt.fidelity import cosine_per_sample
    from edgeopt.runtimes.onnxruntime import make_session

    feed = {"x": np.load(held_out)["x"]}
    reference = make_session(str(source)).run(None, feed)[0]
    quantized = make_session(str(CACHE / f"large_{mode}.onnx")).run(None, feed)[0]
    return float(cosine_per_sample(reference, quantized).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    args = parser.parse_args()
    source = CACHE / "large_mlp.onnx"
    if not source.exists():
        build(source)
    calibration, held_out = CACHE / "calibration.npz", CACHE / "held_out.npz"
    data(calibration, 1, 32)
    data(held_out, 2, 16)
    source_bytes = sum(p.stat().st_size for p in CACHE.glob("large_mlp.onnx*"))
    print(f"source: {source_bytes / 1e9:.2f} GB ({LAYERS} MatMul {WIDTH}x{WIDTH}, external data)")
    print("| mode | optimizer s | peak MB | output GB | files | mean sample cosine |")
    print("|---|---|---|---|---|---|")
    rows = []
    for mode in args.modes:
        row = run_mode(source, mode, calibration)
        if "error" not in row:
            row["cosine"] = round(fidelity(source, mode, held_out), 5)
            print(f"| {mode} | {row['seconds']} | {row['peak_mb']} | {row['bytes'] / 1e9:.2f} | "
                  f"{', '.join(row['files'])} | {row['cosine']} |", flush=True)
        else:
            print(f"| {mode} | failed: {row['error']} |", flush=True)
        rows.append(row)
    run = {"command": "python -m benchmarks.large_model", "date": time.strftime("%Y-%m-%d"),
           "model": f"{LAYERS} MatMul+Relu layers {WIDTH} wide, {source_bytes / 1e9:.2f} GB of float32 weights "
                    "in external data, seeded random weights, 32 calibration and 16 held-out rows of |N(0,1)|",
           "rows": rows}
    (pathlib.Path(__file__).parent / "large_model.json").write_text(json.dumps(run, indent=1) + "\n")


if __name__ == "__main__":
    main()
