"""Turn results.json into RESULTS.md (tables, edgeopt/anchor ratios, targets) and results.png."""

from __future__ import annotations

import json
import pathlib

from .optimize import EDGEOPT_INT8

METRIC_NAMES = {"top1": "top-1", "agreement": "top-1 agreement with float", "cosine": "mean embedding cosine",
                "vad": "speech/no-speech agreement with float"}


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _value(value, metric: str) -> str:
    """A metric as the table prints it: cosines as numbers, the rest as percentages."""
    return f"{value:.4f}" if metric == "cosine" else _pct(value)


def _change(value, base, metric: str) -> str:
    return f"{value - base:+.4f}" if metric == "cosine" else f"{100 * (value - base):+.2f}"


def _difference(value, base, metric: str) -> str:
    """A change with its unit: cosines as numbers, the rest in percentage points."""
    return _change(value, base, metric) + ("" if metric == "cosine" else " points")


def _case_table(case: dict) -> list[str]:
    rows = case["rows"]
    base = rows["float"]
    unit = "change" if case["metric"] == "cosine" else "change (points)"
    # Labelled cases also show top-1 agreement with float: fewer borderline images flip by chance
    # in it than in accuracy, so it says more about how close a variant is to float.
    agreement = case["metric"] == "top1"
    lines = [f"| variant | {METRIC_NAMES[case['metric']]} | {unit} | "
             + ("agrees with float | " if agreement else "")
             + "worst cosine | SQNR dB | 1 thread ms median (p90) | x float | 2 threads ms median (p90) | x float | "
             "size KB | x float | gzip KB | optimizer s | peak MB |", "|" + "---|" * (15 if agreement else 14)]
    for name, r in rows.items():
        if r.get("error"):
            lines.append(f"| {name} | failed: {r['error']} |" + " |" * (13 if agreement else 12))
            continue
        l1, l2 = r["latency_1t"], r["latency_2t"]
        sqnr = "" if name == "float" else f"{r['sqnr_db']:.1f}"
        cosine = "" if name == "float" else f"{r['cosine_worst']:.4f}"
        peak = "" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(
            f"| {name} | {_value(r['metric'], case['metric'])} | {_change(r['metric'], base['metric'], case['metric'])} | "
            + (f"{_pct(r.get('agreement'))} | " if agreement else "") + f"{cosine} | {sqnr} | "
            f"{l1['median']:.3f} ({l1['p90']:.3f}) | {l1['median'] / base['latency_1t']['median']:.2f} | "
            f"{l2['median']:.3f} ({l2['p90']:.3f}) | {l2['median'] / base['latency_2t']['median']:.2f} | "
            f"{r['size']['raw_bytes'] / 1000:.1f} | {r['size']['raw_bytes'] / base['size']['raw_bytes']:.3f} | "
            f"{r['size']['gzip_bytes'] / 1000:.1f} | {r['seconds']:.1f} | {peak} |")
    return lines


#: An anchor whose file is at least this share of float's quantized nothing (it returned the model
#: unchanged, as NNCF and onnxruntime's dynamic quantizer do when all compute sits in If branches).
UNQUANTIZED_SIZE = 0.9


def quantized_nothing(case: dict, name: str) -> bool:
    row, base = case["rows"][name], case["rows"]["float"]
    return row["size"]["raw_bytes"] >= UNQUANTIZED_SIZE * base["size"]["raw_bytes"]


def best_anchor(case: dict, static_only: bool = True) -> tuple[str, dict] | None:
    """The most accurate anchor that ran and actually quantized the model (ties: the faster)."""
    anchors = {n: r for n, r in case["rows"].items() if not r.get("error") and
               (n.startswith("onnxruntime static") or n == "nncf ptq" or (not static_only and "dynamic" in n))
               and not quantized_nothing(case, n)}
    if not anchors:
        return None
    name = max(anchors, key=lambda n: (round(anchors[n]["metric"], 6), -anchors[n]["latency_1t"]["median"]))
    return name, anchors[name]


