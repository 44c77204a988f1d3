"""Quantization-aware training: prepare, train with any loop, export.

    qat = edgeopt.torch.prepare_qat(model, (example,), edgeopt.QATConfig(), calibration=loader)
    ...  # the user's own training loop on qat (plain PyTorch, Lightning, DistributedDataParallel)
    edgeopt.torch.export(qat, "model.qat.onnx")       # QDQ with the learned parameters
    edgeopt.quantize("model.qat.onnx", edgeopt.Int8Config()).save("model.int8.onnx")  # no data needed

:func:`prepare_qat` exports the model to ONNX, quantizes it post-training (its plan places the
quantizers and gives their starting ranges) and returns a traced copy with fake quantizers. The
user's model is left as it was. :func:`export` re-exports the trained float model, checks it is
the graph that was planned, and writes the plan with the learned parameters as a QDQ model.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import torch

from ..config import Int8Config, QATConfig
from ..data import Dataset, input_specs
from ..errors import EdgeoptError
from ..model_io import check_writable, save_model
from ..quantization.plan import QuantizationPlan
from ..quantization.prepare import prepare
from ..quantization.qdq import apply_plan, record_plan
from . import fake_quant, preserve
from .learned_plan import learned_plan, start_from
from .onnx_export import to_onnx
from .quantizers import ActivationQuantizer

logger = logging.getLogger(__name__)

#: The attribute of a prepared model that holds its :class:`QATState`.
STATE = "edgeopt_qat"
NO_COUNTERPART = "no PyTorch counterpart (the traced model holds no tensor with its values)"


@dataclass
class QATState:
    """What the export needs besides the trained modules."""

    #: a copy of the user's model; the prepared module holds its modules (one set of parameters)
    model: torch.nn.Module
    #: a copy as it was before the quantizers: the export loads the trained float values into a
    #: copy of it (a copy of a parametrized module shares its class with the original, so its
    #: parametrizations cannot be removed without breaking the original)
    float_model: torch.nn.Module
    example_inputs: tuple
    #: the exported inputs' and outputs' names, when given
    names: tuple | None
    config: QATConfig
    #: the post-training plan: which tensors, nodes and constants; the starting parameters
    plan: QuantizationPlan
    #: the prepared export's nodes (name, operator, inputs, outputs): the export must match them
    graph: list
    #: planned tensor -> quantizer module; planned Conv/Gemm node -> module with its weight
    activations: dict
    weights: dict
    #: holder module -> the pruned zeros and clusters kept through training (:mod:`.preserve`)
    structures: dict = field(default_factory=dict)


def prepare_qat(model: torch.nn.Module, example_inputs, config: QATConfig | None = None, calibration=None, *,
                input_names: list[str] | None = None, output_names: list[str] | None = None
                ) -> torch.fx.GraphModule:
    """A traced copy of ``model`` with fake quantizers where the int8 model will quantize, their
    ranges from post-training calibration on ``calibration`` (an ``.npz`` path, an image folder,
    a dict of arrays, an iterable of input dicts, or a DataLoader-like iterable of tensors or of
    ``(inputs..., target)`` tuples). In the training mode ``model`` is in. ``input_names`` and
    ``output_names`` name the exported model's inputs and outputs (default: ``forward``'s
    parameter names, ``output``)."""
    config = QATConfig() if config is None else config
    if not isinstance(config, QATConfig):
        raise EdgeoptError(f"config must be a QATConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise EdgeoptError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if hasattr(model, STATE) or any(isinstance(m, ActivationQuantizer) for m in model.modules()):
        raise EdgeoptError("the model is already prepared for QAT; expected the float model")
    if calibration is None:
        raise EdgeoptError("prepare_qat needs calibration data (its post-training plan is where training "
                           "starts): a path, a dict of arrays or an iterable of batches")
    example_inputs = _example_tuple(example_inputs)
    training = model.training
    duplicate, traced = fake_quant.traced_copy(model)
    traced.eval()
    names = (input_names, output_names) if input_names or output_names else None
    exported = to_onnx(duplicate, example_inputs, names)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(exported)
    prepare(prepared)
    plan, found = _plan_and_place(exported, prepared, traced, example_inputs, config,
                                  _calibration_feeds(calibration, [spec.name for spec in input_specs(prepared)]))
    settings = fake_quant.QuantizerSettings(config.weight_range, config.observer_momentum,
                                            config.freeze_observers_after, config.freeze_bn_after,
                                            config.learn_scales)
    pristine = copy.deepcopy(duplicate)
    quantized = fake_quant.fake_quantized(traced, found, plan, prepared, settings)
    structures = preserve.attach(quantized.module, quantized.weights, config.preserve)  # read before the start
    if config.start == "post-training":
        start_from(plan, quantized.module, quantized.weights)
    preserve.project_all(quantized.module, structures)
    state = QATState(duplicate, pristine, tuple(t.detach().cpu().clone() for t in example_inputs), names, config, plan,
                     _graph_signature(prepared), quantized.activations, quantized.weights, structures)
    setattr(quantized.module, STATE, state)
    logger.info("prepared for QAT: %d activation quantizers, %d weight quantizers, %d weights keeping their "
                "zeros or clusters", len(set(quantized.activations.values())), len(quantized.weights), len(structures))
    return quantized.module.train(training)


def _plan_and_place(exported, prepared, traced, example_inputs, config: QATConfig, feeds):
    """The post-training plan and where its tensors are in ``traced``; tensors without a
    counterpart stay float (the nodes reading or writing them are excluded and the model is
    quantized again)."""
    from ..api import quantize

    int8 = config.int8_config()
    plan = _plan(quantize(exported, int8, calibration=feeds))
    found, missing = fake_quant.locate(traced, example_inputs, plan, prepared)
    if missing:
        touching = _nodes_touching(prepared, plan, set(missing))
        logger.warning("%d planned tensors have no PyTorch counterpart and stay float (%s); excluding %d nodes",
                       len(missing), missing[:3], len(touching))
        int8 = replace(int8, exclude=tuple(int8.exclude) + tuple(sorted(touching)))
        plan = _plan(quantize(exported, int8, calibration=feeds))
        plan.kept_float.update({name: NO_COUNTERPART for name in missing})
        found, missing = fake_quant.locate(traced, example_inputs, plan, prepared)
        if missing:
            raise EdgeoptError(f"no PyTorch counterpart for the planned tensors {missing[:3]}")
    return plan, found


def _plan(result) -> QuantizationPlan:
    plan = result.plan
    if plan is None or not (plan.weights or plan.activations):
        raise EdgeoptError("nothing in the model can be quantized (no Conv, Gemm, MatMul, Add, ... with float "
                           "inputs in its ONNX export); expected a model with quantizable layers")
    return plan


def _nodes_touching(prepared: onnx.ModelProto, plan: QuantizationPlan, tensors: set[str]) -> set[str]:
    planned = set(plan.nodes)
    return {node.name for node in prepared.graph.node if node.name in planned
            and tensors & (set(node.input) | set(node.output))}


def _example_tuple(example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and \
            all(isinstance(t, torch.Tensor) for t in example_inputs):
        return tuple(example_inputs)
    raise EdgeoptError(f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}")


def _calibration_feeds(calibration, names: list[str]):
    """Calibration as ``quantize`` reads it; batches of tensors become input dicts (the first
    ``len(names)`` items of a tuple are the inputs, the rest, such as labels, is ignored); a
    :class:`~edgeopt.Dataset` made for the ONNX model's input names is read by position."""
    if isinstance(calibration, Dataset):
        if len(calibration.arrays) != len(names):
            raise EdgeoptError(f"calibration: the data set has {len(calibration.arrays)} inputs; the model has "
                               f"{len(names)} ({names})")
        return dict(zip(names, calibration.arrays.values()))
    if isinstance(calibration, (str, Mapping)) or hasattr(calibration, "__fspath__") or \
            not isinstance(calibration, Iterable):
        return calibration
    return [_as_feed(batch, names) for batch in calibration]  # read twice when a tensor has no counterpart


