"""What every case-by-case benchmark (qat, prune, compress) does around its cases: run the
chosen ones one after the other in a temporary folder, merge them into the JSON file with the
cases an earlier run left (each case keeps the command and date that made it), write the file
after each case (a run cut short keeps what it finished), and render RESULTS.md again."""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import sys
import tempfile


def command_line(module: str, argv) -> str:
    return f"python -m benchmarks.{module} " + " ".join(sys.argv[1:] if argv is None else argv)


def run_cases(path: pathlib.Path, command: str, chosen: list[str], order: tuple[str, ...], run_one,
              extra: dict | None = None) -> dict:
    """``run_one(name, folder)`` for each name in ``chosen``; returns the merged results."""
    from .__main__ import machine
    from .report import render

    previous = json.loads(path.read_text()) if path.exists() else {"cases": []}
    results = {"command": command, "date": datetime.date.today().isoformat(), "machine": machine(), **(extra or {}),
               "cases": [c for c in previous["cases"] if c["case"] not in chosen]}
    for name in chosen:
        print(f"{name} ...", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            case = run_one(name, pathlib.Path(folder))
        if "model" in case:  # which file made the numbers: the fine-tuned cases are made again per machine
            case["model_sha256"] = hashlib.sha256(pathlib.Path(case.pop("model")).read_bytes()).hexdigest()
        results["cases"].append({**case, "command": command, "date": results["date"]})
        print(json.dumps({row["variant"]: row["top1"] for row in case["rows"]}), flush=True)
        results["cases"].sort(key=lambda c: order.index(c["case"]))
        path.write_text(json.dumps(results, indent=2) + "\n")
    here = path.parent
    render(json.loads((here / "results.json").read_text()), here)
    return results


def heading(case: dict, detail: str = "") -> str:
    """A case's table heading: its title, ``detail``, and the start of its model's sha256 when known
    (benchmarks.models.finetune makes the fine-tuned models again on each machine, and not bit for bit)."""
    notes = [part for part in (detail, case.get("model_sha256", "")[:12] and f"model sha256 {case['model_sha256'][:12]}")
             if part]
    return f"### {case['title']}" + (f" ({', '.join(notes)})" if notes else "")
