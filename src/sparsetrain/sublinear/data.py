"""Data for the sublinear experiments: synthetic teacher data and two-class Fashion-MNIST.

All inputs are normalised to unit Euclidean norm (SPEC 2.1).  The Fashion-MNIST
reader is a tiny IDX parser local to this subpackage (gzip + ``np.frombuffer``).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, SparsetrainError
from .network import ShiftedReLUNetwork

__all__ = ["LABELS", "synthetic", "fashion_mnist_two_class", "read_idx", "find_data_dir"]

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
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise SparsetrainError(f"{name} must be an integer >= 1; got {v!r}.")
    if labels not in LABELS:
        raise SparsetrainError(f"labels must be one of {', '.join(LABELS)}; got {labels!r}.")
    rng = np.random.default_rng(seed)
    X = _unit_rows(rng.standard_normal((n, dim)))
    if labels == "sign":
        return X, rng.choice(np.array([-1.0, 1.0]), size=n)
    teacher = ShiftedReLUNetwork.init(teacher_width, dim, seed=int(rng.integers(2**31)))
    y = teacher.predict(X)
    sd = float(y.std())
    return X, y / sd if sd > 0 else y


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Folder holding ``fashion_mnist/`` or the IDX files themselves.

    Searched in order: ``data_dir``, ``$SPARSETRAIN_DATA``, ``./datasets``.
    """
    candidates = [data_dir, os.environ.get("SPARSETRAIN_DATA"), "datasets"]
    for c in candidates:
        if not c:
            continue
        p = Path(c)
        for q in (p / "fashion_mnist", p):
            if (q / "train-images-idx3-ubyte.gz").exists():
                return q
    raise DataNotFoundError(
        "data_dir must contain fashion_mnist/train-images-idx3-ubyte.gz (or the file "
        f"itself); searched {[str(c) for c in candidates if c]}. Pass --data-dir or set "
        "SPARSETRAIN_DATA."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a gzipped IDX file (images: 16-byte header, labels: 8-byte header)."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise SparsetrainError(f"path must be an unsigned-byte IDX file; got {str(path)!r}.")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(shape)):
        raise SparsetrainError(f"path {str(path)!r} is truncated: header says {shape}.")
    return data.reshape(shape)


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
    if split not in ("train", "test"):
        raise SparsetrainError(f"split must be 'train' or 'test'; got {split!r}.")
    if len(classes) != 2 or classes[0] == classes[1] or not all(0 <= c <= 9 for c in classes):
        raise SparsetrainError(f"classes must be two distinct labels in 0..9; got {classes!r}.")
    folder = find_data_dir(data_dir)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    keep = np.flatnonzero((labels == classes[0]) | (labels == classes[1]))
    rng = np.random.default_rng(seed)
    keep = rng.permutation(keep)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SparsetrainError(f"n must be an integer >= 1 or None; got {n!r}.")
        keep = keep[:n]
    X = images[keep].reshape(keep.size, -1).astype(np.float64) / 255.0  # (n, 784)
    X -= X.mean(axis=0)
    if dim is not None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise SparsetrainError(f"dim must be an integer >= 1 or None; got {dim!r}.")
        R = rng.standard_normal((X.shape[1], dim)) / np.sqrt(dim)  # (784, dim)
        X = X @ R
    y = np.where(labels[keep] == classes[0], 1.0, -1.0)
    return _unit_rows(X), y