def _as_feed(batch, names: list[str]):
    if isinstance(batch, Mapping):
        return {key: _numpy(value) for key, value in batch.items()}
    if isinstance(batch, torch.Tensor):
        batch = (batch,)
    if isinstance(batch, (tuple, list)) and len(batch) >= len(names):
        return {name: _numpy(value) for name, value in zip(names, batch)}
    raise EdgeoptError(f"calibration batch: got {type(batch).__name__}; expected a tensor, a tuple starting "
                       f"with the inputs {names}, or a dict of inputs")


def _numpy(value):
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _graph_signature(model: onnx.ModelProto) -> list:
    return [(node.name, node.op_type, tuple(node.input), tuple(node.output)) for node in model.graph.node]


def state_of(qat) -> tuple[torch.fx.GraphModule, QATState]:
    """The module and state of a model :func:`prepare_qat` returned (also inside DistributedDataParallel)."""
    module = getattr(qat, "module", qat) if not hasattr(qat, STATE) else qat
    state = getattr(module, STATE, None)
    if not isinstance(state, QATState):
        raise EdgeoptError(f"expected a model from edgeopt.torch.prepare_qat; got {type(qat).__name__} "
                           "without quantizers")
    return module, state


def float_onnx(qat) -> onnx.ModelProto:
    """The trained model without its quantizers, as float ONNX (exported as prepare_qat exported
    the model it was given)."""
    module, state = state_of(qat)
    preserve.project_all(module, state.structures)  # the last optimizer step moved the weights off
    float_model = copy.deepcopy(state.float_model)
    float_model.load_state_dict({name.replace(".parametrizations.weight.original", ".weight"): value
                                 for name, value in state.model.state_dict().items()})
    return to_onnx(float_model, state.example_inputs, state.names)


def exported_qdq(qat) -> tuple[onnx.ModelProto, QuantizationPlan]:
    """The trained model as a QDQ ONNX model with the learned plan (nothing written)."""
    module, state = state_of(qat)
    prepared = float_onnx(qat)
    prepare(prepared)
    if _graph_signature(prepared) != state.graph:
        raise EdgeoptError("the trained model exports to a different ONNX graph than the one prepare_qat planned; "
                           "expected the same model code and input shapes")
    plan = learned_plan(state.plan, prepared, module, state.activations, state.weights, state.config.weight_range)
    apply_plan(prepared, plan)
    record_plan(prepared, plan)
    return prepared, plan


def export(qat, path) -> QuantizationPlan:
    """Write the trained model to ``path`` as QDQ ONNX holding the learned quantization:
    ``edgeopt.quantize(path, Int8Config())`` builds the int8 model from it without calibration
    data. Returns the plan written."""
    check_writable(path)
    model, plan = exported_qdq(qat)
    save_model(model, path)
    return plan


def convert(qat, path, config: Int8Config | None = None):
    """The trained model straight to the int8 model ``config`` describes (default
    ``Int8Config()``; ``integer_only=True`` for integer inputs and outputs), written to ``path``;
    returns the :class:`~edgeopt.QuantizationResult`."""
    from ..api import quantize

    config = Int8Config() if config is None else config
    if type(config) is not Int8Config:
        raise EdgeoptError(f"convert needs an Int8Config, got {type(config).__name__}")
    check_writable(path)
    model, _ = exported_qdq(qat)
    result = quantize(model, config)
    result.save(path)
    return result
