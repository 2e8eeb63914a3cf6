"""Truly sparse training inside PyTorch models (optional extra ``torch``).

* :class:`SparseLinear`: an ``nn.Module`` whose parameters are the connection values;
  CPU through the project's kernels, CUDA through ``torch.sparse``;
* :class:`AllReLU`, :class:`SReLU`: the project's activations as modules;
* :class:`SETScheduler`, :class:`ImportancePruning`: the topology steps at the end of an
  epoch, with the optimizer's per-connection state remapped.

Conversion to and from :class:`sparsetrain.model.SparseMLP`:
:func:`sparsetrain.interop.to_sequential` and :func:`sparsetrain.interop.from_torch`.
"""

from .activations import AllReLU, SReLU
from .layer import SparseLinear, Standardize
from .topology import ImportancePruning, SETScheduler, remap_connection_state

__all__ = ["AllReLU", "ImportancePruning", "SETScheduler", "SReLU", "SparseLinear",
           "Standardize", "remap_connection_state"]
