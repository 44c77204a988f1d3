"""Run edgeopt's reference benchmark and write benchmarks/RESULTS.md, results.json and results.png.

    python -m benchmarks                       # the reference cases (about 25 minutes on 2 cores)
    python -m benchmarks --group thirdparty    # the third-party model suite (benchmarks/thirdparty.py)
    python -m benchmarks --group all           # both
    python -m benchmarks --quick               # two cases, 1,000 samples, fewer variants (about 1 minute)
    python -m benchmarks --only minilm silero-vad
    python -m benchmarks --render              # rewrite RESULTS.md/png from results.json

Each optimizer runs in a fresh process (wall time, peak memory, a timeout); every variant is scored
on the same evaluation data against the same float model; latencies of a case's variants are
measured in interleaved rounds in one run, so their ratios share this machine's noise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

from . import cases as case_registry
from .optimize import EDGEOPT_INT8, THIRDPARTY_VARIANTS, VARIANTS

HERE = pathlib.Path(__file__).resolve().parent
TIMEOUT_S = 300
QUICK_CASES = ("default-cnn", "mobilenet-v2-fashion")
QUICK_VARIANTS = ("edgeopt float16", "edgeopt dynamic", EDGEOPT_INT8, "edgeopt int8 integer-only",
                  "onnxruntime static U8S8 minmax", "onnxruntime dynamic")



def produce(case, variants, work: pathlib.Path) -> dict[str, dict]:
    """Every optimized model of a case, each made in its own process."""
    calibration = work / "calibration.npz"
    case.calibration.save(calibration)
    made = {"float": {"path": str(case.model), "seconds": 0.0, "peak_mb": None, "error": None}}
    for variant in variants:
        output = work / (variant.replace(" ", "_") + ".onnx")
        command = [sys.executable, "-m", "benchmarks.optimize", variant, str(case.model), str(calibration),
                   str(output)]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=work,
                                  env={**os.environ, "PYTHONPATH": str(HERE.parent)})
            report = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else \
                {"seconds": time.perf_counter() - start, "peak_mb": None,
                 "error": (done.stderr.strip().splitlines() or ["crashed"])[-1][:200]}
        except subprocess.TimeoutExpired:
            report = {"seconds": TIMEOUT_S, "peak_mb": None, "error": f"timed out after {TIMEOUT_S} s"}
        if report["error"] is None and not output.exists():
            report["error"] = "no model written"
        report["path"] = str(output) if report["error"] is None else None
        made[variant] = report
        print(f"  {variant}: {report['seconds']:.1f} s, {report['error'] or 'ok'}", flush=True)
    return made


def outputs_of(path: str, dataset, threads: int = 2) -> list[np.ndarray]:
    from edgeopt.runtimes import open_runner

    runner = open_runner(path, threads)
    batches = [runner.run(feed) for feed in dataset.batches(64)]
    return [np.concatenate([np.asarray(b[i]).reshape(len(np.asarray(b[i])) if np.ndim(b[i]) else 1, -1)
                            for b in batches]) for i in range(len(batches[0]))]


def hits(metric: str, outputs: list[np.ndarray], reference: list[np.ndarray], labels) -> np.ndarray | None:
    """Per sample, whether the variant got it right: the label for "top1", float's class for
    "agreement"; None for the metrics that are not a count of samples."""
    predicted = outputs[0].argmax(1)
    if metric == "top1":
        return predicted == labels
    if metric == "agreement":
        return predicted == reference[0].argmax(1)
    return None


def paired(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Samples only one of two variants gets right, and the two-sided exact sign-test p-value of
    that split (the chance of a split at least this uneven if both were equally accurate)."""
    only_ours, only_theirs = int(np.sum(ours & ~theirs)), int(np.sum(theirs & ~ours))
    n, k = only_ours + only_theirs, min(only_ours, only_theirs)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0
    return {"only_ours": only_ours, "only_theirs": only_theirs, "p_value": p}


def score(metric: str, outputs: list[np.ndarray], reference: list[np.ndarray], labels) -> dict:
    from edgeopt import fidelity

    out, ref = outputs[0], reference[0]
    cosine = fidelity.cosine_per_sample(ref, out)
    result = {"sqnr_db": fidelity.sqnr_db(ref, out), "cosine_worst": float(cosine.min()),
              "cosine_mean": float(cosine.mean())}
    if metric == "top1":
        result["metric"] = float(np.mean(out.argmax(1) == labels))
        result["agreement"] = fidelity.top1_agreement(ref, out)
    elif metric == "agreement":
        result["metric"] = fidelity.top1_agreement(ref, out)
    elif metric == "cosine":
        result["metric"] = float(cosine.mean())
    elif metric == "vad":
        result["metric"] = float(np.mean((out.ravel() > 0.5) == (ref.ravel() > 0.5)))
        result["max_abs_difference"] = float(np.abs(out.ravel() - ref.ravel()).max())
    return result


