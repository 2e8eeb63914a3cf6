"""Training configuration, its one table of hyperparameters, and the paper's presets
(SPEC 1.7, Table 7 and the reference code).

A :class:`TrainConfig` holds every hyperparameter of a sequential SET run. Each field
carries its :class:`Param` (rule, help text, command-line flag, scikit-learn name) in
its dataclass metadata, and :data:`PARAMS` collects them: :meth:`TrainConfig.validate`,
the ``sparsetrain train`` options and the estimators' ``_parameter_constraints`` are all
built from it, so adding a hyperparameter is one field here plus its documentation.

Validation happens here, at the boundary. The layers below (:class:`SparseMLP`,
:class:`SparseLinear`) also take inputs that never pass through a ``TrainConfig``
(direct library use, model files, PyTorch modules) and keep only what protects them:
the structure the kernels index into, the Erdős–Rényi density their sizes allow, and
the names they dispatch on (an unknown name has no code to run), raised with the same
message :meth:`TrainConfig.validate` gives.

The ``paper`` preset of a dataset starts from the defaults and overrides what Table 7
gives for it; options the user passes override the preset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from numbers import Real

import numpy as np

from .activations import ACTIVATIONS
from .errors import SparsetrainError, param_error
from .evolution import GROW, REGROW, ZETA_SCHEDULES
from .layers import FAN_IN_MODES, INITIALIZERS
from .memory import CSC_MODES
from .model import LOSSES
from .optim import LR_SCHEDULES

# ---------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Interval:
    """A number in an interval: ``kind`` is ``int`` (Python ints only, so configs stay
    JSON-able) or ``float`` (any finite real). ``closed`` says which ends belong to it:
    ``"left"``, ``"right"``, ``"both"`` or ``"neither"``; ``None`` bounds are infinite.
    ``none`` (if set) says what ``None`` means, and allows it."""

    kind: type
    low: float | None = None
    high: float | None = None
    closed: str = "both"
    noun: str = ""
    none: str = ""

    def allows(self, value) -> bool:
        if value is None:
            return bool(self.none)
        if self.kind is int:
            if not isinstance(value, int):
                return False
        elif not (isinstance(value, Real) and math.isfinite(value)):
            return False
        if self.low is not None and not (value >= self.low if self.closed in ("left", "both")
                                         else value > self.low):
            return False
        return self.high is None or (value <= self.high if self.closed in ("right", "both")
                                     else value < self.high)

    @property
    def text(self) -> str:
        noun = self.noun or ("an integer" if self.kind is int else "a float")
        if self.low is None and self.high is None:
            text = noun
        elif self.high is None and self.kind is int:
            text = f"{noun} {'>=' if self.closed in ('left', 'both') else '>'} {self.low:g}"
        else:
            left = "[" if self.closed in ("left", "both") else "("
            right = "]" if self.closed in ("right", "both") else ")"
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            text = f"{noun} in {left}{low}, {high}{right}"
        return f"{text}, or None for {self.none}" if self.none else text

    def parse(self, text: str):
        """The command-line value (argparse ``type``); ``none`` where None is allowed
        (kept as the text ``"none"`` so that it overrides a preset, see :func:`make_config`)."""
        if self.none and text.strip().lower() == "none":
            return NONE
        return self.kind(text)

    def coerce(self, value):
        """A face's value (e.g. a NumPy scalar from scikit-learn) as the config stores it."""
        return value if value is None else self.kind(value)


@dataclass(frozen=True)
class Choice:
    """One name of ``options``, the lookup table that owns the names (``ACTIVATIONS``...)."""

    options: Collection[str]

    def allows(self, value) -> bool:
        return isinstance(value, str) and value in self.options

    @property
    def text(self) -> str:
        return f"one of {sorted(self.options)}"

    @property
    def metavar(self) -> str:
        return "{" + ",".join(self.options) + "}"

    parse = staticmethod(str)
    coerce = staticmethod(lambda value: value)


