"""Madelon's generator (``sklearn.datasets.make_classification``) in float32, in row chunks.

The paper's extreme-scale task (SPEC 1.9) is ``make_classification`` with 10,000 samples
and 65,536 features. scikit-learn builds it in float64 and shuffles it with fancy
indexing, so a 2.6 GB float32 matrix costs about 13 GB at its peak. This generator
writes float32 rows straight into one preallocated ``(n_samples, n_features)`` array
and never holds more than one chunk of temporaries.

Semantics are scikit-learn's (hypercube=True, shift=0, scale=1, shuffle=True):

* ``n_clusters = n_classes * n_clusters_per_class`` centroids on distinct vertices of
  the hypercube ``{-class_sep, +class_sep}^n_informative``; cluster ``k`` has label
  ``k % n_classes`` and ``n_samples // n_clusters`` samples (the remainder goes to the
  first clusters);
* a sample of cluster ``k``: informative features ``z A_k + c_k`` with ``z ~ N(0, I)``
  and ``A_k`` uniform in ``[-1, 1]^(n_informative x n_informative)`` (a random
  covariance per cluster); redundant features ``x_inf B`` with ``B`` uniform in
  ``[-1, 1]``; repeated features copy random informative/redundant columns; the rest
  are ``N(0, 1)`` noise;
* a fraction ``flip_y`` of the labels is replaced by uniform random classes;
* rows and feature columns come out in random order.

Randomness: the model of the data (centroids, ``A_k``, ``B``, cluster of every row,
flipped labels, column order) comes from ``default_rng([seed, 0])``; row ``i``'s normals
from ``default_rng([seed, 1, i])``. So the result depends only on ``seed``, not on the
chunk size, and any row can be regenerated alone. The values are not those of
scikit-learn for the same seed (its single stream cannot be split by rows); the
distribution is the same (tested against it).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import SparsetrainError

_CHUNK_BYTES = 64 << 20  # temporaries per chunk of rows


def _hypercube_vertices(rng: np.random.Generator, n_vertices: int, dim: int) -> np.ndarray:
    """``n_vertices`` distinct random vertices of ``{0, 1}^dim`` as float32 rows."""
    if dim <= 62:
        codes = rng.choice(2**dim, size=n_vertices, replace=False)
        bits = (codes[:, None] >> np.arange(dim)) & 1  # (n_vertices, dim)
        return bits.astype(np.float32)
    while True:  # 2^-62 chance of a repeat per pair: draw again if it happens
        bits = rng.integers(0, 2, size=(n_vertices, dim), dtype=np.int8)
        if np.unique(bits, axis=0).shape[0] == n_vertices:
            return bits.astype(np.float32)


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise SparsetrainError(f"The '{name}' parameter must be an integer >= {low}. "
                               f"Got {value!r} instead.")
    return int(value)


def make_classification(n_samples: int = 100, n_features: int = 20, *, n_informative: int = 2,
                        n_redundant: int = 2, n_repeated: int = 0, n_classes: int = 2,
                        n_clusters_per_class: int = 2, flip_y: float = 0.01,
                        class_sep: float = 1.0, seed: int = 0, chunk_rows: int | None = None,
                        out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A classification problem as scikit-learn's ``make_classification``, float32, chunked.

    Parameters are scikit-learn's (see the module docstring for the model), plus
    ``seed`` (the one seed), ``chunk_rows`` (rows generated at a time; default: about
    64 MB of temporaries; the result does not depend on it) and ``out`` (a C-contiguous
    float32 ``(n_samples, n_features)`` array to fill, e.g. a memory map).

    Returns
    -------
    X : (n_samples, n_features) float32
    y : (n_samples,) int64
    """
    n_samples = _check_int("n_samples", n_samples, 1)
    n_features = _check_int("n_features", n_features, 1)
    n_informative = _check_int("n_informative", n_informative, 1)
    n_redundant = _check_int("n_redundant", n_redundant, 0)
    n_repeated = _check_int("n_repeated", n_repeated, 0)
    n_classes = _check_int("n_classes", n_classes, 2)
    n_clusters_per_class = _check_int("n_clusters_per_class", n_clusters_per_class, 1)
    seed = _check_int("seed", seed, 0)
    if n_informative + n_redundant + n_repeated > n_features:
        raise SparsetrainError(
            f"The 'n_features' parameter must be at least n_informative + n_redundant + "
            f"n_repeated = {n_informative + n_redundant + n_repeated}. Got {n_features} instead.")
    n_clusters = n_classes * n_clusters_per_class
    if math.log2(n_clusters) > n_informative:
        raise SparsetrainError(
            f"The 'n_informative' parameter must be >= log2(n_classes * n_clusters_per_class)"
            f" = {math.log2(n_clusters):g} (each cluster needs its own hypercube vertex). "
            f"Got {n_informative} instead.")
    if not (isinstance(flip_y, float | int) and 0.0 <= flip_y <= 1.0):
        raise SparsetrainError(f"The 'flip_y' parameter must be a float in [0, 1]. "
                               f"Got {flip_y!r} instead.")
    if not (isinstance(class_sep, float | int) and math.isfinite(class_sep) and class_sep > 0):
        raise SparsetrainError(f"The 'class_sep' parameter must be a float in (0, inf). "
                               f"Got {class_sep!r} instead.")
    if chunk_rows is not None:
        chunk_rows = _check_int("chunk_rows", chunk_rows, 1)
    if out is None:
        out = np.empty((n_samples, n_features), np.float32)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float32
          or out.shape != (n_samples, n_features) or not out.flags.c_contiguous):
        raise SparsetrainError(
            f"The 'out' parameter must be a C-contiguous float32 array of shape "
            f"({n_samples}, {n_features}). Got {getattr(out, 'dtype', type(out))} "
            f"{getattr(out, 'shape', '')} instead.")

    # The model of the data, from one stream.
    rng = np.random.default_rng([seed, 0])
    n_useful = n_informative + n_redundant
    centroids = _hypercube_vertices(rng, n_clusters, n_informative)  # (n_clusters, n_inf)
    centroids = centroids * np.float32(2 * class_sep) - np.float32(class_sep)
    mixing = [(2 * rng.random((n_informative, n_informative), np.float32) - 1)
              for _ in range(n_clusters)]  # A_k, (n_inf, n_inf) each
    redundant = 2 * rng.random((n_informative, n_redundant), np.float32) - 1  # B
    repeated = ((n_useful - 1) * rng.random(n_repeated) + 0.5).astype(np.intp)  # source cols
    sizes = np.full(n_clusters, n_samples // n_clusters)
    sizes[: n_samples - sizes.sum()] += 1
    cluster = rng.permutation(np.repeat(np.arange(n_clusters), sizes))  # (n_samples,)
    y = (cluster % n_classes).astype(np.int64)
    flip = rng.random(n_samples) < flip_y
    y[flip] = rng.integers(0, n_classes, size=int(flip.sum()))
    columns = rng.permutation(n_features)  # output column of each generated feature
    useful_cols = columns[: n_useful + n_repeated]  # informative, redundant, repeated

    if chunk_rows is None:
        chunk_rows = max(1, _CHUNK_BYTES // (4 * max(n_useful + n_repeated, 1) + 4 * n_features))
    z = np.empty((chunk_rows, n_informative), np.float32)
    for r0 in range(0, n_samples, chunk_rows):
        r1 = min(n_samples, r0 + chunk_rows)
        zc = z[: r1 - r0]
        for i in range(r0, r1):
            row_rng = np.random.default_rng([seed, 1, i])
            row_rng.standard_normal(dtype=np.float32, out=zc[i - r0])
            row_rng.standard_normal(dtype=np.float32, out=out[i])  # noise everywhere, useful columns replaced
        useful = np.empty((r1 - r0, n_useful + n_repeated), np.float32)
        inf = useful[:, :n_informative]
        for i in range(r1 - r0):  # row by row (gemv): a row's bits never depend on the chunk
            inf[i] = zc[i] @ mixing[cluster[r0 + i]] + centroids[cluster[r0 + i]]
            if n_redundant:
                useful[i, n_informative:n_useful] = inf[i] @ redundant
        if n_repeated:
            useful[:, n_useful:] = useful[:, repeated]
        out[r0:r1, useful_cols] = useful
    return out, y