def interleaved_latency(paths: dict[str, str], dataset, threads: int, rounds: int, runs: int,
                        opener=None) -> dict:
    """Single-sample latency of every variant, rounds interleaved across them so that their ratios
    share this machine's noise; ``opener(path, threads)`` loads a runner (edgeopt's by default)."""
    from edgeopt.runtimes import open_runner

    opener = opener or open_runner
    runners = {name: opener(path, threads) for name, path in paths.items()}
    feeds = {name: [r.prepare(f) for f in dataset.batches(1, limit=16)] for name, r in runners.items()}
    times = {name: [] for name in paths}
    for name, runner in runners.items():
        for feed in feeds[name][:5]:
            runner.run_prepared(feed)
    for _ in range(rounds):
        for name, runner in runners.items():
            for i in range(runs):
                start = time.perf_counter()
                runner.run_prepared(feeds[name][i % len(feeds[name])])
                times[name].append((time.perf_counter() - start) * 1000.0)
    return {name: {"median": float(np.median(t)), "p90": float(np.percentile(t, 90))} for name, t in times.items()}


def runner_for(path: str, threads: int):
    """edgeopt's runner (it decodes integer-only models' outputs), or a plain onnxruntime session
    for a file that onnx's checker rejects but onnxruntime runs (onnxruntime's quantizer writes
    DequantizeLinear with an axis into opset-12 models); the second element says which."""
    from edgeopt.errors import EdgeoptError
    from edgeopt.runtimes import open_runner

    from .thirdparty_fidelity import PlainRunner

    try:
        return open_runner(path, threads), None
    except EdgeoptError as exc:
        return PlainRunner(path, threads), str(exc).split(": ", 1)[-1][:160]


def fidelity_outputs(path: str, dataset, threads: int = 2) -> tuple[dict[str, np.ndarray], str | None]:
    """Every output per sample (integer-only models decoded to float), for the fidelity metric,
    and the checker's complaint when the file needed a plain onnxruntime session."""
    from .thirdparty_fidelity import collect

    runner, complaint = runner_for(path, threads)
    return collect(runner.run, dataset, runner.output_names), complaint


def run_fidelity_case(case, made: dict, quick: bool) -> dict:
    """A third-party case: every variant scored on every output (benchmarks/thirdparty_fidelity.py);
    latency at 1 thread only, in interleaved rounds."""
    from .thirdparty_fidelity import fidelity

    evaluation = case.evaluation
    reference, _ = fidelity_outputs(str(case.model), evaluation)
    rows = {}
    for variant, report in made.items():
        row = {"seconds": report["seconds"], "peak_mb": report["peak_mb"], "error": report["error"],
               "decisions": report.get("decisions") or {}}
        if report["path"]:
            try:
                outputs, complaint = fidelity_outputs(report["path"], evaluation)
                row.update(fidelity(reference, outputs, case.classifier_outputs))
                row["size"] = file_sizes(report["path"])
                if complaint:
                    row["checker"] = complaint
            except Exception as exc:  # noqa: BLE001 (recorded in the table)
                row["error"] = f"does not run in onnxruntime: {short_error(exc)}"
        rows[variant] = row
    runnable = {v: made[v]["path"] for v in rows if rows[v]["error"] is None}
    latency = interleaved_latency(runnable, evaluation, 1, rounds=2 if quick else 4, runs=10,
                                  opener=lambda path, threads: runner_for(path, threads)[0])
    for variant, value in latency.items():
        rows[variant]["latency_1t"] = value
    return {"name": case.name, "title": case.title, "metric": case.metric, "note": case.note,
            "samples": len(evaluation), "info": case.info, "rows": rows}


def short_error(exc: Exception) -> str:
    """An onnxruntime error's reason without its file path (which would use up the cell)."""
    import re

    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"Load model from \S+ failed:", "", text)
    return re.sub(r"/\S+/", "", text).strip()[:220]


def file_sizes(path: str) -> dict:
    import gzip

    data = pathlib.Path(path).read_bytes()
    return {"raw_bytes": len(data), "gzip_bytes": len(gzip.compress(data, 9, mtime=0))}