@dataclass(frozen=True)
class Widths:
    """Hidden layer widths: a non-empty sequence of positive Python ints."""

    text = "a list of positive integers such as 1000,1000,1000"

    def allows(self, value) -> bool:
        return (isinstance(value, tuple | list) and len(value) > 0
                and all(isinstance(h, int) and h >= 1 for h in value))

    @staticmethod
    def parse(text: str) -> tuple[int, ...]:
        import argparse  # only the command line parses text

        try:
            sizes = tuple(int(t) for t in text.split(",") if t.strip())
        except ValueError:
            sizes = ()
        if not sizes or min(sizes) < 1:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated positive widths such as 1000,1000,1000, got {text!r}")
        return sizes

    @staticmethod
    def coerce(value):
        """Any 1-D integer array-like (or one int) as a tuple of ints; else unchanged, so
        that validation reports what came in."""
        sizes = np.atleast_1d(np.asarray(value))
        if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer):
            return value
        return tuple(int(h) for h in sizes)


@dataclass(frozen=True)
class Flag:
    """A boolean (``0``/``1`` and NumPy booleans count as one)."""

    text = "True or False"

    @staticmethod
    def allows(value) -> bool:
        return isinstance(value, bool | int | np.bool_) and value in (True, False)

    coerce = staticmethod(bool)


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its rule, one line of help, and its name on each face.

    ``flag``: the ``sparsetrain train`` option (``--no-...`` flags switch a default
    True off); ``estimator``: the scikit-learn parameter name, or None where the
    estimators fix it themselves (``loss``) or do not offer it; ``group``: the heading
    of the option in ``--help``.
    """

    name: str
    rule: Interval | Choice | Widths | Flag
    help: str
    flag: str
    estimator: str | None
    group: str | None = None

    def check(self, value, name: str | None = None, owner: str | None = None) -> None:
        """Raise the one message for this parameter unless ``value`` is allowed."""
        if not self.rule.allows(value):
            raise param_error(name or self.name, self.rule.text, value, owner=owner)


_SAME = "<same>"
#: The command line's word for None (an unset option is None and leaves the preset's value).
NONE = "none"
_IP = "Importance Pruning of hidden neurons (SPEC 1.6)"
_SCALE = "width and memory (very wide networks, SPEC 1.9 and 1.11)"


def _param(default, rule, help: str, *, flag: str | None = None, estimator: str | None = _SAME,
           group: str | None = None):
    """A :class:`TrainConfig` field whose metadata is its :class:`Param` (named later)."""
    spec = dict(rule=rule, help=help, flag=flag, estimator=estimator, group=group)
    return dataclasses.field(default=default, metadata={"param": spec})


# ---------------------------------------------------------------------------- the table


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
    lr_warmup : float
        Epochs over which the learning rate ramps linearly from ``lr / T`` to ``lr``
        (``T`` the ramp's updates; Goyal et al. 2017), then stays at ``lr``. Default 0
        (none, as the paper); the ``synthetic`` preset warms up for one epoch.
    lr_schedule : {"constant", "cosine"}
        The learning rate over the epochs: ``lr`` (the paper) or, from epoch ``e``
        (0-based) of ``E``, ``lr (1 + cos(pi e / E)) / 2`` (cosine annealing, Loshchilov
        & Hutter 2017; the rate is set once an epoch, after any ``lr_warmup`` ramp).
    zeta : float
        Fraction of positive and of negative connections rewired by SET each epoch.
    regrow : {"zero", "init"}
        Value of regrown connections: zero (default) or a draw from the initialiser.
    grow : {"random", "gradient", "momentum", "importance"}
        Where SET regrows (:mod:`sparsetrain.evolution`): random empty positions (the
        paper), or the best of ``grow_candidates`` times as many by gradient magnitude
        (RigL-style), gradient momentum, or the importance of their input neuron
        (``sum_j |w_ij|``), scored truly sparse.
    grow_candidates : int
        Candidates scored per regrown connection by the scored rules.
    zeta_schedule : {"constant", "cosine"}
        The rewired fraction over the epochs: ``zeta`` (the paper) or cosine-decayed.
    val_fraction : float
        Fraction of the training set held out as a validation split (0: none), drawn
        from ``seed``; evaluated every epoch for model selection without the test set.
    evolve_output : bool
        Whether the output layer evolves too (a fully connected layer never does).
    ip_start, ip_step, ip_percentile : int or None, int, float
        Importance Pruning (SPEC 1.6): after epochs ``ip_start, ip_start + ip_step, ...``
        (never after the last) remove every hidden neuron whose importance is at or below
        the ``ip_percentile``-th percentile of its layer. ``ip_start=None``: no pruning.
    seed : int
        The one seed of the run.
    fan_in_ref : float or None
        Width-aware parametrisation (SPEC 1.11): a layer whose mean fan-in ``F`` exceeds
        it starts with its initial values scaled by ``sqrt(fan_in_ref / F)`` and trains
        its connections with ``lr * fan_in_ref / F``
        (:func:`sparsetrain.optim.fan_in_lr_scales`), so one SGD step moves its outputs
        as far as a layer of fan-in ``fan_in_ref`` would, whatever its width. Default 100
        (chosen on the paper's 1 M-neuron network, see docs/benchmarks/extreme-scale.md);
        every paper preset sets None (one rate and the plain initialiser, as the paper).
        With it, He-uniform initial values are also scaled for the activation's slope and
        the dropout rate so that ``Var(z)`` stays 1 through depth
        (:func:`sparsetrain.model.second_moment_gains`).
    micro_batch : int or None
        Samples per forward/backward pass; a larger batch runs as micro-batches whose
        gradients add up to the batch's (the same step, to float rounding). None: the
        whole batch when it fits in memory, else the largest multiple of 16 that does.
    csc_index : {"auto", "keep", "drop"}
        Whether the layers keep a CSC index for the forward pass (8 bytes a connection):
        ``keep``; ``drop`` (a lean network: 12 bytes a connection in all, the forward pass
        scatters over the CSR rows, the same results); ``auto`` (default): keep it unless
        the network fits in memory only without it (:mod:`sparsetrain.memory`).

    The allowed values, help texts and option names of every field are in :data:`PARAMS`.
    """

    hidden: tuple[int, ...] = _param(
        (1000, 1000, 1000), Widths(), "hidden widths, e.g. 1000,1000,1000",
        estimator="hidden_layer_sizes")
    epsilon: float = _param(
        20.0, Interval(float, 0, None, "neither"), "Erdős–Rényi density parameter")
    activation: str = _param(
        "all-relu", Choice(ACTIVATIONS), "hidden activation")
    alpha: float = _param(
        0.6, Interval(float, None, None, "neither", noun="a finite float"),
        "negative slope of All-ReLU / leaky ReLU")
    dropout: float = _param(
        0.3, Interval(float, 0, 1, "left"), "dropout rate of hidden layers")
    init: str = _param(
        "he-uniform", Choice(INITIALIZERS), "initialiser of new connections")
    fan_in: str = _param(
        "sparse", Choice(FAN_IN_MODES),
        "fan-in the initialiser scales with (default sparse: mean fan-in; dense: n_in)")
    loss: str = _param(
        "cross-entropy", Choice(LOSSES), "output loss", estimator=None)
    epochs: int = _param(
        500, Interval(int, 1, None, "left"), "training epochs", estimator="max_iter")
    batch_size: int = _param(
        128, Interval(int, 1, None, "left"), "mini-batch size")
    lr: float = _param(
        0.01, Interval(float, 0, None, "neither"), "learning rate", estimator="learning_rate")
    momentum: float = _param(
        0.9, Interval(float, 0, 1, "left"), "SGD momentum")
    weight_decay: float = _param(
        2e-4, Interval(float, 0, None, "left"), "L2 penalty on connection values")
    lr_warmup: float = _param(
        0.0, Interval(float, 0, None, "left", noun="a number of epochs"),
        "epochs over which the learning rate ramps linearly up to lr (default 0: none)",
        estimator=None)
    lr_schedule: str = _param(
        "constant", Choice(LR_SCHEDULES), "learning rate over the epochs: 'constant' (the "
        "paper) or 'cosine' (decays towards 0 over the epochs)", estimator=None)
    zeta: float = _param(
        0.3, Interval(float, 0, 1, "left"), "fraction rewired by SET each epoch")
    regrow: str = _param(
        "zero", Choice(REGROW), "value of regrown connections (default zero)",
        estimator=None)
    grow: str = _param(
        "random", Choice(GROW), "where SET regrows: random empty positions (the paper), or "
        "those of largest gradient ('gradient', RigL-style), gradient momentum "
        "('momentum') or input-neuron importance sum_j |w_ij| ('importance') among "
        "grow_candidates times as many random ones", estimator=None)
    grow_candidates: int = _param(
        10, Interval(int, 1, None, "left"), "random empty positions scored per regrown "
        "connection by the scored rules (10)", estimator=None)
    zeta_schedule: str = _param(
        "constant", Choice(ZETA_SCHEDULES), "rewired fraction over the epochs: 'constant' "
        "(the paper) or 'cosine' (decays to 0, RigL)", estimator=None)
    val_fraction: float = _param(
        0.0, Interval(float, 0, 1, "left"), "fraction of the training set held out for "
        "model selection (val_loss, val_accuracy in metrics.csv; default 0)",
        estimator=None)
    evolve_output: bool = _param(
        True, Flag(), "keep the output layer's topology fixed", flag="--no-evolve-output")
    ip_start: int | None = _param(
        None, Interval(int, 1, None, "left", noun="an epoch number",
                       none="no Importance Pruning"),
        "first epoch after which to prune", estimator=None, group=_IP)
    ip_step: int = _param(
        10, Interval(int, 1, None, "left"), "epochs between pruning steps (10)",
        estimator=None, group=_IP)
    ip_percentile: float = _param(
        20.0, Interval(float, 0, 100, "both", noun="a percentile"),
        "prune neurons at or below this percentile of importance (20)", estimator=None,
        group=_IP)
    seed: int = _param(
        0, Interval(int, 0, None, "left"), "the one seed of the run", estimator=None)
    fan_in_ref: float | None = _param(
        100.0, Interval(float, 0, None, "neither",
                        none="one learning rate and the plain initialiser (the paper)"),
        "width-aware parametrisation: layers whose mean fan-in F exceeds this start "
        "sqrt(fan_in_ref / F) smaller and train with lr * fan_in_ref / F (default 100; "
        "'none': as the paper's presets)", estimator=None, group=_SCALE)
    micro_batch: int | None = _param(
        None, Interval(int, 1, None, "left", none="the whole batch if it fits in memory"),
        "samples per forward/backward pass; gradients of a batch's micro-batches add up "
        "(default: the whole batch if it fits in memory, else the largest multiple of 16 "
        "that does)", estimator=None, group=_SCALE)
    csc_index: str = _param(
        "auto", Choice(CSC_MODES),
        "keep the forward pass's CSC index (8 bytes a connection, the fastest forward "
        "pass), drop it (12 bytes a connection in all; the forward pass scatters, about 2x "
        "slower at huge width, same results), or auto: keep it unless the network fits "
        "only without it", estimator=None, group=_SCALE)

    def validate(self, *, names: Mapping[str, str] | None = None,
                 owner: str | None = None) -> TrainConfig:
        """Check every field against :data:`PARAMS`; raise :class:`SparsetrainError`
        naming the first bad one (as ``names[field]`` where given, of ``owner``)."""
        for name, param in PARAMS.items():
            param.check(getattr(self, name), (names or {}).get(name), owner)
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        unknown = set(d) - set(PARAMS)
        if unknown:
            raise SparsetrainError(f"Unknown training option(s) {sorted(unknown)}; the known "
                                   f"ones are {sorted(PARAMS)}. Check the spelling.")
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(int(h) for h in d["hidden"])
        return cls(**d)


