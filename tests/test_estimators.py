"""The scikit-learn estimators: scikit-learn's own estimator checks, Pipeline and
cross-validation on Madelon, partial_fit against fit, the regression loss against
PyTorch autograd, and the density rule for tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification, make_regression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparsetrain.data import load_dataset
from sparsetrain.estimators import SETMLPClassifier, SETMLPRegressor
from sparsetrain.model import SparseMLP

# Small settings so the ~50 scikit-learn checks per estimator take seconds; the learning
# checks (accuracy > 0.83 on blobs, R^2 > 0.5) still have to pass with them.
SMALL = dict(hidden_layer_sizes=(16,), epsilon=2.0, max_iter=5, batch_size=16,
             learning_rate=0.05, random_state=0)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.filterwarnings("ignore:epsilon=.*denser than 1:UserWarning")
@parametrize_with_checks([SETMLPClassifier(**SMALL), SETMLPRegressor(**SMALL)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_invalid_parameter_is_named():
    X, y = make_classification(60, 8, random_state=0)
    with pytest.raises(InvalidParameterError, match="'epsilon' parameter of SETMLPClassifier"):
        SETMLPClassifier(epsilon=-1).fit(X, y)
    with pytest.raises(InvalidParameterError, match="'activation'"):
        SETMLPRegressor(activation="tanhh").fit(X, y.astype(float))
    with pytest.raises(ValueError, match="hidden_layer_sizes"):
        SETMLPClassifier(hidden_layer_sizes=(16, 0)).fit(X, y)


def test_partial_fit_equals_fit_and_continues_evolution():
    """k partial_fit calls = fit(max_iter=k): same trainer, one more epoch per call, the SET
    step skipped after each call's last epoch applied at the start of the next."""
    X, y = make_classification(200, 12, n_classes=3, n_informative=6, random_state=1)
    labels = np.array(["a", "b", "c"])[y]
    params = dict(hidden_layer_sizes=(32, 32), epsilon=4.0, batch_size=32, random_state=3)
    full = SETMLPClassifier(max_iter=4, **params).fit(X, labels)
    inc = SETMLPClassifier(**params)
    for _ in range(4):
        inc.partial_fit(X, labels, classes=["a", "b", "c"])
    assert inc.n_iter_ == full.n_iter_ == 4
    np.testing.assert_array_equal(inc.predict_proba(X), full.predict_proba(X))
    assert inc.loss_curve_ == full.loss_curve_
    for a, b in zip(inc.model_.layers, full.model_.layers, strict=True):
        np.testing.assert_array_equal(a.keys(), b.keys())  # same topology after SET
    assert set(inc.predict(X)) <= {"a", "b", "c"}
    with pytest.raises(ValueError, match="not in classes_"):
        inc.partial_fit(X, np.where(labels == "a", "z", labels))
    with pytest.raises(ValueError, match="classes must be passed"):
        SETMLPClassifier(**params).partial_fit(X, labels)


def test_regressor_partial_fit_and_multioutput():
    X, Y = make_regression(150, 6, n_targets=2, noise=1.0, random_state=0)
    Y = Y * 50 + 1000  # far from unit scale: the model standardises the targets
    # Few mini-batches per epoch: little dropout and rewiring, or SET's regrowth dominates.
    params = dict(hidden_layer_sizes=(32,), epsilon=4.0, batch_size=16, dropout=0.0, zeta=0.05,
                  random_state=0)
    full = SETMLPRegressor(max_iter=3, **params).fit(X, Y)
    inc = SETMLPRegressor(**params)
    for _ in range(3):
        inc.partial_fit(X, Y)
    np.testing.assert_array_equal(inc.predict(X), full.predict(X))
    assert full.predict(X).shape == (150, 2)
    assert SETMLPRegressor(max_iter=30, **params).fit(X, Y).score(X, Y) > 0.8


def test_same_random_state_same_model():
    X, y = make_classification(120, 10, random_state=0)
    a = SETMLPClassifier(**SMALL).fit(X, y)
    b = clone(a).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    c = SETMLPClassifier(**{**SMALL, "random_state": 1}).fit(X, y)
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))


def test_density_rule_for_tiny_inputs():
    """Estimators fully connect a hidden layer that epsilon would make denser than 1 (with
    a warning); SparseMLP.create (the CLI's path) still refuses."""
    X, y = make_classification(80, 3, n_informative=2, n_redundant=0, random_state=0)
    # epsilon 3: density of 3->16 is 3 * 19 / 48 = 1.19
    with pytest.warns(UserWarning, match=r"3->16 denser than 1.*fully connected"):
        clf = SETMLPClassifier(**{**SMALL, "epsilon": 3.0}).fit(X, y)
    assert clf.model_.layers[0].nnz == 3 * 16
    with pytest.raises(ValueError, match="denser than 1"):
        SparseMLP.create([3, 16, 2], epsilon=3.0, rng=np.random.default_rng(0))


