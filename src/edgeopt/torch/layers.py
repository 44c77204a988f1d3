"""The PyTorch layers training-time pruning and clustering act on: ``Conv2d`` and ``Linear``
modules, selected by module name (``fnmatch`` patterns) or class name, and their weights as rows
(one per output channel, input channels innermost, as :mod:`edgeopt.compression.layers` lays
out ONNX weights, so N:M groups and 1x4 blocks run along input channels)."""

from __future__ import annotations

import copy
import fnmatch

import torch
from torch.nn.utils import parametrize

from ..errors import EdgeoptError

KINDS = (torch.nn.Conv2d, torch.nn.Linear)


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DistributedDataParallel or DataParallel; ``model`` otherwise."""
    wrappers = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def matches(name: str, module: torch.nn.Module, pattern: str) -> bool:
    return type(module).__name__ == pattern or fnmatch.fnmatchcase(name, pattern)


def select(model: torch.nn.Module, layers: tuple[str, ...], exclude: tuple[str, ...], verb: str
           ) -> dict[str, torch.nn.Module]:
    """Name -> module of the selected Conv2d/Linear layers; a pattern matching none is an error."""
    candidates = {name: module for name, module in model.named_modules() if isinstance(module, KINDS)}
    for pattern in layers:
        if not any(matches(name, module, pattern) for name, module in candidates.items()):
            raise EdgeoptError(f"layers: {pattern!r} matches no Conv2d or Linear module (by name or class name)")
    every = dict(model.named_modules())
    for pattern in exclude:
        if not any(matches(name, module, pattern) for name, module in every.items()):
            raise EdgeoptError(f"exclude: {pattern!r} matches no module name or class name in the model")
    chosen = {name: module for name, module in candidates.items()
              if (not layers or any(matches(name, module, p) for p in layers))
              and not any(matches(name, module, p) for p in exclude)}
    if not chosen:
        raise EdgeoptError(f"nothing to {verb}: the model has no selected Conv2d or Linear layer; expected at least one")
    return chosen


def to_rows(weight: torch.Tensor) -> torch.Tensor:
    """A Conv2d (O x C x kh x kw) or Linear (O x I) weight as rows O x D, input channels innermost."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1) if weight.dim() == 4 else weight


def from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 4:
        return rows.reshape(shape[0], shape[2], shape[3], shape[1]).permute(0, 3, 1, 2)
    return rows.reshape(shape)


def input_channels(module: torch.nn.Module) -> int | None:
    """The innermost run pattern groups may not cross: a convolution's input channels per group."""
    return module.in_channels // module.groups if isinstance(module, torch.nn.Conv2d) else None


def selected_copy(model: torch.nn.Module, config, config_type: type, verb: str, doing: str, free_method: str
                  ) -> tuple[torch.nn.Module, dict[str, torch.nn.Module]]:
    """The checks training-time pruning and clustering share, then a copy of ``model`` and its
    selected layers (``model`` is left as it was). ``free_method``: the method that needs no data,
    the only one that trains (``"data-aware"`` is the one-shot verbs' on ONNX)."""
    if not isinstance(config, config_type):
        raise EdgeoptError(f"config must be a {config_type.__name__}, got {type(config).__name__}")
    if not isinstance(model, torch.nn.Module):
        raise EdgeoptError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if config.method == "data-aware":
        raise EdgeoptError(f"method 'data-aware' is one-shot {doing} of an ONNX model (edgeopt.{verb}); during "
                           f"training expected method 'auto' or '{free_method}'")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise EdgeoptError("the model already has parametrized weights (pruning, clustering or QAT); expected a "
                           "plain model (edgeopt.torch.strip removes pruning and clustering)")
    duplicate = copy.deepcopy(model)
    return duplicate, select(duplicate, config.layers, config.exclude, verb)
