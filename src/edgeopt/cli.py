"""The ``edgeopt`` command: a thin layer over the API. Only this module prints."""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys

from .config import (
    ACTIVATION_GRANULARITIES,
    BIT_ALLOCATIONS,
    CALIBRATION_CHOICES,
    CLUSTER_CODEBOOKS,
    CLUSTER_INITS,
    CLUSTER_METHODS,
    MODES,
    PRUNE_METHODS,
    PRUNE_RANKINGS,
    SCOPES,
    WEIGHT_RANGE_CHOICES,
    WEIGHT_ROUNDINGS,
    ClusterConfig,
    DynamicConfig,
    Float16Config,
    Int8Config,
    Int16x8Config,
    PruneConfig,
)
from .errors import EdgeoptError

#: --add-scales: Int8Config.shared_add_scale on (shared) or off (independent)
ADD_SCALES = ("shared", "independent")

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise EdgeoptError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgeopt", description="Make ONNX models small and fast for edge devices, measured.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each step does")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _quantize_arguments(commands)
    _prune_arguments(commands)
    _cluster_arguments(commands)
    _export_arguments(commands)
    _check_arguments(commands)
    _evaluate_and_demo_arguments(commands)
    return parser


def _check_arguments(commands) -> None:
    c = commands.add_parser("check", help="check a .tflite file against the TFLite specification and a target")
    c.add_argument("model", help=".tflite file (edgeopt's or any other)")
    c.add_argument("--target", choices=("xnnpack", "edgetpu", "gpu"),
                   help="also list what this target does not take as it stands")


def _export_arguments(commands) -> None:
    x = commands.add_parser("export", help="write an ONNX model as a .tflite file (no TensorFlow needed)")
    x.add_argument("model", help="ONNX model")
    x.add_argument("-o", "--output", required=True, help="where to write the .tflite file")
    x.add_argument("--io-layout", choices=("nchw", "nhwc"), default="nchw",
                   help="layout of 3-D to 5-D inputs and outputs (default nchw: as the ONNX model has them)")
    x.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                   help="fixed shape of an input with dynamic dimensions (a dynamic batch alone becomes 1)")
    x.add_argument("--report", help="write what was done (JSON) here")


def _quantize_arguments(commands) -> None:
    q = commands.add_parser("quantize", help="quantize an ONNX model")
    q.add_argument("model", help="float ONNX model")
    q.add_argument("-o", "--output", required=True, help="where to write the quantized model")
    q.add_argument("--mode", required=True, choices=sorted(MODES), help="quantization mode")
    q.add_argument("--calibration", help="representative data: .npz named by model input, or an image folder")
    q.add_argument("--calibration-method", choices=CALIBRATION_CHOICES,
                   help="how activation ranges are chosen (auto: the method closest to float on the check samples)")
    q.add_argument("--integer-only", action="store_true", help="int8: integer inputs/outputs, no float operator")
    q.add_argument("--activation-type", choices=("uint8", "int8"), help="int8: activation integer type")
    q.add_argument("--add-scales", choices=ADD_SCALES,
                   help="int8: one scale for each Add's two activation operands and result, so LiteRT's Adds compute "
                        "what ONNX Runtime's do (shared), or each its own (independent); default: shared when "
                        "calibrating for a .tflite output")
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    q.add_argument("--activation-granularity", choices=ACTIVATION_GRANULARITIES,
                   help="dynamic: one activation range per row (default) or per tensor")
    q.add_argument("--weight-rounding", choices=WEIGHT_ROUNDINGS,
                   help="int8/int16x8: round weights for the layer output on calibration data (default) or to nearest")
    q.add_argument("--scope", choices=SCOPES,
                   help="int8: quantize every operator with an integer kernel (all), only MatMul/Gemm inputs "
                        "(matmul-inputs), or choose (auto, the default)")
    q.add_argument("--weight-range", choices=WEIGHT_RANGE_CHOICES,
                   help="int8/dynamic: weights whose pairs x86 kernels without VNNI add exactly (safe, the "
                        "default), every weight in [-64, 64] (half), or [-127, 127], exact only with VNNI, "
                        "on ARM and on LiteRT (full)")
    q.add_argument("--attribution", action="store_true",
                   help="int8: report the output error each block of layers adds, even when the target is met")
    q.add_argument("--no-fallback", action="store_true", help="int8: never keep sensitive tensors in float")
    q.add_argument("--exclude", nargs="+", default=[], metavar="NAME", help="node names or op types to keep float")
    q.add_argument("--report", help="write the quantization report (JSON) here")


