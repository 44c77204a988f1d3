"""What every case-by-case benchmark (qat, prune, compress) does around its cases: run the
chosen ones one after the other in a temporary folder, merge them into the JSON file with the
cases an earlier run left (each case keeps the command and date that made it), write the file
after each case (a run cut short keeps what it finished), and render RESULTS.md again."""

from __future__ import annotations

import datetime
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
        results["cases"].append({**case, "command": command, "date": results["date"]})
        print(json.dumps({row["variant"]: row["top1"] for row in case["rows"]}), flush=True)
        results["cases"].sort(key=lambda c: order.index(c["case"]))
        path.write_text(json.dumps(results, indent=2) + "\n")
    here = path.parent
    render(json.loads((here / "results.json").read_text()), here)
    return results
