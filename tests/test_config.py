"""The one table of hyperparameters (sparsetrain.config.PARAMS): TrainConfig's fields, the
'train' options and the estimators' parameters agree with it; every rule refuses with the
one message style on every face; the layers below give the same message for the names
they dispatch on."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from sparsetrain.activations import ACTIVATIONS, get_activation
from sparsetrain.cli import build_parser, main
from sparsetrain.config import PARAMS, PRESETS, Choice, TrainConfig, make_config
from sparsetrain.errors import SparsetrainError
from sparsetrain.estimators import SETMLPClassifier, SETMLPRegressor
from sparsetrain.evolution import GROW, REGROW, ZETA_SCHEDULES
from sparsetrain.layers import FAN_IN_MODES, INITIALIZERS, SparseLinear
from sparsetrain.memory import CSC_MODES
from sparsetrain.model import LOSSES, SparseMLP
from sparsetrain.optim import LR_SCHEDULES

#: One value each rule refuses, per field.
BAD = {"hidden": (8, 0), "epsilon": 0.0, "activation": "tanhh", "alpha": math.inf,
       "dropout": 1.0, "init": "zeros", "fan_in": "both", "loss": "hinge", "epochs": 0,
       "batch_size": 0, "lr": math.nan, "momentum": 1.0, "weight_decay": -1e-4,
       "lr_warmup": -1.0, "lr_schedule": "step", "zeta": 1.0, "regrow": "random", "grow": "rigl",
       "grow_candidates": 0, "zeta_schedule": "linear",
       "val_fraction": 1.0, "evolve_output": "yes", "ip_start": 0, "ip_step": 0,
       "ip_percentile": 100.5, "seed": -1, "fan_in_ref": -5.0, "micro_batch": 0,
       "csc_index": "lean"}


def train_subparser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_table_is_the_fields_of_trainconfig():
    assert list(PARAMS) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert set(BAD) == set(PARAMS)


def test_cli_options_are_the_table():
    actions = {a.dest: a for a in train_subparser()._actions}
    for name, param in PARAMS.items():
        assert actions[name].option_strings == [param.flag], name
        assert actions[name].default is None, name  # unset: the preset decides
    # No option writes into a TrainConfig field except through the table.
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert {dest for dest in actions if dest in fields} == set(PARAMS)


@pytest.mark.parametrize("cls", [SETMLPClassifier, SETMLPRegressor])
def test_estimator_parameters_are_the_table(cls):
    table = {p.estimator for p in PARAMS.values() if p.estimator}
    assert set(cls().get_params()) == table | {"random_state", "verbose"}
    assert set(cls._parameter_constraints) == set(cls().get_params())
    # Every estimator parameter reaches the TrainConfig field of the same entry.
    values = dict(hidden_layer_sizes=(7, 5), epsilon=3.5, activation="relu", alpha=0.25,
                  dropout=0.1, init="xavier", fan_in="dense", max_iter=3, batch_size=9,
                  learning_rate=0.02, momentum=0.5, weight_decay=1e-3, zeta=0.2,
                  evolve_output=False)
    assert set(values) == table
    cfg = cls(**values)._config(epochs=3, seed=11)
    for param in PARAMS.values():
        if param.estimator:
            assert getattr(cfg, param.name) == values[param.estimator], param.name


def test_choices_are_the_owners_tables():
    owners = {"activation": ACTIVATIONS, "init": INITIALIZERS, "fan_in": FAN_IN_MODES,
              "loss": LOSSES, "regrow": REGROW, "grow": GROW, "zeta_schedule": ZETA_SCHEDULES,
              "csc_index": CSC_MODES, "lr_schedule": LR_SCHEDULES}
    assert {n for n, p in PARAMS.items() if isinstance(p.rule, Choice)} == set(owners)
    for name, table in owners.items():
        assert PARAMS[name].rule.options is table


def test_defaults_and_presets_are_valid():
    TrainConfig().validate()
    for name, preset in PRESETS.items():
        assert set(preset) <= set(PARAMS), name
        cfg = make_config(name)
        assert all(getattr(cfg, k) == v for k, v in preset.items()), name


@pytest.mark.parametrize("name", list(BAD))
def test_every_rule_refuses_in_one_style(name):
    param = PARAMS[name]
    assert param.rule.allows(getattr(TrainConfig(), name))
    with pytest.raises(SparsetrainError) as info:
        TrainConfig(**{name: BAD[name]}).validate()
    assert str(info.value) == (f"The '{name}' parameter must be {param.rule.text}. "
                               f"Got {BAD[name]!r} instead.")


@pytest.mark.parametrize("name", [n for n in BAD if n not in ("hidden", "evolve_output")])
def test_cli_gives_the_same_message(capsys, name):
    """Options are parsed to their type only; TrainConfig.validate says what is wrong."""
    bad = BAD[name]
    argv = ["train", "--dataset", "synthetic", "--n-samples", "100", "--n-features", "20",
            "--hidden", "8", "--epsilon", "2", "--epochs", "1", "--no-progress",
            PARAMS[name].flag, str(bad)]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    with pytest.raises(SparsetrainError) as info:
        TrainConfig(**{name: PARAMS[name].rule.parse(str(bad))}).validate()
    assert err == f"sparsetrain: error: {info.value}"


def test_estimator_messages_use_its_parameter_names():
    """What scikit-learn's constraints let through (an array-like of widths) TrainConfig
    refuses under the estimator's name for the field."""
    X = np.random.default_rng(0).standard_normal((30, 4))
    y = np.arange(30) % 2
    for cls, target in [(SETMLPClassifier, y), (SETMLPRegressor, y.astype(float))]:
        with pytest.raises(SparsetrainError) as info:
            cls((8, 0), epsilon=2).fit(X, target)
        assert str(info.value) == (f"The 'hidden_layer_sizes' parameter of {cls.__name__} must "
                                   f"be {PARAMS['hidden'].rule.text}. Got (8, 0) instead.")


def test_layers_refuse_names_with_the_config_message():
    """Model files and direct library use skip TrainConfig; the names that select code
    are refused below with the very message TrainConfig gives."""
    def message(fn):
        with pytest.raises(SparsetrainError) as info:
            fn()
        return str(info.value)

    rng = np.random.default_rng(0)
    for name, call in [
        ("init", lambda: SparseLinear.erdos_renyi(10, 10, 2, rng, init=BAD["init"])),
        ("fan_in", lambda: SparseLinear.erdos_renyi(10, 10, 2, rng, fan_in=BAD["fan_in"])),
        ("activation", lambda: get_activation(BAD["activation"])),
        ("loss", lambda: SparseMLP.create([4, 8, 2], epsilon=2, rng=rng, loss=BAD["loss"])),
        ("epsilon", lambda: SparseMLP.create([4, 8, 2], epsilon=BAD["epsilon"], rng=rng,
                                             cap_density=True)),
    ]:
        assert message(call) == message(lambda n=name: TrainConfig(**{n: BAD[n]}).validate())
