"""Weight clustering during training, with any training loop:

    clustered = edgeopt.torch.prepare_clustering(model, edgeopt.ClusterConfig(clusters=16))
    ...  # the user's own loop: the centroids train, each weight tied to its centroid
    plain = edgeopt.torch.strip(clustered)   # at most 16 values per output channel

:func:`prepare_clustering` returns a copy of the model in which each selected Conv2d/Linear
weight is replaced (a parametrization) by its centroids gathered at each weight's cluster: the
k-means of :mod:`edgeopt.compression.kmeans` gives the starting centroids and the assignment,
which stays fixed; the centroids are parameters, so each gets the sum of its weights' gradients.
A ``scaled`` codebook trains the shared codebook and the per-channel scales (a weight already
on one such codebook, from ``edgeopt.cluster``, keeps its values and assignment instead of being
clustered again, whatever rate each layer got; so the one-shot config, ``allocation="global"``
included, fine-tunes its result); ``channel`` the
centroids of each output channel; ``layer`` one set per layer. With ``preserve_sparsity`` the
zeros of a pruned weight stay a cluster of their own fixed at zero.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.nn.utils import parametrize

from ..compression import kmeans
from ..config import ClusterConfig
from ..errors import EdgeoptError
from .layers import selected_copy, unwrapped

logger = logging.getLogger(__name__)


class ClusteredWeight(torch.nn.Module):
    """A weight as ``scales[r] * codebook[r, assignment[r, i]]`` over its output-channel rows
    (``codebook`` 1 x K when shared, R x K per channel; ``scales`` R x 1, fixed at 1 unless the
    codebook is scaled). With ``fixed_zero`` centroid 0 is held at zero."""

    def __init__(self, codebook: np.ndarray, scales: np.ndarray, assignment: np.ndarray, fixed_zero: bool,
                 train_scales: bool):
        super().__init__()
        self.codebook = torch.nn.Parameter(torch.from_numpy(np.asarray(codebook, np.float32)))
        scales = torch.from_numpy(np.asarray(scales, np.float32).reshape(-1, 1))
        if train_scales:
            self.scales = torch.nn.Parameter(scales)
        else:
            self.register_buffer("scales", scales)
        self.register_buffer("assignment", torch.from_numpy(np.asarray(assignment, np.int64)))
        live = torch.ones(self.codebook.shape)
        if fixed_zero:
            live[:, 0] = 0
        self.register_buffer("live", live)
        #: a scaled codebook keeps its two ends opposite (see ``kmeans.cluster_scaled``), so that
        #: each row's largest weight stays its scale times the same magnitude
        self.symmetric = train_scales and self.codebook.shape[1] - int(fixed_zero) > 1

    def centroids(self) -> torch.Tensor:
        codebook = self.codebook * self.live
        if self.symmetric:
            codebook = symmetric_ends(codebook, self.live)
        return codebook.expand(self.assignment.shape[0], -1) * self.scales

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        values = torch.gather(self.centroids(), 1, self.assignment)
        return values.reshape(weight.shape).to(weight.dtype)


def symmetric_ends(codebook: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``codebook`` (1 x K) with its lowest and highest ``live`` entries set to minus and plus the
    mean of their magnitudes (the entries may have changed places while training)."""
    values, mask = codebook[0], live[0] > 0
    low = torch.where(mask, values, torch.full_like(values, float("inf"))).argmin()
    high = torch.where(mask, values, torch.full_like(values, float("-inf"))).argmax()
    if not bool(values[low] < 0 < values[high]):
        return codebook
    end = (values[high] - values[low]) / 2
    index = torch.arange(codebook.shape[1], device=codebook.device)
    return torch.where(index == low, -end, torch.where(index == high, end, codebook))


def prepare_clustering(model: torch.nn.Module, config: ClusterConfig | None = None) -> torch.nn.Module:
    """A copy of ``model`` whose selected layers are clustered as ``config`` says (see the module
    docstring); ``model`` is left as it was."""
    config = ClusterConfig() if config is None else config
    duplicate, chosen = selected_copy(model, config, ClusterConfig, "cluster", "clustering", "nearest")
    found = {}
    for name, module in chosen.items():
        if config.clusters > module.weight.numel():
            raise EdgeoptError(f"clusters ({config.clusters}) is more than layer {name!r} has weights "
                               f"({module.weight.numel()}); expected at most that")
        found[name] = _clustered(module.weight, config)
        if found[name] is None:  # a model-wide rate is found in one shot, on ONNX
            raise EdgeoptError(f"allocation {config.allocation!r} is one-shot clustering of an ONNX model "
                               f"(edgeopt.cluster), and layer {name!r} is not clustered that way; expected the "
                               "weights of an edgeopt.cluster result, or allocation='layer'")
    for name, module in chosen.items():
        parametrize.register_parametrization(module, "weight", found[name].to(module.weight.device))
        # the weight is its centroids now: the original gets no gradient (DistributedDataParallel
        # would wait for one)
        module.parametrizations.weight.original.requires_grad_(False)
    logger.info("clustered %d layers to %d values per output channel (%s codebook)", len(chosen), config.clusters,
                config.codebook)
    return duplicate


def _clustered(weight: torch.Tensor, config: ClusterConfig) -> ClusteredWeight | None:
    """The weight's parametrization; None where ``config`` spends its bits model-wide and the
    weight is not on a scaled codebook already (only a one-shot search can find that rate)."""
    rows = weight.detach().cpu().double().numpy().reshape(weight.shape[0], -1)
    keep = config.preserve_sparsity
    if config.codebook == "scaled":
        adopted = kmeans.adopt_scaled(rows, config.clusters, keep)  # clustered in one shot already: kept as is
        if adopted is None and config.allocation != "layer":
            return None
        found, codebook, scales = adopted or kmeans.cluster_scaled(rows, config.clusters, config.init, None, keep,
                                                                   config.seed, config.bits)
        return ClusteredWeight(codebook[None], scales, found.assignment, found.fixed_zero, True)
    if config.codebook == "channel":
        found = kmeans.cluster_rows(rows, config.clusters, config.init, None, keep, config.seed)
        return ClusteredWeight(found.centroids, np.ones(rows.shape[0]), found.assignment, found.fixed_zero, False)
    whole = kmeans.cluster_rows(rows.reshape(1, -1), config.clusters, config.init, None, keep, config.seed)
    return ClusteredWeight(whole.centroids, np.ones(rows.shape[0]), whole.assignment.reshape(rows.shape),
                           whole.fixed_zero, False)


def strip(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (from :func:`prepare_pruning` or :func:`prepare_clustering`, or inside
    DistributedDataParallel) with the masks and centroids baked into plain weights, its hooks and
    state removed; in place, and returned."""
    from .pruning import STATE, PruningMask

    module = unwrapped(model)
    found = 0
    for holder in module.modules():
        if parametrize.is_parametrized(holder, "weight") and all(
                isinstance(p, (PruningMask, ClusteredWeight)) for p in holder.parametrizations.weight):
            parametrize.remove_parametrizations(holder, "weight", leave_parametrized=True)
            holder.weight.requires_grad_(True)  # clustering froze the original: a plain weight trains again
            found += 1
    if not found:
        raise EdgeoptError("nothing to strip: expected a model from edgeopt.torch.prepare_pruning or "
                           "prepare_clustering")
    if hasattr(module, STATE):
        delattr(module, STATE)
        for key, hook in list(module._forward_pre_hooks.items()):
            if getattr(hook, "__name__", "") == "_step_hook":
                del module._forward_pre_hooks[key]
    return module