def _one_shot_arguments(commands, verb: str, done: str, help_text: str, method_help: str):
    """A one-shot compression command's parser with the arguments prune and cluster share
    (``done``: what the output is, "pruned")."""
    c = commands.add_parser(verb, help=help_text)
    c.add_argument("model", help="float ONNX model")
    c.add_argument("-o", "--output", required=True, help=f"where to write the {done} model")
    c.add_argument("--method", choices={"prune": PRUNE_METHODS, "cluster": CLUSTER_METHODS}[verb], default="auto",
                   help=f"{method_help}; auto: data-aware when --data is given")
    c.add_argument("--data", help="representative inputs: .npz named by model input, or an image folder")
    c.add_argument("--layers", nargs="+", default=[], metavar="PATTERN",
                   help=f"node-name patterns or operator types to {verb} (default: every Conv, Gemm, MatMul)")
    c.add_argument("--exclude", nargs="+", default=[], metavar="NAME", help="node names or op types to leave as is")
    c.add_argument("--report", help=f"write what {verb} did (JSON: per-layer results, layers left as they were) here")
    return c


def _prune_arguments(commands) -> None:
    p = _one_shot_arguments(commands, "prune", "pruned", "zero weights of an ONNX model in one shot (no training)",
                            "magnitude, or data-aware (needs --data; compensates the weights that stay)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of each weight set to zero (default 0.5)")
    p.add_argument("--pattern", default="unstructured",
                   help="unstructured (default), 1x4, 4x1, or N:M such as 2:4 (along input channels)")
    p.add_argument("--ranking", choices=PRUNE_RANKINGS, default="layer",
                   help="each layer its sparsity (layer, default) or --sparsity of all weights together (global: "
                        "one magnitude threshold, or with --data each weight's cost relative to its layer's output)")
    p.add_argument("--depthwise", action="store_true", help="prune depthwise convolutions too (left dense by default)")


def _cluster_arguments(commands) -> None:
    c = _one_shot_arguments(commands, "cluster", "clustered", "share a few values per output channel of each weight, in one shot",
                            "nearest, or data-aware (needs --data; weighs and compensates on the layer inputs)")
    c.add_argument("--clusters", type=int, default=16, help="distinct values per output channel, 2 to 256 (default 16)")
    c.add_argument("--codebook", choices=CLUSTER_CODEBOOKS, default="scaled",
                   help="scaled: one codebook per layer times a scale per channel (default; the same integers in "
                        "every channel after int8, which compresses); channel: each channel its own centroids; "
                        "layer: one set of values per layer")
    c.add_argument("--init", choices=CLUSTER_INITS, default="kmeans++", help="where the centroids start")
    c.add_argument("--no-preserve-sparsity", action="store_true", help="let zero weights join other clusters")
    c.add_argument("--bits", type=float, default=None,
                   help="entropy-constrained: each layer's cluster indices hold at most this many bits per weight "
                        "(below log2 of --clusters; scaled codebook), so gzip stores them in fewer")
    c.add_argument("--allocation", choices=BIT_ALLOCATIONS, default="layer",
                   help="with --bits: layer (each layer at most B) or global (B on average over all clustered "
                        "weights, one rate for the model: small sensitive layers keep more)")


def _evaluate_and_demo_arguments(commands) -> None:
    e = commands.add_parser("evaluate", help="measure size, latency, accuracy and fidelity")
    e.add_argument("model", help="ONNX model to measure")
    e.add_argument("--data", required=True, help=".npz named by model input (optional 'labels'), or image folder")
    e.add_argument("--reference", help="float model to compare outputs with")
    e.add_argument("--json", help="write the measurement (JSON) here")
    e.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    e.add_argument("--runs", type=int, default=100, help="timed single-sample runs (default 100)")
    e.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")

    d = commands.add_parser("demo", help="quantize the embedded default model every way and measure it")
    d.add_argument("--output-dir", default="edgeopt-demo", help="where models, data and tables go")
    d.add_argument("--no-qat", action="store_true",
                   help="skip the rows that fine-tune (QAT, pruning, clustering: 3 to 5 minutes)")
    d.add_argument("--json", help="also write the table (JSON) here")
    d.add_argument("--threads", type=int, default=1)


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _config(args) -> object:
    common = {"exclude": tuple(args.exclude)}
    if args.mode == "float16":
        return Float16Config(**common)
    if args.mode == "dynamic":
        if args.activation_granularity:
            common["activation_granularity"] = args.activation_granularity
        if args.weight_range:
            common["weight_range"] = args.weight_range
        return DynamicConfig(per_channel=not args.per_tensor, **common)
    options = dict(common, per_channel=not args.per_tensor, integer_only=args.integer_only,
                   fallback=not args.no_fallback, attribution=args.attribution,
                   shared_add_scale=_shared_add_scale(args))
    if args.weight_range:
        options["weight_range"] = args.weight_range
    if args.calibration_method:
        options["calibration_method"] = args.calibration_method
    if args.weight_rounding:
        options["weight_rounding"] = args.weight_rounding
    if args.mode == "int8":
        if args.scope:
            options["scope"] = args.scope
        if args.activation_type:
            options["activation_type"] = args.activation_type
        return Int8Config(**options)
    return Int16x8Config(**options)


