"""Training configuration and the paper's presets (SPEC 1.7, Table 7 and the reference code).

A :class:`TrainConfig` holds every hyperparameter of a sequential SET run. The
``paper`` preset of a dataset starts from the defaults and overrides what Table 7
gives for it; options the user passes override the preset.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .activations import ACTIVATIONS
from .errors import SparsetrainError
from .layers import FAN_IN_MODES, INITIALIZERS
from .model import LOSSES


@dataclass
class TrainConfig:
    """Hyperparameters of one training run (defaults: Fashion-MNIST, SPEC 1.7).

    Attributes
    ----------
    hidden : tuple of int
        Hidden layer widths.
    epsilon : float
        Erdős–Rényi density parameter: a layer gets about ``epsilon * (n_in + n_out)``
        connections.
    activation, alpha : str, float
        Hidden activation (see ``ACTIVATIONS``) and its negative-side slope parameter.
    dropout : float
        Inverted-dropout rate on hidden layers.
    init, fan_in : str
        Initialiser and the fan-in it scales with: ``"sparse"`` (mean fan-in of the
        sparse layer, our default) or ``"dense"`` (``n_in``, as the paper's code).
    loss : str
        ``"cross-entropy"`` (softmax) or ``"mse"``.
    epochs, batch_size, lr, momentum, weight_decay : training schedule (SPEC 1.3).
    zeta : float
        Fraction of positive and of negative connections rewired by SET each epoch.
    regrow : {"zero", "init"}
        Value of regrown connections: zero (default) or a draw from the initialiser.
    evolve_output : bool
        Whether the output layer evolves too (a fully connected layer never does).
    ip_start, ip_step, ip_percentile : int or None, int, float
        Importance Pruning (SPEC 1.6): after epochs ``ip_start, ip_start + ip_step, ...``
        (never after the last) remove every hidden neuron whose importance is at or below
        the ``ip_percentile``-th percentile of its layer. ``ip_start=None``: no pruning.
    seed : int
        The one seed of the run.
    """

    hidden: tuple[int, ...] = (1000, 1000, 1000)
    epsilon: float = 20.0
    activation: str = "all-relu"
    alpha: float = 0.6
    dropout: float = 0.3
    init: str = "he-uniform"
    fan_in: str = "sparse"
    loss: str = "cross-entropy"
    epochs: int = 500
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    zeta: float = 0.3
    regrow: str = "zero"
    evolve_output: bool = True
    ip_start: int | None = None
    ip_step: int = 10
    ip_percentile: float = 20.0
    seed: int = 0

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`SparsetrainError` naming the first bad one."""
        def bad(name, allowed, got):
            raise SparsetrainError(f"The '{name}' parameter must be {allowed}. Got {got!r} instead.")

        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            bad("hidden", "a list of positive integers such as 1000,1000,1000", self.hidden)
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            bad("epsilon", "a float in (0, inf)", self.epsilon)
        if self.activation not in ACTIVATIONS:
            bad("activation", f"one of {sorted(ACTIVATIONS)}", self.activation)
        if not math.isfinite(self.alpha):
            bad("alpha", "a finite float", self.alpha)
        if not 0.0 <= self.dropout < 1.0:
            bad("dropout", "a float in [0, 1)", self.dropout)
        if self.init not in INITIALIZERS:
            bad("init", f"one of {sorted(INITIALIZERS)}", self.init)
        if self.fan_in not in FAN_IN_MODES:
            bad("fan_in", f"one of {list(FAN_IN_MODES)}", self.fan_in)
        if self.loss not in LOSSES:
            bad("loss", f"one of {list(LOSSES)}", self.loss)
        if not isinstance(self.epochs, int) or self.epochs < 1:
            bad("epochs", "an integer >= 1", self.epochs)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            bad("batch_size", "an integer >= 1", self.batch_size)
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", "a float in (0, inf)", self.lr)
        if not 0.0 <= self.momentum < 1.0:
            bad("momentum", "a float in [0, 1)", self.momentum)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            bad("weight_decay", "a float in [0, inf)", self.weight_decay)
        if not 0.0 <= self.zeta < 1.0:
            bad("zeta", "a float in [0, 1)", self.zeta)
        if self.ip_start is not None and (not isinstance(self.ip_start, int) or self.ip_start < 1):
            bad("ip_start", "an epoch number >= 1 (or None for no Importance Pruning)",
                self.ip_start)
        if not isinstance(self.ip_step, int) or self.ip_step < 1:
            bad("ip_step", "an integer >= 1 (epochs between pruning steps)", self.ip_step)
        if not (isinstance(self.ip_percentile, int | float) and 0 <= self.ip_percentile <= 100):
            bad("ip_percentile", "a percentile in [0, 100]", self.ip_percentile)
        if self.regrow not in ("zero", "init"):
            bad("regrow", "'zero' or 'init'", self.regrow)
        if not isinstance(self.seed, int) or self.seed < 0:
            bad("seed", "an integer >= 0", self.seed)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SparsetrainError(f"unknown training options {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(int(h) for h in d["hidden"])
        return cls(**d)


#: Paper settings per dataset (SPEC 1.7): overrides of the defaults above.
PRESETS: dict[str, dict] = {
    "fashion-mnist": dict(hidden=(1000, 1000, 1000), epsilon=20.0, lr=0.01, batch_size=128,
                          init="he-uniform", activation="all-relu", alpha=0.6, dropout=0.3,
                          momentum=0.9, weight_decay=2e-4, zeta=0.3, epochs=500),
    "madelon": dict(hidden=(400, 100, 400), epsilon=10.0, lr=0.01, batch_size=32, init="normal",
                    activation="all-relu", alpha=0.5, dropout=0.3, epochs=500),
    "cifar10": dict(hidden=(4000, 1000, 4000), epsilon=20.0, lr=0.01, batch_size=128,
                    init="he-uniform", activation="all-relu", alpha=0.75, dropout=0.3, epochs=500),
    "higgs": dict(hidden=(1000, 1000, 1000), epsilon=10.0, lr=0.01, batch_size=128, init="xavier",
                  activation="all-relu", alpha=0.05, dropout=0.3, epochs=500),
    "leukemia": dict(hidden=(27500, 27500), epsilon=10.0, lr=0.005, batch_size=5, init="normal",
                     activation="all-relu", alpha=0.75, dropout=0.3, epochs=500),
    # Extreme-scale setting of the paper's section 2.4 (SPEC 1.9), at a width one machine
    # trains in seconds; widen with --hidden.
    "synthetic": dict(hidden=(1000, 1000), epsilon=10.0, lr=0.01, batch_size=128,
                      dropout=0.4, momentum=0.9, epochs=10),
}


def make_config(dataset: str | None, preset: str = "paper", **overrides) -> TrainConfig:
    """Defaults, then the dataset's ``paper`` preset (if any and asked for), then ``overrides``
    (``None`` values are ignored)."""
    if preset not in ("paper", "none"):
        raise SparsetrainError(f"The 'preset' parameter must be 'paper' or 'none'. Got {preset!r} instead.")
    values = {}
    if preset == "paper" and dataset in PRESETS:
        values.update(PRESETS[dataset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values).validate()