def _comparison(case: dict) -> list[str]:
    ours = case["rows"].get(EDGEOPT_INT8)
    best = best_anchor(case)
    if ours is None or ours.get("error") or best is None:
        return ["No comparison: edgeopt int8 failed, or no static anchor ran and quantized this model (an "
                f"anchor whose file is {UNQUANTIZED_SIZE}x float or larger returned it unquantized; see the table)."]
    name, anchor = best
    text = (f"edgeopt int8 (defaults) against the most accurate static anchor, **{name}**: "
            f"{METRIC_NAMES[case['metric']]} {_difference(ours['metric'], anchor['metric'], case['metric'])} "
            f"({ours['metric'] / anchor['metric']:.4f}x), latency "
            f"{ours['latency_1t']['median'] / anchor['latency_1t']['median']:.2f}x at 1 thread and "
            f"{ours['latency_2t']['median'] / anchor['latency_2t']['median']:.2f}x at 2, size "
            f"{ours['size']['raw_bytes'] / anchor['size']['raw_bytes']:.2f}x.")
    split = (ours.get("paired") or {}).get(name)
    if split:
        text += (f" Of the {split['only_ours'] + split['only_theirs']} samples only one of the two gets right, "
                 f"edgeopt has {split['only_ours']} and {name} {split['only_theirs']} (two-sided sign test "
                 f"p = {split['p_value']:.2f}; p above 0.05 means the difference is within chance).")
    flips = (ours.get("paired") or {}).get("float")
    if flips and case["metric"] == "top1":
        text += (f" Against float: {flips['only_theirs']} samples float gets right and edgeopt int8 does not, "
                 f"{flips['only_ours']} the other way.")
    return [text]


def _decisions(case: dict) -> list[str]:
    """What edgeopt's static modes chose on this model (each is kept only when it measurably helps)."""
    parts = []
    for name, r in case["rows"].items():
        d = r.get("decisions") or {}
        if "weight_rounding" in d:
            method = "".join(f"{d[key]} {label}, " for key, label in (("scope", "scope"), ("calibration_method", "ranges"))
                             if key in d)
            why = d.get("kept_float_why") or {}
            why = f" ({', '.join(f'{count} {kind}' for kind, count in why.items())})" if why else ""
            parts.append(f"{name.removeprefix('edgeopt ')}: {method}{d['weight_rounding']} rounding, bias correction "
                         f"{'on' if d.get('bias_correction') else 'off'}, {d.get('kept_float', 0)} tensors kept "
                         f"float{why}")
    return ["edgeopt's choices: " + "; ".join(parts) + ".", ""] if parts else []


def targets(results: dict) -> list[str]:
    cases = {c["name"]: c for c in results["cases"]}
    lines = ["| target | measured | met |", "|---|---|---|"]

    def row(text, measured, met):
        lines.append(f"| {text} | {measured} | {'yes' if met else '**no**'} |")

    mobilenet = cases.get("mobilenet-v2-fashion")
    if mobilenet and not mobilenet["rows"].get(EDGEOPT_INT8, {}).get("error"):
        base, ours = mobilenet["rows"]["float"], mobilenet["rows"][EDGEOPT_INT8]
        change = 100 * (ours["metric"] - base["metric"])
        row("MobileNetV2-Fashion int8 top-1 within 0.5 point of float", f"{change:+.2f} points", change >= -0.5)
        ratio = ours["latency_1t"]["median"] / base["latency_1t"]["median"]
        row("MobileNetV2-Fashion int8 latency <= 0.6x float (1 thread)", f"{ratio:.2f}x", ratio <= 0.6)
        size = ours["size"]["raw_bytes"] / base["size"]["raw_bytes"]
        row("MobileNetV2-Fashion int8 size <= 0.27x float", f"{size:.3f}x", size <= 0.27)
    for case in results["cases"]:
        ours = case["rows"].get(EDGEOPT_INT8)
        best = best_anchor(case)
        if ours is None or ours.get("error"):
            continue
        if best is None:
            lines.append(f"| {case['name']}: int8 as accurate as the best anchor | no anchor both ran and "
                         "quantized this model | n/a |")
            continue
        name, anchor = best
        delta = ours["metric"] - anchor["metric"]
        ratio = ours["latency_1t"]["median"] / anchor["latency_1t"]["median"]
        split = (ours.get("paired") or {}).get(name)
        chance = f" (sign test p = {split['p_value']:.2f})" if split else ""
        row(f"{case['name']}: int8 as accurate as the best anchor ({name})",
            f"{_difference(ours['metric'], anchor['metric'], case['metric'])}{chance}", delta >= 0)
        row(f"{case['name']}: int8 latency within 5% of that anchor", f"{ratio:.2f}x", ratio <= 1.05)
    minilm = cases.get("minilm")
    if minilm and not minilm["rows"].get("edgeopt dynamic", {}).get("error"):
        dyn, base = minilm["rows"]["edgeopt dynamic"], minilm["rows"]["float"]
        row("MiniLM dynamic: embedding cosine >= 0.99 (worst sentence)", f"{dyn['cosine_worst']:.4f}",
            dyn["cosine_worst"] >= 0.99)
        ratio = dyn["latency_1t"]["median"] / base["latency_1t"]["median"]
        row("MiniLM dynamic: latency <= 0.7x float (1 thread)", f"{ratio:.2f}x", ratio <= 0.7)
    return lines


SUMMARY_START, SUMMARY_END = "<!-- benchmark-summary:start -->", "<!-- benchmark-summary:end -->"


