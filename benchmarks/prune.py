"""One-shot pruning and clustering without fine-tuning, data-free against data-aware, then int8:
``python -m benchmarks.prune [--only default-cnn mobilenet-v2-fashion]``.

Every variant is ``edgeopt.prune`` or ``edgeopt.cluster`` on the case's float model (data-aware
ones on the case's calibration images, the same the int8 path calibrates on), then
``edgeopt.quantize`` with ``Int8Config()``. Top-1 on the case's 10,000 test images, with the
paired sign test of ``benchmarks.__main__`` (data-aware against data-free at the same setting);
sizes as ``gzip -9`` gives them, each against the dense int8 model's; in the int8 file, the
share of pruned weights still zero and the most distinct integers in one output channel.
Writes benchmarks/prune.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
CASES = ("default-cnn", "mobilenet-v2-fashion")
#: (label, verb, config fields, method); a data-aware label's data-free counterpart is the one
#: before it
VARIANTS = (
    ("magnitude 50%", "prune", {"sparsity": 0.5}, "magnitude"),
    ("data-aware 50%", "prune", {"sparsity": 0.5}, "data-aware"),
    # 50% of all the weights, each layer's share from one ranking by relative output cost
    # (compared with every layer at 50%, the row before)
    ("data-aware 50%, one ranking", "prune", {"sparsity": 0.5, "ranking": "global"}, "data-aware"),
    # the same pruning, then its weights shared out on an entropy-constrained codebook (zeros
    # kept): 3 bits on average, 1 of them the zeros' (compared with the row before)
    ("data-aware 50%, one ranking, then 128 clusters at 3 bits, global", "prune, cluster",
     ({"sparsity": 0.5, "ranking": "global"}, {"clusters": 128, "bits": 3.0, "allocation": "global"}), "data-aware"),
    ("magnitude 2:4", "prune", {"pattern": "2:4"}, "magnitude"),
    ("data-aware 2:4", "prune", {"pattern": "2:4"}, "data-aware"),
    ("magnitude 80%", "prune", {"sparsity": 0.8}, "magnitude"),
    ("data-aware 80%", "prune", {"sparsity": 0.8}, "data-aware"),
    ("data-aware 80%, one ranking", "prune", {"sparsity": 0.8, "ranking": "global"}, "data-aware"),
    ("nearest 16 clusters", "cluster", {"clusters": 16}, "nearest"),
    ("data-aware 16 clusters", "cluster", {"clusters": 16}, "data-aware"),
    # entropy-constrained (compared with plain data-aware k-means, the row before)
    ("data-aware 16 clusters at 2.75 bits", "cluster", {"clusters": 16, "bits": 2.75}, "data-aware"),
    # one rate for the model, 2.5 bits on average (compared with 2.75 bits in every layer)
    ("data-aware 16 clusters at 2.5 bits, global", "cluster", {"clusters": 16, "bits": 2.5, "allocation": "global"},
     "data-aware"),
)


def _prune_case(name: str, work: pathlib.Path) -> dict:
    import edgeopt
    from edgeopt.measure import file_size

    from . import cases
    from .__main__ import hits, outputs_of, paired

    case = cases.CASES[name]()
    labels = case.evaluation.labels
    paths, seconds, sparsity = {"float": str(case.model)}, {}, {}
    edgeopt.quantize(case.model, edgeopt.Int8Config(), calibration=case.calibration).save(work / "int8.onnx")
    paths["int8"] = str(work / "int8.onnx")
    for label, verb, fields, method in VARIANTS:
        started = time.perf_counter()
        data = case.calibration if method == "data-aware" else None
        if verb == "prune":
            result = edgeopt.prune(case.model, edgeopt.PruneConfig(method=method, **fields), calibration=data)
        elif verb == "prune, cluster":
            pruned = edgeopt.prune(case.model, edgeopt.PruneConfig(method=method, **fields[0]), calibration=data)
            result = edgeopt.cluster(pruned.model, edgeopt.ClusterConfig(method=method, **fields[1]), calibration=data)
            result.report["sparsity"] = pruned.report["sparsity"]
        else:
            result = edgeopt.cluster(case.model, edgeopt.ClusterConfig(method=method, **fields), calibration=data)
        seconds[label] = time.perf_counter() - started
        sparsity[label] = result.report.get("sparsity")
        stem = label.replace(" ", "_").replace("%", "").replace(":", "of").replace(",", "")
        result.save(work / f"{stem}.onnx")
        paths[label] = str(work / f"{stem}.onnx")
        edgeopt.quantize(result.model, edgeopt.Int8Config(), calibration=case.calibration).save(
            work / f"{stem}.int8.onnx")
        paths[f"{label} + int8"] = str(work / f"{stem}.int8.onnx")
    right = {label: hits("top1", outputs_of(path, case.evaluation), None, labels) for label, path in paths.items()}
    dense = file_size(paths["int8"])["gzip_bytes"]
    free = {data_aware: VARIANTS[i - 1][0] for i, (data_aware, *_, method) in enumerate(VARIANTS)
            if method == "data-aware"}
    rows = []
    for label, path in paths.items():
        base = label.removesuffix(" + int8")
        versus = None
        if base in free:
            other = label.replace(base, free[base])
            versus = {"against": other, **paired(right[label], right[other])}
        size = file_size(path)
        kept = _kept(paths[base], path) if label.endswith(" + int8") else {}
        rows.append({"variant": label, "top1": float(np.mean(right[label])), "sparsity": sparsity.get(base),
                     "prune_seconds": round(seconds[base], 1) if base in seconds else None,
                     "raw_bytes": size["raw_bytes"], "gzip_bytes": size["gzip_bytes"],
                     "gzip_vs_dense_int8": size["gzip_bytes"] / dense, "versus_magnitude": versus, **kept})
    return {"case": name, "title": case.title, "model": str(case.model), "evaluation_samples": len(labels), "rows": rows}


def _kept(float_path: str, int8_path: str) -> dict:
    """Read back from the int8 file (``edgeopt.read_plan``): the share of the float model's zero
    weights that are 0, and the most distinct integers of one output channel."""
    import onnx
    from onnx import numpy_helper

    import edgeopt
    from edgeopt.quantization.structure import distinct_per_row

    source = onnx.load(float_path)
    floats = {t.name: numpy_helper.to_array(t) for t in source.graph.initializer}
    nodes = {node.name: node for node in source.graph.node}
    zeros = kept = most = 0
    for (name, index), constant in edgeopt.read_plan(onnx.load(int8_path)).weights.items():
        integers = np.asarray(constant.values)
        weight = floats.get(nodes[name].input[index]) if name in nodes else None
        if weight is None or weight.shape != integers.shape or integers.ndim < 2:
            continue
        most = max(most, int(distinct_per_row(integers, constant.params.axis or 0).max()))
        zeros += int(np.sum(weight == 0))
        kept += int(np.sum(integers[weight == 0] == 0))
    return {"zeros_kept": kept / zeros if zeros else None, "max_distinct_per_channel": most}


def section(path: pathlib.Path) -> list[str]:
    """RESULTS.md's one-shot pruning tables from prune.json."""
    from .runs import heading

    if not path.exists():
        return []
    run = json.loads(path.read_text())
    lines = ["## One-shot pruning and clustering", "",
             (f"Each case's command and date are under its title; the last run's machine: {run['machine']}. No fine-tuning: `edgeopt prune` or "
             "`edgeopt cluster` on the float model (data-aware on the calibration images), then `edgeopt quantize` "
             "int8. gzip sizes against the dense int8 model's; zeros kept and distinct integers per channel read "
             "back from the int8 file; sign tests pair each data-aware row with the row before it (data-free at "
             "the same setting; for a one-ranking row, every layer at the same share; for an entropy-constrained "
             "row, the same method without the constraint)."), ""]
    for case in run["cases"]:
        base = case["rows"][0]
        made = f"`{case['command'].strip()}`, {case['date']}" if "command" in case else ""
        lines += [heading(case), "", *([made, ""] if made else []), ("| variant | top-1 | change | sparsity | zeros kept in int8 | max distinct "
                  "int8 per channel | seconds | gzip KB | gzip vs dense int8 | this row right only / the row before "
                  "right only (p) |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for row in case["rows"]:
            versus = row["versus_magnitude"]
            split = "" if versus is None else f"{versus['only_ours']} / {versus['only_theirs']} (p = {versus['p_value']:.2f})"
            sparsity = "" if row.get("sparsity") is None else f"{100 * row['sparsity']:.1f}%"
            kept = "" if row.get("zeros_kept") is None else f"{100 * row['zeros_kept']:.2f}%"
            lines.append(f"| {row['variant']} | {100 * row['top1']:.2f}% | {100 * (row['top1'] - base['top1']):+.2f} | "
                         f"{sparsity} | {kept} | {row.get('max_distinct_per_channel', '')} | "
                         f"{'' if row['prune_seconds'] is None else row['prune_seconds']} | {row['gzip_bytes'] / 1000:.1f} | "
                         f"{row['gzip_vs_dense_int8']:.3f}x | {split} |")
        lines.append("")
    return lines


def main(argv=None) -> int:
    from .runs import command_line, run_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    args = parser.parse_args(argv)
    run_cases(HERE / "prune.json", command_line("prune", argv), args.only, CASES, _prune_case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
