"""Where each tensor of an ONNX export lives in the traced PyTorch module: found by value.

Names do not carry over: the TorchScript exporter names tensors ``/b1/pw/Conv_output_0``, the
dynamo exporter after aten nodes (``getitem_3``), and edgeopt's own ``prepare`` folds BatchNorm
and fuses Mul/Add into convolutions, so a planned tensor is the output of a Conv in ONNX and of a
BatchNorm in PyTorch. Values do carry over: both graphs are run on the same seeded input, and a
planned tensor maps to the first traced node (in graph order) whose output has its shape and its
values. The first, so that an eval-mode Dropout or an Identity maps to the node that produced the
tensor. Decides; edits nothing.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch
import torch.fx

from ..quantization.graph import extra_outputs

logger = logging.getLogger(__name__)

#: Values match when within this of the ONNX value, relative to the tensor's largest magnitude:
#: ONNX Runtime's fused kernels (Conv with folded BatchNorm) round differently from PyTorch's
#: separate ones: about 1e-6 relative on most layers, up to 1e-4 on a depthwise convolution whose
#: BatchNorm divides by a tiny variance (EfficientNet-Lite0, eps 1e-3); a different tensor differs
#: by far more (the nearest other candidate there: 1.0 relative).
MATCH_TOLERANCE = 1e-3


def node_values(traced: torch.fx.GraphModule, example_inputs: tuple) -> dict[str, np.ndarray]:
    """Every traced node's tensor output on ``example_inputs``, by node name, in graph order."""
    values: dict[str, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            if isinstance(result, torch.Tensor) and node.op != "output":
                # a copy: an in-place operator later (ReLU6(inplace=True)) would change a view
                values[node.name] = result.detach().cpu().numpy().copy()
            return result

    with torch.no_grad():
        Recorder(traced).run(*example_inputs)
    return values


def onnx_values(model: onnx.ModelProto, tensors: list[str], feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``tensors`` of ``model`` on ``feed``, from one ONNX Runtime run (graph inputs as fed)."""
    from ..runtimes.onnxruntime import make_session, run_checked

    wanted = [name for name in tensors if name not in feed]
    with extra_outputs(model, wanted):
        session = make_session(model)
    values = dict(zip(wanted, run_checked(session, wanted, feed, "the example input")))
    values.update({name: feed[name] for name in tensors if name in feed})
    return values


def correspondence(onnx_tensors: dict[str, np.ndarray], torch_values: dict[str, np.ndarray]
                   ) -> tuple[dict[str, str], list[str]]:
    """ONNX tensor name -> traced node name, and the tensors no node matches."""
    by_shape: dict[tuple, list[tuple[str, np.ndarray]]] = {}
    for node, candidate in torch_values.items():  # in graph order
        by_shape.setdefault(candidate.shape, []).append((node, candidate))
    found, missing = {}, []
    for name, value in onnx_tensors.items():
        match = next((node for node, candidate in by_shape.get(value.shape, []) if _same(candidate, value)), None)
        if match is None:
            missing.append(name)
        else:
            found[name] = match
    if missing:
        logger.info("no traced node holds %d of %d planned tensors: %s", len(missing), len(onnx_tensors),
                    missing[:5])
    return found, missing


def _same(candidate: np.ndarray, value: np.ndarray) -> bool:
    if candidate.shape != value.shape or candidate.dtype.kind != value.dtype.kind:
        return False
    scale = float(np.max(np.abs(value), initial=0.0))
    return bool(np.allclose(candidate, value, rtol=0.0, atol=MATCH_TOLERANCE * max(scale, 1e-30)))
