"""Where an int8 .tflite first departs from ONNX Runtime, layer by layer:
``python -m benchmarks.tflite_layers [--case CASE] [--images N] [--every K] [--integer-only]
[--shared-add-scale]``.

edgeopt's int8 ONNX model of the case (``Int8Config`` on its calibration images) is cut after
each quantized activation (a DequantizeLinear output becomes the only graph output and what no
longer feeds it goes); each cut model is written as .tflite and run on LiteRT with XNNPACK, and
ONNX Runtime runs the same cut ONNX model. A cut keeps ONNX Runtime's QDQ fusions as they are in
the whole model (an extra graph output on a DequantizeLinear would stop them). Both runtimes
give the activation as ``(q - zero_point) * scale``, so the difference over the scale is the
difference in integer steps. Printed for every ``--every``-th activation in graph order: the
share of elements more than one step apart, the share not bit-identical and the worst
difference in steps. The first row that is not bit-identical follows the operator whose
rounding the two runtimes do not share.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np


def activations(model) -> list[tuple[str, float]]:
    """(DequantizeLinear output, its scale) of every per-tensor quantized activation, in graph
    order, leaving out the graph inputs' own pairs (a TFLite graph has no tensor for those)."""
    from onnx import numpy_helper

    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    inputs = {value.name for value in model.graph.input}
    of_inputs = {node.output[0] for node in model.graph.node if node.op_type == "QuantizeLinear"
                 and node.input[0] in inputs}
    return [(node.output[0], float(weights[node.input[1]])) for node in model.graph.node
            if node.op_type == "DequantizeLinear" and node.input[0] not in weights
            and node.input[0] not in of_inputs and weights[node.input[1]].size == 1]


def cut_at(model, name: str):
    """A copy of ``model`` whose only output is ``name``, without the nodes that no longer feed it."""
    import onnx

    from edgeopt.quantization.graph import remove_dead_nodes

    graph = onnx.shape_inference.infer_shapes(model).graph
    shapes = {info.name: info for info in [*graph.value_info, *graph.output]}
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    del cut.graph.output[:]
    cut.graph.output.append(shapes[name])
    remove_dead_nodes(cut.graph)
    used = {n for node in cut.graph.node for n in node.input}
    kept = [init for init in cut.graph.initializer if init.name in used]
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(kept)
    return cut


def compare(onnx_path: pathlib.Path, tflite_path: pathlib.Path, scale: float, feeds) -> tuple[float, float, float]:
    """(share more than one step apart, share not identical, worst steps) over ``feeds``."""
    from edgeopt.runtimes import open_runner

    ours, reference = open_runner(tflite_path, 1), open_runner(onnx_path, 1)
    far = unequal = count = 0
    worst = 0.0
    for feed in feeds:
        a = np.asarray(ours.run(feed)[0], np.float64)
        b = np.asarray(reference.run(feed)[0], np.float64)
        steps = np.abs(a.reshape(b.shape) - b) / scale
        far, unequal, count = far + int(np.sum(steps > 1.001)), unequal + int(np.sum(steps > 1e-3)), count + steps.size
        worst = max(worst, float(steps.max(initial=0.0)))
    return far / count, unequal / count, worst


def main(argv=None) -> int:
    import onnx

    import edgeopt

    from .cases import CASES

    parser = argparse.ArgumentParser(prog="python -m benchmarks.tflite_layers", description=__doc__.split("\n")[0])
    parser.add_argument("--case", default="mobilenet-v2-fashion", choices=sorted(CASES))
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--every", type=int, default=1, help="compare every K-th activation (the last always)")
    parser.add_argument("--integer-only", action="store_true")
    parser.add_argument("--shared-add-scale", action="store_true")
    args = parser.parse_args(argv)
    case = CASES[args.case]()
    config = edgeopt.Int8Config(integer_only=args.integer_only, shared_add_scale=args.shared_add_scale)
    feeds = list(case.evaluation.batches(1, limit=args.images))
    shapes = {name: tuple(value.shape) for name, value in feeds[0].items()}
    model = edgeopt.quantize(str(case.model), config, calibration=case.calibration).model
    names = activations(model)
    names = [entry for i, entry in enumerate(names) if i % args.every == 0 or i == len(names) - 1]
    print(f"{'>1 step':>8} {'not equal':>10} {'worst':>6}  activation ({args.case}, {args.images} images)")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, tflite_path = pathlib.Path(tmp) / "cut.onnx", pathlib.Path(tmp) / "cut.tflite"
        for name, scale in names:
            onnx.save(cut_at(model, name), str(onnx_path))
            edgeopt.export(str(onnx_path), edgeopt.TFLiteConfig(input_shapes=shapes)).save(tflite_path)
            far, unequal, worst = compare(onnx_path, tflite_path, scale, feeds)
            print(f"{100 * far:7.3f}% {100 * unequal:9.3f}% {worst:6.2f}  {name}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
