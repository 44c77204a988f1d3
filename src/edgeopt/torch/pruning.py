"""Magnitude pruning during training, with any training loop:

    pruned = edgeopt.torch.prepare_pruning(model, edgeopt.PruneConfig(
        sparsity=0.8, schedule=edgeopt.PolynomialDecay(end_step=2000, frequency=100)))
    ...  # the user's own loop on ``pruned``: every training-mode forward pass is one step
    plain = edgeopt.torch.strip(pruned)      # zeros in the weights, no wrappers left

:func:`prepare_pruning` returns a copy of the model whose selected Conv2d/Linear weights are
multiplied by a mask (a parametrization, so the optimizer keeps training the float weight and
the removed ones get no gradient). A forward pre-hook counts the steps and, at the steps the
schedule names, recomputes each mask from the weights' magnitudes at the schedule's sparsity and
zeroes the removed weights in the parameter. Every process of a DistributedDataParallel run
computes the same masks from the same weights. ``set_step`` sets the count (to resume, or to
count optimizer steps under gradient accumulation).

A model from ``edgeopt.prune(..., PruneConfig(ranking="global", method="data-aware"), calibration=...)``
(each layer's sparsity from one model-wide ranking on data) is fine-tuned with that same config:
each layer keeps the share of zeros it came with, the schedule rising to it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn.utils import parametrize

from ..compression import masks
from ..compression.schedules import ConstantSparsity
from ..config import PruneConfig, n_of_m
from ..errors import EdgeoptError
from .layers import from_rows, input_channels, matches, selected_copy, to_rows, unwrapped

logger = logging.getLogger(__name__)

#: The attribute of a prepared model that holds its :class:`PruningState`.
STATE = "edgeopt_pruning"


class PruningMask(torch.nn.Module):
    """A weight multiplied by its 0/1 mask (a buffer the schedule updates)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", torch.ones_like(weight))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


@dataclass
class PruningState:
    config: PruneConfig
    #: module name -> the reason it is left dense (the pattern does not fit it)
    skipped: dict
    layers: dict = field(default_factory=dict)
    #: module name -> its target when the config's is a one-shot model-wide data-aware ranking
    #: (the share of zeros its weight came with; training has no data to rank by)
    adopted: dict = field(default_factory=dict)
    step: int = 0
    sparsity: float = 0.0

    def report(self) -> dict:
        """Each pruned layer's fraction of zero weights, and the whole selection's."""
        zeros = {name: float((holder.parametrizations.weight[0].mask == 0).float().mean())
                 for name, holder in self.layers.items()}
        counts = {name: holder.parametrizations.weight.original.numel() for name, holder in self.layers.items()}
        total = sum(counts.values())
        return {"step": self.step, "target": self.sparsity, "layers": zeros, "skipped": dict(self.skipped),
                "sparsity": sum(zeros[name] * counts[name] for name in zeros) / max(total, 1)}


def prepare_pruning(model: torch.nn.Module, config: PruneConfig | None = None) -> torch.nn.Module:
    """A copy of ``model`` whose selected layers are pruned by magnitude as ``config`` and its
    schedule say (see the module docstring); ``model`` is left as it was."""
    config = PruneConfig() if config is None else config
    # a model-wide data-aware ranking was made in one shot: training keeps its layers' shares
    adopt = isinstance(config, PruneConfig) and config.ranking == "global" and config.method == "data-aware"
    duplicate, chosen = selected_copy(model, dataclasses.replace(config, method="auto") if adopt else config,
                                      PruneConfig, "prune", "pruning", "magnitude")
    _check_targets(chosen, config)
    state = PruningState(config, {})
    for name, module in chosen.items():
        misfit = masks.fits(tuple(to_rows(module.weight).shape), config.pattern, input_channels(module))
        reason = f"pattern {config.pattern}: {misfit}" if misfit else None
        if not config.depthwise and input_channels(module) == 1 and module.groups > 1:
            reason = "a depthwise convolution (depthwise=True prunes it too)"
        if reason:
            state.skipped[name] = reason
            continue
        parametrize.register_parametrization(module, "weight", PruningMask(module.weight))
        state.layers[name] = module
    if not state.layers:
        raise EdgeoptError(f"nothing to prune: pattern {config.pattern} fits no selected layer "
                           f"({'; '.join(f'{k}: {v}' for k, v in list(state.skipped.items())[:3])})")
    if adopt:
        state.adopted = _adopted(state.layers)
    setattr(duplicate, STATE, state)
    duplicate.register_forward_pre_hook(_step_hook)
    logger.info("prepared %d layers for pruning to %s", len(state.layers), config.pattern if n_of_m(config.pattern)
                else f"{100 * config.sparsity:.0f}%")
    return duplicate