def _shared_add_scale(args: argparse.Namespace) -> bool:
    """--add-scales, by default shared when calibrating for a .tflite file: LiteRT's XNNPACK and
    ONNX Runtime round a rescaling Add differently, and ONNX Runtime is where the plan was checked.
    A QDQ model rebuilt from its own plan keeps the scales it has."""
    if args.add_scales:
        return args.add_scales == "shared"
    return (args.mode == "int8" and args.calibration is not None
            and pathlib.Path(args.output).suffix.lower() == ".tflite")


def main(args: argparse.Namespace) -> int:
    from .model_io import check_writable, write_bytes_atomic

    if args.command == "quantize":
        from .api import quantize

        if args.mode != "int8" and (args.integer_only or args.activation_type or args.scope or args.attribution
                                    or args.add_scales):
            raise EdgeoptError("--integer-only, --activation-type, --scope, --attribution and --add-scales apply "
                               "to --mode int8 only")
        if args.weight_range and args.mode not in ("int8", "dynamic"):
            raise EdgeoptError("--weight-range applies to --mode int8 and dynamic only")
        config = _config(args)
        # int8 without --calibration: a QDQ model edgeopt wrote is rebuilt from its own plan;
        # any other model is refused by quantize with the same one-line error
        _check_outputs(args, (args.model, args.calibration))
        result = quantize(args.model, config, calibration=args.calibration)
        _write_outputs(args, result)
        r = result.report
        written = pathlib.Path(args.output).stat().st_size
        print(f"{args.output}: {args.mode}, {written:,} bytes ({written / r['size_bytes']['float']:.3f}x float)")
        if r.get("worst_output_cosine_on_calibration") is not None:
            print(f"worst output cosine on calibration data: {r['worst_output_cosine_on_calibration']:.4f}")
        for name, reason in r.get("kept_float", {}).items():
            print(f"kept float: {name}: {reason}")
        return 0

    if args.command == "export":
        return _export(args)
    if args.command == "check":
        return _check(args)
    if args.command == "prune":
        return _prune(args)
    if args.command == "cluster":
        return _cluster(args)

    if args.command == "evaluate":
        from .measure import evaluate

        if args.json:
            check_writable(args.json, inputs=(args.model, args.data, args.reference))
        result = evaluate(args.model, args.data, reference=args.reference, threads=args.threads, runs=args.runs,
                          warmup=args.warmup)
        if args.json:
            write_bytes_atomic(args.json, (json.dumps(result, indent=2) + "\n").encode())
        print(_evaluation_text(result))
        return 0

    if args.command == "demo":
        from .demo import markdown_table, run_demo

        if args.json:
            check_writable(args.json)
        result = run_demo(args.output_dir, threads=args.threads, qat=not args.no_qat)
        print(f"edgeopt demo: {result['model']}, {result['evaluation_samples']} test images, "
              f"{result['calibration_samples']} calibration images, {args.threads} thread(s)\n")
        print(markdown_table(result["rows"]))
        for note in result["notes"]:
            print(f"\n{note}")
        print(f"\nmodels, data and tables written to {pathlib.Path(args.output_dir).resolve()}")
        if args.json:
            write_bytes_atomic(args.json, (json.dumps(result["rows"], indent=2) + "\n").encode())
        return 0
    raise EdgeoptError(f"unknown command {args.command!r}")


def _check_outputs(args, inputs: tuple) -> None:
    """``--output`` and ``--report`` writable, distinct, and none of the ``inputs``."""
    from .model_io import check_writable

    check_writable(args.output, inputs=inputs)
    if args.report:
        if pathlib.Path(args.report).resolve() == pathlib.Path(args.output).resolve():
            raise EdgeoptError(f"--report {args.report} is the same path as --output; choose another")
        check_writable(args.report, inputs=inputs)