def summary(results: dict) -> list[str]:
    """One line per model for the README: edgeopt's int8 and dynamic against float and the best anchor."""
    lines = [f"`{results['command']}`, {results['date']} (single-sample latency, 1 thread, ratios to float "
             "measured in the same run):", "",
             "| model | metric | float | edgeopt int8 | latency | size | best static anchor | its latency | "
             "edgeopt dynamic | latency |", "|" + "---|" * 10]

    def cell(row, base, metric):
        if not row or row.get("error"):
            return "failed", ""
        return (f"{_value(row['metric'], metric)} ({_change(row['metric'], base['metric'], metric)})",
                f"{row['latency_1t']['median'] / base['latency_1t']['median']:.2f}x")

    for case in results["cases"]:
        rows, base = case["rows"], case["rows"]["float"]
        metric = case["metric"]
        ours, ours_latency = cell(rows.get(EDGEOPT_INT8), base, metric)
        size = "" if not rows.get(EDGEOPT_INT8) or rows[EDGEOPT_INT8].get("error") else \
            f"{rows[EDGEOPT_INT8]['size']['raw_bytes'] / base['size']['raw_bytes']:.3f}x"
        best = best_anchor(case)
        anchor, anchor_latency = cell(best[1], base, metric) if best else ("none ran and quantized it", "")
        if best:
            anchor = f"{best[0]}: {anchor}"
        dynamic, dynamic_latency = cell(rows.get("edgeopt dynamic"), base, metric)
        name = case["name"] if case.get("date") == results["date"] else \
            f"{case['name']} (measured {case.get('date', 'earlier')}, earlier code)"
        lines.append(f"| {name} | {METRIC_NAMES[metric]} | {_value(base['metric'], metric)} | {ours} | "
                     f"{ours_latency} | {size} | {anchor} | {anchor_latency} | {dynamic} | {dynamic_latency} |")
    return lines


def update_readme(results: dict, readme: pathlib.Path) -> None:
    """Replace the README's summary block (between the markers) with the current numbers."""
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = text.find(SUMMARY_START), text.find(SUMMARY_END)
    if start < 0 or end < start:
        return
    block = "\n".join([SUMMARY_START, ""] + summary(results) + ["", SUMMARY_END])
    readme.write_text(text[:start] + block + text[end + len(SUMMARY_END):])


