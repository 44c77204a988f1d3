"""A PyTorch model as float ONNX, the same way at prepare time and at export time (the export
re-creates the graph the plan was made for, so the settings live in one place)."""

from __future__ import annotations

import copy
import inspect
import io
import logging
import warnings

import onnx
import torch

from ..errors import EdgeoptError

logger = logging.getLogger(__name__)

#: ONNX opset of the exports: 17 holds every operator edgeopt's int8 path has a rule for
OPSET = 17


def input_names(model: torch.nn.Module, count: int) -> list[str]:
    """The names of ``forward``'s first ``count`` parameters (the ONNX inputs' names)."""
    parameters = [p.name for p in inspect.signature(model.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(parameters) < count:
        parameters += [f"input_{i}" for i in range(len(parameters), count)]
    return parameters[:count]


def to_onnx(model: torch.nn.Module, example_inputs: tuple, names: tuple[list, list] | None = None
            ) -> onnx.ModelProto:
    """``model`` (a copy, in eval mode, on the CPU) exported with the TorchScript exporter, the
    batch axis of every input and output dynamic; ``names``: the inputs' and outputs' names
    (default: ``forward``'s parameters, ``output`` or ``output_<i>``)."""
    duplicate = copy.deepcopy(model).cpu().eval()
    inputs = tuple(tensor.detach().cpu() for tensor in example_inputs)
    with torch.no_grad():
        outputs = duplicate(*inputs)
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    names, outputs = names or (None, None)
    names = list(names or input_names(duplicate, len(inputs)))
    outputs = list(outputs or (["output"] if count == 1 else [f"output_{i}" for i in range(count)]))
    if len(names) != len(inputs) or len(outputs) != count:
        raise EdgeoptError(f"input_names/output_names: the model takes {len(inputs)} inputs and returns {count} "
                           f"outputs; got {len(names)} and {len(outputs)} names")
    axes = {name: {0: "batch"} for name in names + outputs}
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(duplicate, inputs, buffer, input_names=names, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    except Exception as exc:  # the exporter raises many types
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise EdgeoptError(f"torch.onnx.export failed ({first}); expected a model the ONNX exporter can "
                           "export") from None
    return onnx.load_from_string(buffer.getvalue())
