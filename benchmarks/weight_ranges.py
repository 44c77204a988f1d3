"""edgeopt's default int8 with each weight range, on the benchmark's cases, in one run.

    python -m benchmarks.weight_ranges mobilenet-v2-fashion default-cnn [--ranges safe half]

Prints, per case and range, the optimizer's time and the held-out score the benchmark uses
(top-1 / agreement / cosine, SQNR). ``full`` saturates on x86 CPUs without VNNI, so its numbers
there are not what a VNNI or ARM CPU would give.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
import time

import edgeopt

from . import cases as registry
from . import thirdparty  # noqa: F401 (registers the third-party cases)
from .__main__ import fidelity_outputs, outputs_of, score


def measure(name: str, weight_range: str, folder: pathlib.Path) -> dict:
    case = registry.CASES[name]()
    start = time.perf_counter()
    result = edgeopt.quantize(str(case.model), edgeopt.Int8Config(weight_range=weight_range),
                              calibration=case.calibration)
    seconds = time.perf_counter() - start
    path = folder / f"{name}.{weight_range}.onnx"
    result.save(path)
    if case.metric == "fidelity":
        from .thirdparty_fidelity import fidelity

        reference, _ = fidelity_outputs(str(case.model), case.evaluation)
        outputs, _ = fidelity_outputs(str(path), case.evaluation)
        scores = fidelity(reference, outputs, case.classifier_outputs)
    else:
        scores = score(case.metric, outputs_of(str(path), case.evaluation), outputs_of(str(case.model), case.evaluation),
                       case.evaluation.labels)
    return {"seconds": seconds, **{k: v for k, v in scores.items() if isinstance(v, float)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="+", choices=sorted(registry.CASES))
    parser.add_argument("--ranges", nargs="+", default=["safe", "half"], choices=edgeopt.config.WEIGHT_RANGE_CHOICES)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        for name in args.cases:
            for weight_range in args.ranges:
                values = measure(name, weight_range, pathlib.Path(folder))
                print(name, weight_range, " ".join(f"{k}={v:.4f}" for k, v in values.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
