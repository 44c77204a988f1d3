"""Training-time techniques for PyTorch models (the ``torch`` extra): quantization-aware training,
pruning and clustering (each a ``prepare_*`` that returns a copy to train with any loop; ``strip``
and ``export``/``convert`` finish them). Importing this package imports torch; ``import edgeopt`` never does.

The design (issue 9): the float model is exported to ONNX and planned by the same int8 path as
post-training quantization; each planned tensor is found in the traced PyTorch module by its
value (:mod:`.placement`), so the fake quantizers sit exactly where QuantizeLinear/DequantizeLinear
will; after training, the learned parameters become a :class:`~edgeopt.QuantizationPlan` for the
re-exported float model.
"""

from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("edgeopt.torch needs PyTorch: pip install 'edgeopt[torch]'") from exc

from .channels import ChannelPruningResult, prune_channels
from .clustering import prepare_clustering, strip
from .pruning import prepare_pruning, set_step
from .qat import convert, export, prepare_qat

__all__ = ["ChannelPruningResult", "convert", "export", "prepare_clustering", "prepare_pruning", "prepare_qat",
           "prune_channels", "set_step", "strip"]