def test_regression_gradient_against_torch_autograd(rng):
    torch = pytest.importorskip("torch")
    sizes = [12, 20, 15, 3]
    m = SparseMLP.create(sizes, epsilon=3, rng=rng, activation="all-relu", alpha=0.6, dropout=0.0,
                         loss="mse", task="regression",
                         input_mean=rng.standard_normal(12), input_std=rng.uniform(0.5, 2, 12),
                         target_mean=rng.standard_normal(3), target_std=rng.uniform(0.5, 2, 3))
    for layer in m.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out) * 0.1
    X = rng.standard_normal((9, 12)).astype(np.float32)
    Y = rng.standard_normal((9, 3)).astype(np.float32) * 2
    loss, grads = m.gradients(X, Y)

    Ws = [torch.tensor(la.to_dense(), dtype=torch.float64, requires_grad=True) for la in m.layers]
    bs = [torch.tensor(la.bias, dtype=torch.float64, requires_grad=True) for la in m.layers]
    h = (torch.tensor(X, dtype=torch.float64) - torch.tensor(m.input_mean, dtype=torch.float64)) \
        / torch.tensor(m.input_std, dtype=torch.float64)
    for l, (W, b) in enumerate(zip(Ws, bs, strict=True)):
        z = h @ W + b
        h = torch.where(z > 0, z, m.slopes()[l] * z) if l < len(Ws) - 1 else z
    t = (torch.tensor(Y, dtype=torch.float64) - torch.tensor(m.target_mean, dtype=torch.float64)) \
        / torch.tensor(m.target_std, dtype=torch.float64)
    ref = 0.5 * ((h - t) ** 2).sum(dim=1).mean()  # 0.5 * mean_b sum_k (z - t)^2
    ref.backward()
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    for layer, (g, gb, _), W, b in zip(m.layers, grads, Ws, bs, strict=True):
        rows, cols = layer.rows(), layer.row_cols
        np.testing.assert_allclose(g, W.grad.numpy()[rows, cols], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(gb, b.grad.numpy(), rtol=1e-4, atol=1e-6)
    # Predictions come back in the targets' units.
    z_std = h.detach().numpy()
    np.testing.assert_allclose(m.predict(X), z_std * m.target_std + m.target_mean, rtol=1e-4,
                               atol=1e-5)


def test_pipeline_and_cross_val_score_on_madelon(datasets_dir):
    ds = load_dataset("madelon", datasets_dir, standardize=False)
    pipe = make_pipeline(StandardScaler(), SETMLPClassifier(
        (100,), epsilon=5.0, max_iter=5, batch_size=32, random_state=0))
    scores = cross_val_score(pipe, ds.X_train, ds.y_train, cv=3)
    assert scores.shape == (3,) and np.all((scores >= 0) & (scores <= 1))
    pipe.fit(ds.X_train, ds.y_train)
    curve = pipe[-1].loss_curve_
    assert len(curve) == 5 and curve[-1] < curve[0]  # it learns (accuracy needs ~100s of epochs)
    assert pipe.predict(ds.X_test).shape == (600,)
    assert set(np.unique(pipe.predict(ds.X_test))) <= {0, 1}


def test_quiet_by_default_and_train_only_history(capsys):
    X, y = make_classification(60, 8, random_state=0)
    clf = SETMLPClassifier(**SMALL).fit(X, y)
    assert capsys.readouterr().out == ""
    assert len(clf.history_) == 5 and "test_loss" not in clf.history_[0]
    assert clf.loss_curve_ == [r["train_loss"] for r in clf.history_]
    SETMLPClassifier(**{**SMALL, "verbose": 1}).fit(X, y)
    assert "epoch 5/5: train loss" in capsys.readouterr().out


# --- issue 13: the DEFAULT parameters pass scikit-learn's checks ------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("Estimator", [SETMLPClassifier, SETMLPRegressor])
def test_check_estimator_with_default_parameters(Estimator):
    """About 30 s each on one thread. The regressor's defaults once failed 16 checks with a
    NaN loss (its dropout default is now 0.0, see SETMLPRegressor)."""
    from sklearn.utils.estimator_checks import check_estimator

    results = check_estimator(Estimator(), on_fail=None)
    failed = [f"{r['check_name']}: {str(r['exception']).splitlines()[0]}"
              for r in results if r["status"] == "failed"]
    assert not failed, failed


def test_regressor_defaults_train_on_tiny_problems():
    # 1 feature, 10 samples: the check scikit-learn's MLPRegressor() passes.
    rng = np.random.RandomState(0)
    X = 10 * rng.uniform(size=(10, 1))
    assert np.isfinite(SETMLPRegressor(random_state=0).fit(X, X[:, 0].astype(int)).loss_curve_).all()
    assert SETMLPRegressor().dropout == 0.0 and SETMLPClassifier().dropout == 0.3