def _adopted(layers: dict) -> dict:
    """Each layer's share of zero weights: a model pruned by ``edgeopt.prune`` with
    ``ranking="global"`` and data keeps each layer's sparsity from that ranking while it trains."""
    shares = {name: float((module.parametrizations.weight.original == 0).float().mean()) for name, module in layers.items()}
    if not any(shares.values()):
        raise EdgeoptError("ranking='global' with method='data-aware' fine-tunes a model edgeopt.prune pruned that way, "
                           "keeping each layer's share of zeros; this model has no zero weights (expected the "
                           "one-shot result, or method='magnitude' to rank by magnitude while training)")
    return shares


def _check_targets(chosen: dict, config: PruneConfig) -> None:
    for pattern in config.layer_sparsity:
        if not any(matches(name, module, pattern) for name, module in chosen.items()):
            raise EdgeoptError(f"layer_sparsity: {pattern!r} matches no selected Conv2d or Linear module")


def state_of(model: torch.nn.Module) -> PruningState:
    state = getattr(unwrapped(model), STATE, None)
    if not isinstance(state, PruningState):
        raise EdgeoptError(f"expected a model from edgeopt.torch.prepare_pruning; got {type(model).__name__}")
    return state


def set_step(model: torch.nn.Module, step: int) -> None:
    """Set the step count of a prepared model (the masks follow at the next scheduled update)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise EdgeoptError(f"step must be an integer >= 0, got {step!r}")
    state_of(model).step = step


def _step_hook(module: torch.nn.Module, inputs) -> None:
    if not module.training:
        return
    state = getattr(module, STATE)
    schedule = state.config.schedule or ConstantSparsity()
    if schedule.updates_at(state.step):
        update_masks(state, schedule)
    state.step += 1


def update_masks(state: PruningState, schedule) -> None:
    """Recompute every mask at the sparsity ``schedule`` gives each layer's target at this step
    (N:M patterns are all or nothing: applied once the schedule reaches the target)."""
    config = state.config
    nm = n_of_m(config.pattern)
    if nm is not None:
        if schedule.sparsity(state.step, 1.0) < 1.0:
            return
        targets = {name: 1 - nm[0] / nm[1] for name in state.layers}
    elif state.adopted:
        targets = {name: schedule.sparsity(state.step, share) for name, share in state.adopted.items()}
    else:
        targets = {name: schedule.sparsity(state.step, config.sparsity_for(name, type(holder).__name__))
                   for name, holder in state.layers.items()}
    threshold = _global_threshold(state, targets) if config.ranking == "global" and not state.adopted else None
    with torch.no_grad():
        for name, holder in state.layers.items():
            original = holder.parametrizations.weight.original
            magnitude = to_rows(original.detach().abs()).cpu().double().numpy()
            if threshold is not None:
                keep = magnitude > threshold
            else:
                keep = masks.keep_mask(magnitude, targets[name], config.pattern)
            mask = from_rows(torch.from_numpy(keep.astype(np.float32)), original.shape).to(original)
            holder.parametrizations.weight[0].mask.copy_(mask)
            original.mul_(mask)  # the removed weights are zero in the parameter too
    state.sparsity = float(np.mean(list(targets.values())))


def _global_threshold(state: PruningState, targets: dict) -> float:
    magnitudes = np.concatenate([holder.parametrizations.weight.original.detach().abs().cpu().double().numpy().ravel()
                                 for holder in state.layers.values()])
    removed = round(float(np.mean(list(targets.values()))) * magnitudes.size)
    return float(np.sort(magnitudes)[removed - 1]) if removed else -1.0