def figure(results: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = results["cases"]
    fig, axes = plt.subplots(len(cases), 2, figsize=(11, 3.2 * len(cases)), squeeze=False)
    for (left, right), case in zip(axes, cases):
        base = case["rows"]["float"]
        for name, r in case["rows"].items():
            if r.get("error"):
                continue
            colour = "black" if name == "float" else ("tab:blue" if name.startswith("edgeopt") else "tab:orange")
            y = 100 * r["metric"]
            left.scatter(r["size"]["raw_bytes"] / base["size"]["raw_bytes"], y, color=colour, s=18)
            right.scatter(r["latency_1t"]["median"] / base["latency_1t"]["median"], y, color=colour, s=18)
        left.set_title(f"{case['name']}: {METRIC_NAMES[case['metric']]} vs size", fontsize=9)
        right.set_title(f"{case['name']}: {METRIC_NAMES[case['metric']]} vs latency (1 thread)", fontsize=9)
        left.set_xlabel("size / float")
        right.set_xlabel("latency / float")
        right.set_xscale("log")
        left.set_ylabel("%")
    fig.legend(handles=[plt.Line2D([], [], marker="o", ls="", color=c, label=l) for c, l in
                        (("black", "float"), ("tab:blue", "edgeopt"), ("tab:orange", "anchors"))], loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def reference_only(results: dict) -> dict:
    """The results with only the reference group's cases: its tables, targets, README summary and
    figure are about those; the third-party group renders its own section."""
    return {**results, "cases": [c for c in results.get("cases", []) if c.get("group", "reference") == "reference"]}


def large_model_section(path: pathlib.Path) -> list[str]:
    """The table ``python -m benchmarks.large_model`` wrote (a model over protobuf's 2 GiB limit)."""
    if not path.exists():
        return []
    run = json.loads(path.read_text())
    lines = ["## A model over 2 GB", "", f"`{run['command']}`, {run['date']}: {run['model']}. Each mode is the "
             "`edgeopt quantize` command in a fresh process; peak is its resident memory.", "",
             "| mode | optimizer s | peak MB | output GB | files | mean sample cosine |", "|---|---|---|---|---|---|"]
    for row in run["rows"]:
        if "error" in row:
            lines.append(f"| {row['mode']} | failed: {row['error']} | | | | |")
        else:
            lines.append(f"| {row['mode']} | {row['seconds']} | {row['peak_mb']} | {row['bytes'] / 1e9:.2f} | "
                         f"{', '.join(row['files'])} | {row['cosine']} |")
    return lines + [""]


def qat_section(path: pathlib.Path) -> list[str]:
    """The tables ``python -m benchmarks.qat`` wrote: QAT against float, post-training int8, NNCF's QAT."""
    from .runs import heading

    if not path.exists():
        return []
    run = json.loads(path.read_text())
    tuning = run["fine_tuning"]
    lines = ["## Quantization-aware training", "",
             f"`{run['command'].strip()}`, {run['date']}: {run['machine']}. Every fine-tuned variant: the same "
             f"training images in the same seeded order and flips, {tuning['loss']}, {tuning['optimizer']} at "
             f"{tuning['learning_rate']}, batches of {tuning['batch']}, {tuning['epochs']} epoch; fine-tuning "
             "seconds on this machine's 2 cores. Sign tests pair edgeopt's QAT with each other row on the same "
             "images (samples only one of the two gets right). Latency: 1 thread, interleaved.", ""]
    for case in run["cases"]:
        base = case["rows"][0]
        earlier = case.get("command", run["command"]).strip() != run["command"].strip()
        lines += [heading(case), "",
                  (f"Measured by `{case['command'].strip()}` on {case['date']}. " if earlier else "") +
                  f"{case['training_images']:,} training images, {case['evaluation_samples']:,} test images. "
                  f"The trained QAT model in PyTorch (eval mode, the integer kernels' arithmetic) against its "
                  f"ONNX Runtime int8 model: top-1 agreement {100 * case['fake_quant_top1_agreement']:.2f}%"
                  f"{', every logit equal' if case.get('fake_quant_logits_equal') else ''}. ONNX Runtime runs the same kernels for the "
                  f"QAT model as for post-training int8: {'yes' if case['same_kernels'] else 'no'} "
                  f"({', '.join(f'{k} x{v}' for k, v in sorted(case['kernels']['edgeopt QAT int8'].items()))}).", "",
                  "| variant | top-1 | change | optimizer s (fine-tuning) | latency ms (x float) | size KB | edgeopt QAT: only "
                  "QAT right / only this right (p) |", "|---|---|---|---|---|---|---|"]
        ours = next(row for row in case["rows"] if row["against"])
        for row in case["rows"]:
            latency = row["latency_ms"]
            timing = "" if latency is None else \
                f"{latency['median']:.3f} ({latency['median'] / base['latency_ms']['median']:.2f}x)"
            split = ours["against"].get(row["variant"])
            versus = "" if split is None else \
                f"{split['only_ours']} / {split['only_theirs']} (p = {split['p_value']:.2f})"
            lines.append(f"| {row['variant']} | {100 * row['top1']:.2f}% | {100 * (row['top1'] - base['top1']):+.2f} "
                         f"| {row['seconds'] or ''} | {timing} | {row['size_bytes'] / 1000:.1f} | {versus} |")
        lines.append("")
    return lines


def render(results: dict, here: pathlib.Path) -> None:
    from .thirdparty_report import section

    everything, results = results, reference_only(results)
    lines = ["# edgeopt benchmark results", "",
             f"Generated by `{results['command']}` on {results['date']}: {results['machine']}.", "",
             "Every row was measured in that run. Latency: single-sample inference on ONNX Runtime, median "
             "(p90), rounds interleaved across a model's variants. Optimizer time and peak memory: each "
             "optimizer ran in a fresh process. Anchors got the same model and calibration data as edgeopt. "
             "Figure: [results.png](results.png) (accuracy against size and against latency).", ""]
    for case in results["cases"]:
        earlier = case.get("date") != results["date"]
        when = (f"**Measured on {case.get('date', 'an earlier day')} by an earlier run (earlier code), not in "
                "the run above.** ") if earlier else ""
        lines += [f"## {case['title']}", "", f"{when}{case['note']}.", ""] + _case_table(case) + [""]
        lines += _comparison(case) + [""] + _decisions(case)
    lines += ["## Targets", ""] + targets(results) + [""]
    reading = here / "READING.md"
    if reading.exists():
        lines += ["## Reading the table", "", reading.read_text().strip(), ""]
    lines += large_model_section(here / "large_model.json")
    lines += qat_section(here / "qat.json")
    from .compress import section as compress_section
    from .prune import section as prune_section

    lines += prune_section(here / "prune.json")
    lines += compress_section(here / "compress.json")
    from .tflite import section as tflite_section

    lines += tflite_section(here / "tflite.json")
    lines += section(everything)
    (here / "RESULTS.md").write_text("\n".join(lines))
    figure(results, here / "results.png")
    update_readme(results, here.parent / "README.md")
    from .thirdparty_report import update_readme as update_thirdparty_readme

    update_thirdparty_readme(everything, here.parent / "README.md")