def _named(field: dataclasses.Field) -> Param:
    spec = dict(field.metadata["param"])
    if spec["flag"] is None:
        spec["flag"] = "--" + field.name.replace("_", "-")
    if spec["estimator"] == _SAME:
        spec["estimator"] = field.name
    return Param(field.name, **spec)


#: Every hyperparameter of :class:`TrainConfig`, in field order: name -> :class:`Param`.
PARAMS: dict[str, Param] = {f.name: _named(f) for f in dataclasses.fields(TrainConfig)}


#: Paper settings per dataset (SPEC 1.7): overrides of the defaults above. Each paper preset
#: trains every layer with one learning rate (``fan_in_ref=None``), as the paper does.
PRESETS: dict[str, dict] = {
    "fashion-mnist": dict(hidden=(1000, 1000, 1000), epsilon=20.0, lr=0.01, batch_size=128,
                          init="he-uniform", activation="all-relu", alpha=0.6, dropout=0.3,
                          momentum=0.9, weight_decay=2e-4, zeta=0.3, epochs=500,
                          fan_in_ref=None),
    "madelon": dict(hidden=(400, 100, 400), epsilon=10.0, lr=0.01, batch_size=32, init="normal",
                    activation="all-relu", alpha=0.5, dropout=0.3, epochs=500, fan_in_ref=None),
    "cifar10": dict(hidden=(4000, 1000, 4000), epsilon=20.0, lr=0.01, batch_size=128,
                    init="he-uniform", activation="all-relu", alpha=0.75, dropout=0.3, epochs=500,
                    fan_in_ref=None),
    "higgs": dict(hidden=(1000, 1000, 1000), epsilon=10.0, lr=0.01, batch_size=128, init="xavier",
                  activation="all-relu", alpha=0.05, dropout=0.3, epochs=500, fan_in_ref=None),
    "leukemia": dict(hidden=(27500, 27500), epsilon=10.0, lr=0.005, batch_size=5, init="normal",
                     activation="all-relu", alpha=0.75, dropout=0.3, epochs=500,
                     fan_in_ref=None),
    # Extreme-scale setting of the paper's section 2.4 (SPEC 1.9), at a width one machine
    # trains in seconds; widen with --hidden. Batch, momentum, dropout and epsilon are the
    # paper's; the rest is not (docs/benchmarks/extreme-scale.md, "Learning at width"):
    # width-aware rates (the default fan_in_ref; at the paper's widths one rate diverges,
    # SPEC 1.11), leaky ReLU 0.6 instead of All-ReLU (whose odd layers fold z and -z onto
    # one value, losing the sign of the inputs' evidence), and lr 0.4 reached by a
    # one-epoch warm-up (lr 0.01 leaves the 1 M-neuron network at chance after 3 epochs).
    "synthetic": dict(hidden=(1000, 1000), epsilon=10.0, lr=0.4, lr_warmup=1.0,
                      batch_size=128, activation="leaky-relu", alpha=0.6, dropout=0.4,
                      momentum=0.9, epochs=10),
}


def dataset_key(name: str) -> str:
    """The registry key of a dataset name: case, spaces and ``_``/``-`` do not matter
    (``Madelon``, ``FASHION_MNIST``), as in :func:`sparsetrain.data.load_dataset`."""
    return str(name).strip().lower().replace("_", "-")


def make_config(dataset: str | None, preset: str = "paper", **overrides) -> TrainConfig:
    """Defaults, then the dataset's ``paper`` preset (if any and asked for), then ``overrides``
    (``None`` values are ignored; :data:`NONE`, the command line's ``none``, sets None)."""
    if preset not in ("paper", "none"):
        raise param_error("preset", "'paper' or 'none'", preset)
    values = {}
    key = dataset_key(dataset) if dataset is not None else None
    if preset == "paper" and key in PRESETS:
        values.update(PRESETS[key])
    values.update({k: (None if v is NONE else v) for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values).validate()
