"""Structured channel pruning: remove whole channels so that the exported model is smaller and
faster on any runtime (unstructured and N:M zeros buy no speed on ONNX Runtime's CPU kernels).

    result = edgeopt.torch.prune_channels(model, example, edgeopt.ChannelPruneConfig(ratio=0.5))
    ...  # fine-tune result.model with the user's own loop, then export it (or prepare_qat it)
    print(result.report["macs"])            # before and after

Fine-tune with the BatchNorm layers in training mode: each layer's inputs lost channels, so the
running statistics no longer fit (MobileNetV2 on Fashion-MNIST at half the channels: 10% top-1
straight after pruning; with BatchNorm training, one pass over 59,500 images at 1e-3 falling
along a cosine reached 91.8% against the float model's 92.65% on 2,000 test images; with it
frozen that rate diverged, and two passes over 6,000 images at 3e-4 reached 83%; see
benchmarks/compress.py).

The dependency analysis is Torch-Pruning's (DepGraph, Fang et al. 2023), a maintained library
made for exactly this: which channels a residual addition, a depthwise convolution, a
concatenation or a BatchNorm couples, and every layer that must lose the matching inputs. edgeopt
chooses what to keep (the output layer, ``exclude``), the ranking and the rounding, and measures.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import torch

from ..config import ChannelPruneConfig
from ..errors import EdgeoptError
from .layers import KINDS, matches

logger = logging.getLogger(__name__)


@dataclass
class ChannelPruningResult:
    """The pruned copy and what changed: MACs and parameters before and after, each layer's
    output channels before and after, the layers kept whole."""

    model: torch.nn.Module
    report: dict = field(default_factory=dict)


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:  # pragma: no cover - part of the torch extra
        raise EdgeoptError("channel pruning needs Torch-Pruning: pip install 'edgeopt[torch]'") from None
    return torch_pruning


def prune_channels(model: torch.nn.Module, example_inputs, config: ChannelPruneConfig | None = None
                   ) -> ChannelPruningResult:
    """A copy of ``model`` (eval mode for the analysis; ``model`` untouched) with the channels
    ``config`` ranks lowest removed, and every dependent layer shrunk to match."""
    config = ChannelPruneConfig() if config is None else config
    if not isinstance(config, ChannelPruneConfig):
        raise EdgeoptError(f"config must be a ChannelPruneConfig, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise EdgeoptError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    example = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    if not example or not all(isinstance(t, torch.Tensor) for t in example):
        raise EdgeoptError("example_inputs must be a tensor or a tuple of tensors")
    tp = _torch_pruning()
    duplicate = copy.deepcopy(model).eval()
    kept = _kept_whole(duplicate, example, config)
    before = _channels(duplicate)
    macs, parameters = tp.utils.count_ops_and_params(duplicate, example)
    pruner = tp.pruner.MetaPruner(
        duplicate, example, importance=_importance(tp, config.importance), pruning_ratio=config.ratio,
        global_pruning=config.ranking == "global", max_pruning_ratio=config.max_ratio, round_to=config.round_to,
        ignored_layers=[module for name, module in duplicate.named_modules() if name in kept])
    try:
        pruner.step()
    except Exception as exc:  # the library raises many types on graphs it cannot trace
        raise EdgeoptError(f"channel pruning failed ({str(exc).strip().splitlines()[0][:200]}); expected a "
                           "model Torch-Pruning can trace") from None
    macs_after, parameters_after = tp.utils.count_ops_and_params(duplicate, example)
    after = _channels(duplicate)
    changed = {name: [before[name], after[name]] for name in before if after.get(name) != before[name]}
    if not changed:
        raise EdgeoptError("nothing to prune: no channel could be removed (every prunable layer is kept whole); "
                           "expected a Conv2d or Linear layer whose outputs feed another layer")
    report = {"mode": "channels", "config": config.to_dict(), "macs": [int(macs), int(macs_after)],
              "parameters": [int(parameters), int(parameters_after)], "channels": changed,
              "kept_whole": sorted(kept)}
    logger.info("removed channels from %d layers: %.2fx the MACs, %.2fx the parameters", len(changed),
                macs_after / max(macs, 1), parameters_after / max(parameters, 1))
    return ChannelPruningResult(duplicate.train(model.training), report)


def _importance(tp, name: str):
    if name == "bn-scale":
        return tp.importance.BNScaleImportance()
    return tp.importance.GroupMagnitudeImportance(p=2 if name == "l2" else 1)


def _kept_whole(model: torch.nn.Module, example: tuple, config: ChannelPruneConfig) -> set[str]:
    """The module names kept whole: those ``exclude`` names, and the Conv2d/Linear layers that
    run last (their outputs are the model's; found by running it once)."""
    every = dict(model.named_modules())
    for pattern in config.exclude:
        if not any(matches(name, module, pattern) for name, module in every.items()):
            raise EdgeoptError(f"exclude: {pattern!r} matches no module name or class name in the model")
    order: list[str] = []
    handles = [module.register_forward_hook(lambda m, i, o, name=name: order.append(name))
               for name, module in every.items() if isinstance(module, KINDS)]
    try:
        with torch.no_grad():
            outputs = model(*example)
    finally:
        for handle in handles:
            handle.remove()
    if not order:
        raise EdgeoptError("nothing to prune: the model runs no Conv2d or Linear layer; expected at least one")
    count = len(outputs) if isinstance(outputs, (tuple, list)) else 1
    kept = set(order[-count:])  # a model with several outputs: its last layers produce them
    kept |= {name for name, module in every.items() if any(matches(name, module, p) for p in config.exclude)}
    return kept


def _channels(model: torch.nn.Module) -> dict[str, int]:
    return {name: (module.out_channels if isinstance(module, torch.nn.Conv2d) else module.out_features)
            for name, module in model.named_modules() if isinstance(module, KINDS)}
