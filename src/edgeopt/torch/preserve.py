"""Sparsity- and cluster-preserving QAT ("collaborative optimization"): the structure a pruned or
clustered model brings to :func:`~edgeopt.torch.prepare_qat` stays through training and into the
int8 file.

The structure is read from the float weights before training, as the int8 path reads it
(:mod:`edgeopt.quantization.structure`), so a model pruned or clustered by any tool qualifies:
every exact zero, and, where every output channel has few distinct values, each weight's cluster
(per channel; or, when the channels share one codebook times a scale each, the codebook's entry).
Before each forward pass of the prepared model a pre-hook projects the float weights back onto
the structure (on the whole model: a layer's own pre-hook would also run on the integers its
eval-mode kernel passes through it): zeros to
zero, each cluster's weights to their mean (so a centroid moves by the mean of its weights'
updates), a scaled codebook by one alternating least-squares step on the codebook and the
scales. The fake quantizer of a scaled-codebook layer uses scales proportional to the channels'
magnitudes, so each channel's integers stay the codebook's. Nearest rounding maps 0 to 0 and
equal values to equal integers, so the exported int8 weights keep both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quantization.structure import CLUSTERED_FRACTION, MAX_LEVELS, shared_codebook
from .quantizers import ConvBatchNorm


@dataclass
class Structure:
    """What one weight keeps (rows are its output channels): ``zeros`` (bool, weight shape),
    ``assignment`` (R x D cluster indices, None when not clustered), ``scaled`` (one codebook
    for every row), with the codebook and row scales of the scaled form."""

    zeros: torch.Tensor | None
    assignment: torch.Tensor | None
    clusters: int
    scaled: bool
    codebook: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    #: the weight's version counter after the last projection: unchanged since, nothing to do
    #: (a scaled codebook's least-squares step is exact only up to rounding, and the int8 scales
    #: follow the weights)
    projected: int | None = None


def weight_of(holder: torch.nn.Module) -> torch.Tensor:
    """The float parameter the structure lives on: the Conv2d's own weight in a folded
    Conv2d + BatchNorm2d, else the parametrized weight's original."""
    if isinstance(holder, ConvBatchNorm):
        return holder.conv.weight
    return holder.parametrizations.weight.original


def structure_of(weight: torch.Tensor, preserve: tuple[str, ...]) -> Structure | None:
    """The structure of ``weight`` that ``preserve`` asks to keep; None when it has none."""
    values = weight.detach().cpu().double()
    zeros = (values == 0) if "sparsity" in preserve and bool((values == 0).any()) else None
    rows = values.reshape(values.shape[0], -1)
    shared = "clusters" in preserve and shared_codebook(rows.numpy(), 0)
    if "clusters" not in preserve or not (shared or _clustered(rows)):
        return None if zeros is None else Structure(zeros, None, 0, False)
    if shared:
        scales = rows.abs().amax(dim=1)
        normalized = rows / torch.where(scales > 0, scales, torch.ones_like(scales))[:, None]
        keys, assignment = torch.unique(torch.round(normalized * 4096), return_inverse=True)
        codebook = torch.zeros(len(keys), dtype=torch.float64).scatter_reduce(
            0, assignment.reshape(-1), normalized.reshape(-1), "mean", include_self=False)
        return Structure(zeros, assignment, len(keys), True, codebook, scales)
    assignment = torch.stack([torch.unique(row, return_inverse=True)[1] for row in rows])
    return Structure(zeros, assignment, int(assignment.max()) + 1, False)


def _clustered(rows: torch.Tensor) -> bool:
    depth = rows.shape[1]
    if depth < 4:
        return False
    counts = torch.tensor([len(torch.unique(row)) for row in rows])
    return bool(torch.all((counts <= CLUSTERED_FRACTION * depth) & (counts <= MAX_LEVELS)))


@torch.no_grad()
def project(weight: torch.Tensor, structure: Structure) -> None:
    """Move ``weight`` (in place) onto ``structure``, unless it has not changed since the last time."""
    if structure.projected == weight._version:
        return
    rows = weight.detach().reshape(weight.shape[0], -1).double()  # a copy for a channels_last weight
    if structure.assignment is not None:
        assignment = structure.assignment.to(weight.device)
        if structure.scaled:
            new = _scaled(rows, assignment, structure)
        else:
            sums = torch.zeros(rows.shape[0], structure.clusters, dtype=torch.float64, device=weight.device)
            counts = torch.zeros_like(sums)
            sums.scatter_add_(1, assignment, rows)
            counts.scatter_add_(1, assignment, torch.ones_like(rows))
            new = torch.gather(sums / counts.clamp(min=1), 1, assignment)
        weight.copy_(new.reshape(weight.shape).to(weight.dtype))
    if structure.zeros is not None:
        weight.masked_fill_(structure.zeros.to(weight.device), 0.0)
    structure.projected = weight._version


def _scaled(rows: torch.Tensor, assignment: torch.Tensor, structure: Structure) -> torch.Tensor:
    """One alternating least-squares step of ``rows ~ scales[r] * codebook[assignment]``."""
    scales = structure.scales.to(rows.device)
    flat = assignment.reshape(-1)
    weighted = (rows * scales[:, None]).reshape(-1)
    mass = (scales[:, None] ** 2).expand_as(rows).reshape(-1)
    top = torch.zeros(structure.clusters, dtype=torch.float64, device=rows.device).index_add_(0, flat, weighted)
    bottom = torch.zeros_like(top).index_add_(0, flat, mass)
    codebook = torch.where(bottom > 0, top / bottom.clamp(min=1e-300), structure.codebook.to(rows.device))
    if structure.zeros is not None:
        codebook = torch.where(structure.codebook.to(rows.device) == 0, torch.zeros_like(codebook), codebook)
    low, high = int(codebook.argmin()), int(codebook.argmax())
    if codebook[low] < 0 < codebook[high]:  # opposite ends: each row's largest weight stays its scale times one value
        end = (codebook[high] - codebook[low]) / 2
        codebook[low], codebook[high] = -end, end
    values = codebook[assignment]
    norm = (values ** 2).sum(dim=1)
    scales = torch.where(norm > 0, (rows * values).sum(dim=1) / norm.clamp(min=1e-300), scales)
    structure.codebook, structure.scales = codebook, scales
    return scales[:, None] * values


def attach(module: torch.nn.Module, holders: dict[str, str], preserve: tuple[str, ...]) -> dict[str, Structure]:
    """Read each holder's structure and register the projecting pre-hook on ``module``; marks
    scaled-codebook layers' quantizers proportional. Returns holder name -> structure."""
    modules = dict(module.named_modules())
    found = {}
    for name in sorted(set(holders.values())):
        holder = modules[name]
        structure = structure_of(weight_of(holder), preserve)
        if structure is None:
            continue
        found[name] = structure
        if structure.scaled:
            quantizer = holder.quantizer if isinstance(holder, ConvBatchNorm) else holder.parametrizations.weight[0]
            quantizer.proportional = True
    if found:
        module.register_forward_pre_hook(_project_hook)
    return found


def _project_hook(model: torch.nn.Module, inputs) -> None:
    """Before a forward pass: the structures of the model's QAT state (a plain function, so that
    a copied or pickled model projects with its own state)."""
    from .qat import STATE

    state = getattr(model, STATE, None)
    if state is not None:
        project_all(model, state.structures)


def project_all(module: torch.nn.Module, structures: dict[str, Structure]) -> None:
    modules = dict(module.named_modules())
    for name, structure in structures.items():
        project(weight_of(modules[name]), structure)

