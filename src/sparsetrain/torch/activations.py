"""The project's hidden activations as ``nn.Module``s (definitions: :mod:`sparsetrain.activations`).

They are elementwise over the last dimension and work after any torch layer; after a
:class:`~sparsetrain.torch.SparseLinear` they keep its transposed layout, so the next
sparse layer reads their output without a copy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..activations import ACTIVATIONS
from ..errors import param_error


class AllReLU(nn.Module):
    """All-ReLU of hidden layer ``layer_index`` (1-based, SPEC 1.5)::

        f(z) = z            if z > 0
             = -alpha * z   if z <= 0 and layer_index is odd
             =  alpha * z   if z <= 0 and layer_index is even
    """

    def __init__(self, alpha: float = 0.6, layer_index: int = 1):
        super().__init__()
        if not isinstance(layer_index, int | np.integer) or layer_index < 1:
            raise param_error("layer_index", "an int >= 1 (the 1-based hidden layer)", layer_index,
                              owner="AllReLU")
        if not np.isfinite(alpha):
            raise param_error("alpha", "a finite float", alpha, owner="AllReLU")
        self.alpha = float(alpha)
        self.layer_index = int(layer_index)
        self.slope = ACTIVATIONS["all-relu"].slope(self.layer_index, self.alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, self.slope)  # z if z > 0 else slope * z, any slope sign

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, layer_index={self.layer_index} (slope {self.slope:g})"


class SReLU(nn.Module):
    """S-shaped ReLU with four trainable parameters per neuron (Jin et al. 2016)::

        f(z) = t_r + a_r (z - t_r)   if z >= t_r
             = t_l + a_l (z - t_l)   if z <= t_l
             = z                     otherwise

    ``params`` (4, n): rows ``t_l, a_l, t_r, a_r``, initialised as the project's
    (``t_l = 0``, ``a_l ~ U(0, 1)``, ``t_r ~ U(0, 5)``, ``a_r = 1``).
    """

    def __init__(self, n: int, *, seed=None, params=None):
        super().__init__()
        if not isinstance(n, int | np.integer) or n < 1:
            raise param_error("n", "an int >= 1 (the number of neurons)", n, owner="SReLU")
        if params is None:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            params = ACTIVATIONS["srelu"].init_params(rng, int(n))
        params = torch.as_tensor(np.asarray(params, np.float32)).clone()
        if params.shape != (4, n):
            raise param_error("params", f"an array of shape (4, {n})", tuple(params.shape),
                              owner="SReLU")
        self.params = nn.Parameter(params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tl, al, tr, ar = self.params  # each (n,), broadcast over the last dimension
        return torch.where(x >= tr, tr + ar * (x - tr),
                           torch.where(x <= tl, tl + al * (x - tl), x))

    def extra_repr(self) -> str:
        return f"n={self.params.shape[1]}"