def run_case(name: str, quick: bool, work: pathlib.Path) -> dict:
    print(f"{name}: preparing model and data", flush=True)
    case = case_registry.CASES[name]()
    evaluation = case.evaluation
    if quick and len(evaluation) > 1000:
        evaluation = evaluation.subset(np.arange(1000))
    work = work / name
    work.mkdir(parents=True, exist_ok=True)
    if case.metric == "fidelity":
        variants = [v for v in THIRDPARTY_VARIANTS if v in QUICK_VARIANTS] if quick else THIRDPARTY_VARIANTS
        return run_fidelity_case(case, produce(case, variants, work), quick)
    made = produce(case, QUICK_VARIANTS if quick else VARIANTS, work)
    reference = outputs_of(str(case.model), evaluation)
    rows, correct = {}, {}
    for variant, report in made.items():
        row = {"seconds": report["seconds"], "peak_mb": report["peak_mb"], "error": report["error"],
               "decisions": report.get("decisions") or {}}
        if report["path"]:
            try:
                outputs = outputs_of(report["path"], evaluation)
                row.update(score(case.metric, outputs, reference, evaluation.labels))
                correct[variant] = hits(case.metric, outputs, reference, evaluation.labels)
                row["size"] = file_sizes(report["path"])
            except Exception as exc:
                row["error"] = f"does not run in onnxruntime: {str(exc).splitlines()[0][:160]}"
        rows[variant] = row
    if correct.get(EDGEOPT_INT8) is not None:
        rows[EDGEOPT_INT8]["paired"] = {variant: paired(correct[EDGEOPT_INT8], hit) for variant, hit in correct.items()
                                        if variant != EDGEOPT_INT8 and hit is not None}
    runnable = {v: made[v]["path"] for v in rows if rows[v]["error"] is None}
    heavy = case.metric in ("agreement", "cosine") or "mobilenet" in name
    for threads in (1, 2):
        # 160 timed runs per variant on the heavy models (320 on the light ones): with fewer, two
        # copies of one model differed by 5% in one run.
        latency = interleaved_latency(runnable, evaluation, threads, rounds=2 if quick else 8,
                                      runs=20 if heavy else 40)
        for variant, value in latency.items():
            rows[variant][f"latency_{threads}t"] = value
    return {"name": name, "title": case.title, "metric": case.metric, "note": case.note,
            "samples": len(evaluation), "rows": rows}


def machine() -> str:
    cpu = "unknown CPU"
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import onnx
    import onnxruntime

    import edgeopt

    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, onnx {onnx.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}, edgeopt {edgeopt.__version__}")


def selected_cases(args) -> list[str]:
    """The cases to run: --only, else --quick's two, else every case of --group."""
    if args.only:
        return args.only
    if args.quick and args.group == "reference":
        return list(QUICK_CASES)
    return [n for n, g in case_registry.GROUPS.items() if args.group in ("all", g)]


def merge(previous: dict, fresh: dict[str, dict], args) -> dict:
    """Results of this run, keeping the previous run's cases that this run did not measure (a
    group's run leaves the other group's numbers alone); each group keeps when and where it ran."""
    cases = {c["name"]: c for c in previous.get("cases", [])}
    cases.update(fresh)
    command = "python -m benchmarks" + (f" --group {args.group}" if args.group != "reference" else "") + \
        (" --quick" if args.quick else "") + (f" --only {' '.join(args.only)}" if args.only else "")
    stamp = {"date": datetime.date.today().isoformat(), "machine": machine(), "quick": args.quick,
             "command": command}
    groups = dict(previous.get("groups", {}))
    for group in {case_registry.GROUPS[name] for name in fresh}:
        groups[group] = stamp
    results = {**previous, "groups": groups,
               "cases": [cases[n] for n in case_registry.CASES if n in cases]}
    for case in results["cases"]:
        case.setdefault("group", case_registry.GROUPS.get(case["name"], "reference"))
    if "reference" in groups:
        results.update(groups["reference"])  # the top-level stamp stays the reference run's
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="edgeopt reference benchmark")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--group", choices=("reference", "thirdparty", "all"), default="reference",
                        help="which cases: the reference models (default), the third-party suite, or all")
    parser.add_argument("--only", nargs="+", choices=sorted(case_registry.CASES))
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md and the figure")
    parser.add_argument("--work", type=pathlib.Path, default=HERE / ".cache" / "runs")
    args = parser.parse_args(argv)
    results_path = HERE / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else {}
    if not args.render:
        fresh = {}
        for name in selected_cases(args):
            started = time.perf_counter()
            fresh[name] = run_case(name, args.quick, args.work)
            fresh[name]["benchmark_seconds"] = round(time.perf_counter() - started)
            fresh[name]["date"] = datetime.date.today().isoformat()  # a later --only run keeps this case's
            fresh[name]["group"] = case_registry.GROUPS[name]
        previous = merge(previous, fresh, args)
        results_path.write_text(json.dumps(previous, indent=2) + "\n")
    from .report import render

    render(previous, HERE)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
