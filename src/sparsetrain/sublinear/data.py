"""Data for the sublinear experiments: synthetic teacher data and two-class Fashion-MNIST.

All inputs are normalised to unit Euclidean norm (SPEC 2.1).  Fashion-MNIST is
found and read by the core's dataset registry (:mod:`sparsetrain.data`): the
same folders as ``sparsetrain train`` searches (``data_dir``,
``$SPARSETRAIN_DATA``, then the download cache, each directly or in a
``fashion_mnist`` subfolder) and the same IDX reader.  Nothing is downloaded
here: ``sparsetrain train --dataset fashion-mnist`` downloads the files into the
cache, where these experiments then find them.
"""

from __future__ import annotations

import os

import numpy as np

from ..data import DATASETS, _not_found, _read_idx, locate
from ._checks import check_choice, check_int, invalid
from .network import ShiftedReLUNetwork

__all__ = ["LABELS", "synthetic", "fashion_mnist_two_class"]

FASHION_MNIST = "fashion-mnist"  # the core registry's name of the dataset

LABELS = ("teacher", "sign")


def _unit_rows(X: np.ndarray) -> np.ndarray:
    nrm = np.linalg.norm(X, axis=1, keepdims=True)
    nrm[nrm == 0] = 1.0
    return np.ascontiguousarray(X / nrm)


def synthetic(
    n: int, dim: int, *, labels: str = "teacher", teacher_width: int = 64, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm Gaussian inputs ``x = g / ||g||``, ``g ~ N(0, I_d)``, and targets.

    ``labels="teacher"``: ``y = f_teacher(x)`` from a random shifted-ReLU network
    of width ``teacher_width`` (same form, own weights, shift of its width),
    rescaled to unit standard deviation.  ``labels="sign"``: ``y`` uniform in
    {-1, +1}, independent of ``x``.
    """
    for name, v in (("n", n), ("dim", dim), ("teacher_width", teacher_width)):
        check_int(name, v)
    check_choice("labels", labels, LABELS)
    rng = np.random.default_rng(seed)
    X = _unit_rows(rng.standard_normal((n, dim)))
    if labels == "sign":
        return X, rng.choice(np.array([-1.0, 1.0]), size=n)
    teacher = ShiftedReLUNetwork.init(teacher_width, dim, seed=int(rng.integers(2**31)))
    y = teacher.predict(X)
    sd = float(y.std())
    return X, y / sd if sd > 0 else y


def fashion_mnist_two_class(
    data_dir: str | os.PathLike | None = None,
    *,
    classes: tuple[int, int] = (0, 6),
    n: int | None = None,
    dim: int | None = None,
    split: str = "train",
    seed: int | None = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Two Fashion-MNIST classes as ``(X, y)`` with ``y = +1`` for ``classes[0]``, else -1.

    Pixels are scaled to [0, 1], centred by the subset's mean image, optionally
    projected to ``dim`` dimensions by a Gaussian matrix ``R / sqrt(dim)``
    (R ~ N(0, 1), seeded), and every row normalised to unit norm.  ``n`` keeps
    the first ``n`` examples of a seeded shuffle.  Default classes 0 (T-shirt)
    and 6 (shirt): the hardest pair.
    """
    check_choice("split", split, ("train", "test"))
    if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c <= 9 for c in classes):
        raise invalid("classes", "two distinct labels in 0..9", classes)
    folder = locate(FASHION_MNIST, data_dir)
    if folder is None:
        note = (
            "the sublinear experiments do not download it (sparsetrain train --dataset fashion-mnist "
            "downloads it into the cache folder)"
        )
        raise _not_found(DATASETS[FASHION_MNIST], data_dir, note)
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 3)  # (N, 28, 28) uint8
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 1)  # (N,) uint8
    keep = np.flatnonzero((labels == classes[0]) | (labels == classes[1]))
    rng = np.random.default_rng(seed)
    keep = rng.permutation(keep)
    if n is not None:
        keep = keep[: check_int("n", n)]
    X = images[keep].reshape(keep.size, -1).astype(np.float64) / 255.0  # (n, 784)
    X -= X.mean(axis=0)
    if dim is not None:
        dim = check_int("dim", dim)
        R = rng.standard_normal((X.shape[1], dim)) / np.sqrt(dim)  # (784, dim)
        X = X @ R
    y = np.where(labels[keep] == classes[0], 1.0, -1.0)
    return _unit_rows(X), y