def _write_outputs(args, result) -> None:
    from .model_io import write_bytes_atomic

    result.save(args.output)
    if args.report:
        write_bytes_atomic(args.report, (json.dumps(result.report, indent=2) + "\n").encode())


def _check(args) -> int:
    """Exit status 1 when the file breaks the specification or the target's constraints."""
    from .tflite.targets import check
    from .tflite.validate import validate

    path = pathlib.Path(args.model)
    if not path.is_file():
        raise EdgeoptError(f"{path}: no such file (expected a .tflite model)")
    data = path.read_bytes()
    findings = check(data, args.target, str(path))
    warnings = [v for v in validate(data, str(path)) if v.severity == "warning"]
    against = f"the TFLite specification{' and ' + args.target if args.target else ''}"
    for finding in findings:
        print(finding)
    if warnings:
        print(f"warning: {len(warnings)} x {warnings[0].message} (first: {warnings[0].where})")
    print(f"{path}: {len(findings)} problem(s) against {against}")
    return 1 if findings else 0


def _export(args) -> int:
    from .tflite.export import TFLiteConfig, export
    from .tflite.static import parse_input_shapes

    if pathlib.Path(args.output).suffix.lower() != ".tflite":
        raise EdgeoptError(f"--output {args.output}: export writes .tflite files; expected a name ending in .tflite")
    config = TFLiteConfig(io_layout=args.io_layout, input_shapes=parse_input_shapes(args.input_shape))
    _check_outputs(args, (args.model,))
    result = export(args.model, config)
    _write_outputs(args, result)
    operators = ", ".join(f"{op} x{count}" for op, count in result.report["operators"].items())
    print(f"{args.output}: {result.report['size_bytes']:,} bytes, {operators}")
    return 0


def _prune(args) -> int:
    from .compression.prune import prune

    config = PruneConfig(sparsity=args.sparsity, pattern=args.pattern, method=args.method, ranking=args.ranking,
                         layers=tuple(args.layers), exclude=tuple(args.exclude), depthwise=args.depthwise)
    r = _run_one_shot(args, prune, config)
    print(f"{args.output}: {r['method']} pruning, {100 * r['sparsity']:.1f}% of {len(r['layers'])} layers' weights zero")
    return _print_skipped(r, "left dense")


def _cluster(args) -> int:
    from .compression.cluster import cluster

    config = ClusterConfig(clusters=args.clusters, codebook=args.codebook, init=args.init, method=args.method,
                           preserve_sparsity=not args.no_preserve_sparsity, layers=tuple(args.layers),
                           exclude=tuple(args.exclude), bits=args.bits,
                           allocation=args.allocation)
    r = _run_one_shot(args, cluster, config)
    print(f"{args.output}: {r['method']} clustering, at most {r['max_distinct']} values per output channel in "
          f"{len(r['layers'])} layers ({args.codebook} codebook), indices {r['index_bits']:.2f} bits per weight")
    return _print_skipped(r, "left as is")


def _run_one_shot(args, verb, config) -> dict:
    """Check the outputs, run ``verb`` (prune or cluster), write its model and report."""
    _check_outputs(args, (args.model, args.data))
    result = verb(args.model, config, calibration=args.data)
    _write_outputs(args, result)
    return result.report


def _print_skipped(report: dict, what: str) -> int:
    for name, reason in report["skipped"].items():
        print(f"{what}: {name}: {reason}")
    return 0


def _evaluation_text(result: dict) -> str:
    lines = [f"{result['model']}: {result['samples']} samples, {result['threads']} thread(s)",
             f"size: {result['size']['raw_bytes']:,} bytes, gzip -9 {result['size']['gzip_bytes']:,} bytes",
             f"latency: median {result['latency_ms']['median']:.3f} ms, p90 {result['latency_ms']['p90']:.3f} ms"]
    if result["top1"] is not None:
        lines.append(f"top-1: {100 * result['top1']:.2f}%")
    if result["fidelity"]:
        f = result["fidelity"]
        nan = float("nan")  # a model with no float output has no fidelity numbers
        lines.append(f"vs reference: top-1 agreement {100 * f.get('top1_agreement', nan):.2f}%, "
                     f"SQNR {f.get('sqnr_db', nan):.1f} dB, cosine worst {f.get('cosine_worst', nan):.5f}")
    return "\n".join(lines)


def entry_point(argv=None) -> int:
    try:
        args = parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(name)s: %(message)s")
        return main(args)
    except EdgeoptError as exc:
        print(f"edgeopt: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("edgeopt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(entry_point())


def run() -> None:
    """Console-script entry: the exit status reaches the shell."""
    sys.exit(entry_point())
