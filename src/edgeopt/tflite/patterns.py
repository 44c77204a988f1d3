"""Subgraphs that exporters spell out and TFLite has one builtin for.

GELU with Erf: TFLite has no ERF operator, and exporters before opset 20 (Hugging Face BERT
models through torch.onnx, for one) write ``x * 0.5 * (1 + erf(x / sqrt(2)))`` as Div (or Mul by
1/sqrt(2)), Erf, Add 1, Mul by x and Mul by 0.5, in either order of the two Mul. Each such chain
becomes one ONNX ``Gelu`` node, lowered to GELU. Runs on the static model, after shapes were
inferred: the Gelu output keeps the last Mul's name, so its shape is known.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from ..quantization.graph import GraphView

logger = logging.getLogger(__name__)

_SQRT2 = float(np.sqrt(2.0))


def _scalar(view: GraphView, name: str) -> float | None:
    value = view.constant(name)
    return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _other(node: onnx.NodeProto, name: str) -> str | None:
    """The operand of a binary ``node`` that is not ``name`` (None when neither or both are)."""
    if len(node.input) != 2 or (node.input[0] == name) == (node.input[1] == name):
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def _internal(view: GraphView, name: str) -> bool:
    """Whether ``name`` has one reader and is not a graph output (a chain may drop it)."""
    return len(view.consumers.get(name, [])) == 1 and name not in view.graph_outputs


def _only_reader(view: GraphView, name: str, op_type: str) -> onnx.NodeProto | None:
    if not _internal(view, name) or view.consumers[name][0].op_type != op_type:
        return None
    return view.consumers[name][0]


def _erf_input(view: GraphView, erf: onnx.NodeProto) -> tuple[str, onnx.NodeProto] | None:
    """(x, the Div/Mul node) when Erf reads x / sqrt(2) or x * (1 / sqrt(2))."""
    scaled = view.producer.get(erf.input[0])
    if scaled is None or scaled.op_type not in ("Div", "Mul") or not _internal(view, erf.input[0]):
        return None
    x, c = scaled.input
    if scaled.op_type == "Mul" and _scalar(view, x) is not None:
        x, c = c, x
    value = _scalar(view, c)
    wanted = _SQRT2 if scaled.op_type == "Div" else 1.0 / _SQRT2
    if value is None or view.is_constant(x) or not np.isclose(value, wanted, rtol=1e-4):
        return None
    return x, scaled


def _match(view: GraphView, erf: onnx.NodeProto) -> tuple[str, str, list] | None:
    """(x, output, the chain's nodes) of the GELU that ``erf`` is the centre of, else None."""
    found = _erf_input(view, erf)
    add = _only_reader(view, erf.output[0], "Add")
    if found is None or add is None or _scalar(view, _other(add, erf.output[0]) or "") != 1.0:
        return None
    x, scaled = found
    mul = _only_reader(view, add.output[0], "Mul")
    if mul is None:
        return None
    operand = _other(mul, add.output[0])
    if operand == x:  # (x * (1 + erf)) * 0.5
        half = _only_reader(view, mul.output[0], "Mul")
        if half is None or _scalar(view, _other(half, mul.output[0]) or "") != 0.5:
            return None
        return x, half.output[0], [scaled, erf, add, mul, half]
    half = view.producer.get(operand or "")  # (x * 0.5) * (1 + erf)
    if half is None or half.op_type != "Mul" or _other(half, x) is None or not _internal(view, operand):
        return None
    if _scalar(view, _other(half, x)) != 0.5:
        return None
    return x, mul.output[0], [scaled, erf, add, half, mul]


def fuse_erf_gelu(model: onnx.ModelProto) -> int:
    """Replace each Erf GELU chain of ``model`` (see the module docstring); returns how many."""
    view = GraphView(model)
    replaced: dict[str, onnx.NodeProto] = {}  # the chain's last node (by output) -> its Gelu
    dropped: set[str] = set()  # the other nodes of the chains, by output
    for node in model.graph.node:
        if node.op_type != "Erf":
            continue
        found = _match(view, node)
        if found is None:
            continue
        x, output, chain = found
        replaced[output] = onnx.helper.make_node("Gelu", [x], [output], name=f"{node.name or output}_gelu")
        dropped.update(n.output[0] for n in chain[:-1])
    if not replaced:
        return 0
    kept = []
    for node in model.graph.node:
        if node.output and node.output[0] in dropped:
            continue
        kept.append(replaced.get(node.output[0], node) if node.output else node)
    del model.graph.node[:]
    model.graph.node.extend(kept)
    logger.info("wrote %d Erf GELU chains as GELU", len(replaced))
    return len(replaced)
