"""The chunked float32 make_classification: independent of chunks, distributed as sklearn's."""

import numpy as np
import pytest
from sklearn.datasets import make_classification as sk_make_classification
from sklearn.linear_model import LogisticRegression

from sparsetrain.errors import SparsetrainError
from sparsetrain.synthetic import make_classification

OPTIONS = dict(n_informative=6, n_redundant=3, n_repeated=2, n_classes=3, flip_y=0.02)


@pytest.mark.parametrize("chunk_rows", [1, 7, 64, 10_000])
def test_same_seed_same_data_whatever_the_chunks(chunk_rows):
    X, y = make_classification(300, 40, **OPTIONS, seed=5)
    Xc, yc = make_classification(300, 40, **OPTIONS, seed=5, chunk_rows=chunk_rows)
    assert X.dtype == np.float32 and X.shape == (300, 40) and y.dtype == np.int64
    assert np.array_equal(X, Xc) and np.array_equal(y, yc)
    X2, _ = make_classification(300, 40, **OPTIONS, seed=6)
    assert not np.array_equal(X, X2)


def test_fills_a_given_array_in_place():
    out = np.zeros((50, 12), np.float32)
    X, _ = make_classification(50, 12, seed=1, out=out)
    assert X is out and np.array_equal(out, make_classification(50, 12, seed=1)[0])
    with pytest.raises(SparsetrainError, match="'out' parameter"):
        make_classification(50, 12, out=np.zeros((50, 12)))


def _structure(X, y, n_useful):
    """Class balance, the class-mean spread of the ``n_useful`` most separated columns, the
    median column std (noise columns are the majority: N(0, 1)) and the other columns'
    spreads."""
    balance = np.bincount(y) / y.size
    means = np.stack([X[y == c].mean(axis=0) for c in np.unique(y)])  # (classes, features)
    spread = means.max(axis=0) - means.min(axis=0)  # (features,)
    informative = np.sort(np.argsort(spread)[::-1][:n_useful])
    noise = np.setdiff1d(np.arange(X.shape[1]), informative)
    return balance, spread[informative].mean(), np.median(X.std(axis=0)), spread[noise]


def test_distribution_matches_sklearn():
    n, d = 6000, 60
    kw = dict(n_informative=8, n_redundant=0, n_repeated=0, n_classes=2, flip_y=0.01)
    X, y = make_classification(n, d, **kw, seed=0)
    Xs, ys = sk_make_classification(n, d, **kw, random_state=0)
    bal, sep, noise_std, noise_spread = _structure(X, y, 8)
    bal_s, sep_s, noise_std_s, _ = _structure(Xs, ys, 8)
    assert np.allclose(bal, 0.5, atol=0.01) and np.allclose(bal_s, 0.5, atol=0.01)
    assert noise_std == pytest.approx(1.0, abs=0.02) and noise_std_s == pytest.approx(1.0, abs=0.02)
    assert np.median(noise_spread) < 0.1  # noise columns: no class information
    # Informative columns: class means apart by the same order as sklearn's (random
    # hypercube vertices and covariances: equal in distribution, not in value).
    assert 0.3 < sep / sep_s < 3.0 and sep > 1.0
    # Linear separability comparable to sklearn's on the same sizes.
    scores = [LogisticRegression(max_iter=500).fit(A[:4000], b[:4000]).score(A[4000:], b[4000:])
              for A, b in ((X, y), (Xs, ys))]
    assert abs(scores[0] - scores[1]) < 0.15 and min(scores) > 0.6


def test_redundant_and_repeated_columns_are_what_they_say():
    X, y = make_classification(500, 30, n_informative=4, n_redundant=3, n_repeated=2, seed=2,
                               flip_y=0.0)
    rank = np.linalg.matrix_rank(X - X.mean(axis=0), tol=1e-3)
    assert rank == 30 - 3 - 2  # redundant = combinations of informative; repeated = copies
    corr = np.corrcoef(X.T)
    np.fill_diagonal(corr, 0)
    assert np.sum(np.isclose(corr, 1.0, atol=1e-5)) >= 2 * 2  # each repeated pair, both ways


def test_label_noise_and_class_counts():
    _, y = make_classification(1000, 10, n_informative=3, n_redundant=0, flip_y=0.0, seed=0)
    assert np.array_equal(np.bincount(y), [500, 500])  # exact per-cluster counts, no noise
    _, y_all = make_classification(2000, 10, n_informative=3, n_redundant=0, flip_y=1.0, seed=0)
    assert 0.4 < y_all.mean() < 0.6  # every label redrawn at random


@pytest.mark.parametrize("kw, match", [
    (dict(n_samples=0), "'n_samples'"),
    (dict(n_features=5, n_informative=4, n_redundant=2), "'n_features'"),
    (dict(n_informative=1, n_classes=3), "'n_informative'"),
    (dict(flip_y=1.5), "'flip_y'"),
    (dict(class_sep=-1.0), "'class_sep'"),
    (dict(seed=-1), "'seed'"),
])
def test_bad_parameters_name_themselves(kw, match):
    args = dict(n_samples=20, n_features=10, n_informative=3, n_redundant=0)
    args.update(kw)
    n, d = args.pop("n_samples"), args.pop("n_features")
    with pytest.raises(SparsetrainError, match=match):
        make_classification(n, d, **args)
