"""Datasets: find, download, parse, validate and standardise them.

Every dataset is one entry of the lookup table :data:`DATASETS` (name ->
:class:`DatasetSpec`): a description, the files it needs with their SHA256 and
official download URL, the keyword options it takes, and a loader function that
turns the folder holding the files into train/test arrays. Adding a dataset is
one entry.

Where files are looked for (:func:`data_dirs`), in order:

1. the folder the user gives (``data_dir=...`` / ``--data-dir``),
2. the folder(s) in the ``SPARSETRAIN_DATA`` environment variable,
3. the cache folder (:func:`cache_dir`): ``$SPARSETRAIN_CACHE``, else
   ``$XDG_CACHE_HOME/sparsetrain``, else ``~/.cache/sparsetrain``.

Within each base folder the files may sit directly in it or in a subfolder
named like the dataset (``fashion_mnist`` or ``fashion-mnist``, ``madelon``).
Missing files are downloaded into the cache folder (verified against the
SHA256 in the registry, written atomically) unless ``download=False``.

All loaders return features as C-contiguous ``float32`` of shape
``(n_samples, n_features)`` and labels as ``int64`` in ``[0, n_classes)``.
With ``standardize=True`` every feature is shifted and scaled with the
*training* set's mean and standard deviation (paper section 4: inputs are
standardised per feature with training statistics); the test set is never
re-centred on its own statistics.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np

from sparsetrain.errors import DataNotFoundError, SparsetrainError, param_error

__all__ = [
    "DATASETS",
    "DataFile",
    "Dataset",
    "DatasetSpec",
    "cache_dir",
    "check_X",
    "check_labels",
    "check_targets",
    "check_y",
    "feature_stats",
    "data_dirs",
    "list_datasets",
    "load_dataset",
    "locate",
    "standardize_features",
    "validate_arrays",
]

#: Seconds to wait for a dataset host before giving up on a download.
DOWNLOAD_TIMEOUT = 20.0

# Rows per chunk in standardize_features: about 4M values (32 MB of float64)
# per temporary, so 10000 x 65536 synthetic data never needs a float64 copy.
_CHUNK_VALUES = 1 << 22
_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: A compressed dataset file may expand at most this much: real data compresses 2-10x,
#: deflated zeros about 1000x, so a 1 MB file cannot become 1 GB in memory ("zip bomb").
#: A legitimately more compressible file can be saved uncompressed (np.savez) instead.
_MAX_EXPANSION = 200


# ---------------------------------------------------------------------------
# Public data structures
# ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split ready for training.

    Parameters
    ----------
    name : str
        Registry name (``"fashion-mnist"``) or the stem of a user ``.npz`` file.
    X_train : ndarray of shape (n_train, n_features), float32, C-contiguous
    y_train : ndarray of shape (n_train,), int64 in ``[0, n_classes)``
    X_test : ndarray of shape (n_test, n_features), float32, C-contiguous
    y_test : ndarray of shape (n_test,), int64 in ``[0, n_classes)``
    n_classes : int
    source : str
        The folder or file the data came from, or ``"generated (...)"``.
    feature_mean, feature_std : ndarray of shape (n_features,), float32, or None
        Training-set statistics used to standardise ``X_train`` and ``X_test``
        (``None`` when loaded with ``standardize=False``). Apply them to new
        inputs as ``(X - feature_mean) / feature_std``.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    source: str
    feature_mean: np.ndarray | None = None
    feature_std: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        """Number of input features (columns of ``X_train``)."""
        return int(self.X_train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n_train={len(self.X_train)}, "
            f"n_test={len(self.X_test)}, n_features={self.n_features}, "
            f"n_classes={self.n_classes}, standardized={self.feature_mean is not None}, "
            f"source={self.source!r})"
        )


@dataclass(frozen=True)
class DataFile:
    """One file a dataset needs.

    Parameters
    ----------
    name : str
        File name as found on disk (no folders).
    sha256 : str or None
        Hex SHA256 of the official file; downloads are checked against it.
        ``None``: no checksum we can verify, so the file is never downloaded
        automatically (the error names ``url`` for a manual download).
    url : str or None
        Official download location.
    """

    name: str
    sha256: str | None
    url: str | None


class RawSplits(NamedTuple):
    """What a loader returns: unvalidated arrays plus where they came from."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None
    source: str


@dataclass(frozen=True)
class DatasetSpec:
    """One registry entry of :data:`DATASETS`.

    Parameters
    ----------
    name : str
        Registry name, lower case with hyphens.
    description : str
        One line for ``list_datasets`` / ``sparsetrain datasets``.
    loader : callable
        ``loader(folder, **options) -> RawSplits``. ``folder`` is the folder
        holding all of :attr:`files`, or ``None`` for generated datasets.
    files : tuple of DataFile
        Files needed; empty for generated datasets.
    folder_names : tuple of str
        Subfolder names accepted inside a base folder; the first one is used
        in the cache. Defaults to the name with ``_`` and with ``-``.
    options : mapping
        Keyword options of :func:`load_dataset` this dataset accepts, with
        their defaults (empty: none).
    """

    name: str
    description: str
    loader: Callable[..., RawSplits]
    files: tuple[DataFile, ...] = ()
    folder_names: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def generated(self) -> bool:
        """True if the dataset is generated in memory and needs no files."""
        return not self.files

    @property
    def subfolders(self) -> tuple[str, ...]:
        """Subfolder names accepted inside a base folder (first: cache subfolder)."""
        if self.folder_names:
            return self.folder_names
        names = (self.name.replace("-", "_"), self.name)
        return tuple(dict.fromkeys(names))


# ---------------------------------------------------------------------------
# Validation and standardisation (usable on any arrays)
# ---------------------------------------------------------------------------


def check_X(
    X: Any, name: str = "X", *, n_features: int | None = None, expected: str = ""
) -> np.ndarray:
    """The one check of a feature matrix; returns it as an array (not copied).

    ``X`` must be 2-D with at least one row and one column, numeric, and finite; with
    ``n_features``, it must have exactly that many columns (``expected`` says whose
    count that is, for the message: ``"X_train has 3"``, ``"the model expects 3"``).
    Errors name the array as ``name``.
    """
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise SparsetrainError(
            f"{name} must be a 2-D array of shape (n_samples, n_features); got an array "
            f"of shape {arr.shape}. Reshape it, e.g. {name}.reshape(len({name}), -1)."
        )
    if arr.shape[0] == 0:
        raise SparsetrainError(
            f"{name} has 0 samples; every split needs at least one sample. "
            "Check the file or the split fraction."
        )
    if arr.shape[1] == 0:
        raise SparsetrainError(f"{name} has 0 features; it needs at least one column. Check the file.")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise SparsetrainError(
            f"{name} must hold numbers; got dtype {arr.dtype}. "
            "Convert it with np.asarray(..., dtype=np.float32)."
        )
    if np.issubdtype(arr.dtype, np.complexfloating):  # once trained on the real part
        raise SparsetrainError(
            f"{name} must hold real numbers; got dtype {arr.dtype}. Split complex features "
            f"into real and imaginary columns (np.hstack([{name}.real, {name}.imag])) or "
            "take their magnitude."
        )
    if n_features is not None and arr.shape[1] != n_features:
        raise SparsetrainError(
            f"{name} has {arr.shape[1]} features but {expected or f'{n_features} are expected'}"
        )
    if np.issubdtype(arr.dtype, np.inexact):
        n_bad = n_rows = 0
        chunk = max(1, _CHUNK_VALUES // arr.shape[1])  # no full-size boolean temporary
        for start in range(0, arr.shape[0], chunk):
            finite = np.isfinite(arr[start : start + chunk])
            n_bad += finite.size - int(np.count_nonzero(finite))
            n_rows += int(np.count_nonzero(~finite.all(axis=1)))
        if n_bad:
            raise SparsetrainError(
                f"{name} contains {n_bad} NaN or infinite values (in {n_rows} of "
                f"{len(arr)} rows); features must be finite. Remove or impute them "
                "before training."
            )
        if arr.dtype.itemsize > 4 and arr.size:
            big = max(float(np.abs(arr[start : start + chunk]).max())
                      for start in range(0, arr.shape[0], chunk))
            if big > _FLOAT32_MAX:
                raise SparsetrainError(
                    f"{name} holds values up to {big:.3g} in magnitude, beyond float32's range "
                    f"({_FLOAT32_MAX:.3g}) in which sparsetrain computes; rescale those "
                    "features (e.g. standardise them or take their logarithm)."
                )
    return arr


#: Most classes a classifier's output layer may have when they are inferred from labels.
MAX_CLASSES = 100_000


def _check_inferred_classes(arr: np.ndarray, name: str, lo: int, hi: int) -> None:
    """Refuse labels whose ``max + 1`` would make an output layer far wider than the
    distinct labels call for: above :data:`MAX_CLASSES`, or over 100 classes of which most
    are never used (label 10**7 once built a 10-million-wide layer, then ran out of memory)."""
    if lo < 0 or hi < 100:
        return  # negative labels get their own message; narrow layers cost nothing
    n_distinct = len(np.unique(arr))
    if hi < MAX_CLASSES and hi + 1 <= 2 * n_distinct:
        return
    continuous = n_distinct > 0.5 * len(arr) and n_distinct > 20
    fix = ("They look like continuous targets: use a regression model (SETMLPRegressor)."
           if continuous else "Re-encode them as 0..n_classes-1, e.g. with "
           "sklearn.preprocessing.LabelEncoder.")
    raise SparsetrainError(
        f"{name} holds {n_distinct} distinct labels but its largest is {hi}, which would give "
        f"the classifier {hi + 1} outputs (at most {MAX_CLASSES} are allowed, and most would "
        f"never be used). {fix}")


def check_labels(
    y: Any,
    name: str = "y",
    *,
    n_rows: int,
    rows: str = "X",
    n_classes: int | None = None,
    origin: str = "given",
    fix: str = "",
) -> tuple[np.ndarray, int]:
    """The one check of classification labels; returns ``(labels as int64, n_classes)``.

    ``y`` must be 1-D with ``n_rows`` integer-valued labels (``rows`` names the feature
    array they belong to) in ``[0, n_classes)``; ``n_classes`` defaults to ``max(y) + 1``
    and must be at least 2. ``origin`` says where a given ``n_classes`` comes from and
    ``fix`` what to do about a label beyond it (default: pass a larger ``n_classes``).
    """
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise SparsetrainError(
            f"{name} must be a 1-D array of class labels; got shape {arr.shape}. "
            f"Flatten it with {name}.ravel() (one-hot labels: use argmax(axis=1))."
        )
    if len(arr) != n_rows:
        raise SparsetrainError(
            f"{name} has {len(arr)} labels but {rows} has {n_rows} rows; "
            "give exactly one label per row."
        )
    if arr.dtype != np.bool_:
        if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
            raise SparsetrainError(
                f"{name} must hold integer class labels; got dtype {arr.dtype}. Encode the "
                "classes as 0..n_classes-1, e.g. with sklearn.preprocessing.LabelEncoder."
            )
        if np.issubdtype(arr.dtype, np.floating):
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if bad.any():
                value = arr[np.argmax(bad)].item()
                raise SparsetrainError(
                    f"{name} must hold integer-valued class labels; got {value!r}. Encode "
                    "the classes as 0..n_classes-1, e.g. with "
                    "sklearn.preprocessing.LabelEncoder; for continuous targets use a "
                    "regression model (SETMLPRegressor)."
                )
    lo, hi = int(arr.min()), int(arr.max())
    if n_classes is None:
        _check_inferred_classes(arr, name, lo, hi)
        n_classes, origin = hi + 1, f"max({name}) + 1"
    elif isinstance(n_classes, bool) or not isinstance(n_classes, int | np.integer):
        raise param_error("n_classes", "an int >= 2", n_classes,
                          fix="Pass the number of classes as an integer.")
    n_classes = int(n_classes)
    if n_classes < 2:
        raise SparsetrainError(
            f"A classifier needs at least 2 classes; got n_classes={n_classes} ({origin}). "
            f"Check that {name} holds more than one class."
        )
    if lo < 0:
        raise SparsetrainError(
            f"{name} contains label {lo}; labels must be integers in [0, {n_classes}). "
            "Map them to 0..n_classes-1 (e.g. -1/+1 -> 0/1)."
        )
    if hi >= n_classes:
        raise SparsetrainError(
            f"{name} contains label {hi}, but n_classes is {n_classes} ({origin}), so "
            f"labels must be in [0, {n_classes}). "
            + (fix or f"Pass n_classes={hi + 1} or more, or re-encode the labels.")
        )
    return arr.astype(np.int64), n_classes


def check_targets(
    y: Any, name: str = "y", *, n_rows: int, n_outputs: int, rows: str = "X"
) -> np.ndarray:
    """The one check of regression targets; returns them as float32 (n_rows, n_outputs).

    ``y`` must hold finite real numbers (within float32), shape ``(n_rows, n_outputs)``
    or, for one output, ``(n_rows,)``.
    """
    arr = np.asarray(y)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_) or np.iscomplexobj(arr):
        raise SparsetrainError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] != n_outputs or arr.shape[0] != n_rows:
        raise SparsetrainError(
            f"{name} has shape {np.shape(y)}; this regression model expects "
            f"({n_rows}, {n_outputs})" + (f" or ({n_rows},)" if n_outputs == 1 else "")
            + f": one row of targets per row of {rows}."
        )
    arr = np.ascontiguousarray(arr, np.float32)
    if not np.all(np.isfinite(arr)):
        raise SparsetrainError(f"{name} contains NaN or infinite targets (or values beyond "
                               "float32); targets must be finite. Remove or rescale them.")
    return arr


def check_y(
    y: Any, name: str = "y", *, task: str, n_rows: int, n_outputs: int, rows: str = "X",
    origin: str = "the model's outputs",
) -> np.ndarray:
    """The targets of a model with ``n_outputs`` outputs: class labels (``task=
    "classification"``, :func:`check_labels`, int64) or real targets (``"regression"``,
    :func:`check_targets`, float32 (n_rows, n_outputs))."""
    if task == "regression":
        return check_targets(y, name, n_rows=n_rows, n_outputs=n_outputs, rows=rows)
    labels, _ = check_labels(
        y, name, n_rows=n_rows, rows=rows, n_classes=n_outputs, origin=origin,
        fix="Re-encode the labels as 0..n_classes-1, or use a model with more outputs.",
    )
    return labels


def validate_arrays(
    X_train: Any,
    y_train: Any,
    X_test: Any,
    y_test: Any,
    n_classes: int | None = None,
) -> int:
    """Check a classification train/test split and return the number of classes.

    Parameters
    ----------
    X_train, X_test : array-like of shape (n_samples, n_features)
        Numeric features, all finite, with the same number of columns (:func:`check_X`).
    y_train, y_test : array-like of shape (n_samples,)
        Integer-valued class labels in ``[0, n_classes)`` (:func:`check_labels`).
    n_classes : int, optional
        Number of classes; default ``max(y_train) + 1``.

    Returns
    -------
    int
        The number of classes (at least 2).

    Raises
    ------
    SparsetrainError
        With a one-line message naming the split, what is allowed, what came
        in, and the fix.
    """
    X_train = check_X(X_train, "X_train")
    n = X_train.shape[1]
    X_test = check_X(X_test, "X_test", n_features=n, expected=f"X_train has {n}; both splits "
                     "must have the same columns in the same order.")
    _, k = check_labels(y_train, "y_train", n_rows=len(X_train), rows="X_train",
                        n_classes=n_classes)
    check_labels(y_test, "y_test", n_rows=len(X_test), rows="X_test", n_classes=k,
                 origin="given" if n_classes is not None else "max(y_train) + 1")
    return k


def feature_stats(X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature training mean and std, float32, accumulated in float64 row chunks.

    A constant column (``min == max``) gets ``std = 1`` and ``mean`` equal to its
    value, so it standardises to exactly 0.
    """
    X_train = np.asarray(X_train)
    n_train, n_features = X_train.shape
    if n_train == 0:
        raise SparsetrainError(
            "feature statistics need at least one training row; got X_train of shape "
            f"{X_train.shape}."
        )
    chunk = max(1, _CHUNK_VALUES // max(n_features, 1))
    total = np.zeros(n_features, dtype=np.float64)
    for start in range(0, n_train, chunk):
        total += X_train[start : start + chunk].sum(axis=0, dtype=np.float64)
    mean = total / n_train
    sq = np.zeros(n_features, dtype=np.float64)
    for start in range(0, n_train, chunk):
        d = X_train[start : start + chunk].astype(np.float64) - mean  # (chunk, n_features)
        sq += np.einsum("ij,ij->j", d, d)
    std = np.sqrt(sq / n_train)
    constant = X_train.max(axis=0) == X_train.min(axis=0)  # (n_features,) bool
    std[constant] = 1.0
    mean[constant] = X_train[0, constant]
    return mean.astype(np.float32), std.astype(np.float32)


def standardize_features(
    X_train: np.ndarray, X_test: np.ndarray, *, in_place: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shift and scale every feature with the training set's mean and std.

    ``x' = (x - mean_train) / std_train``, per column, applied to both splits.
    The statistics are accumulated in float64 in row chunks (no full float64
    copy); outputs are float32.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
    X_test : ndarray of shape (n_test, n_features)

    Returns
    -------
    X_train_std, X_test_std : ndarray, float32, C-contiguous
        With ``in_place`` and writable C-contiguous float32 inputs, the inputs
        themselves (no second copy of the data).
    mean, std : ndarray of shape (n_features,), float32
        A constant training column (``std == 0``, detected exactly as
        ``min == max``) gets ``std = 1`` and ``mean`` equal to its value, so it
        maps to exactly 0 on the training set instead of to noise.
    """
    X_train = np.asarray(X_train)
    X_test = np.asarray(X_test)
    if X_train.ndim != 2 or X_test.ndim != 2 or X_train.shape[1] != X_test.shape[1]:
        raise SparsetrainError(
            "standardize_features needs two 2-D arrays with the same number of columns; "
            f"got X_train of shape {X_train.shape} and X_test of shape {X_test.shape}. "
            "Call validate_arrays first."
        )
    mean32, std32 = feature_stats(X_train)
    chunk = max(1, _CHUNK_VALUES // max(X_train.shape[1], 1))

    def apply(X: np.ndarray) -> np.ndarray:
        own = (in_place and X.dtype == np.float32 and X.flags.c_contiguous
               and X.flags.writeable)
        out = X if own else np.empty(X.shape, dtype=np.float32)
        for start in range(0, len(X), chunk):
            block = X[start : start + chunk].astype(np.float32, copy=False)
            np.subtract(block, mean32, out=out[start : start + chunk])
            out[start : start + chunk] /= std32
        return out

    return apply(X_train), apply(X_test), mean32, std32


# ---------------------------------------------------------------------------
# Where files are
# ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """The cache folder downloads go to.

    ``$SPARSETRAIN_CACHE`` if set, else ``$XDG_CACHE_HOME/sparsetrain``, else
    ``~/.cache/sparsetrain``. It is not created here.
    """
    env = os.environ.get("SPARSETRAIN_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "sparsetrain"
    return Path.home() / ".cache" / "sparsetrain"


def data_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Base folders searched for dataset files, in order.

    Parameters
    ----------
    data_dir : path-like, optional
        A folder given by the user (``--data-dir``); searched first.

    Returns
    -------
    list of Path
        ``data_dir`` (if given), then each folder of ``SPARSETRAIN_DATA`` (if
        set; several may be joined with ``os.pathsep``), then :func:`cache_dir`.
        Duplicates are dropped; folders need not exist.
    """
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get("SPARSETRAIN_DATA")
    if env:
        dirs.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    dirs.append(cache_dir())
    return list(dict.fromkeys(dirs))


def _get_spec(name: str) -> DatasetSpec:
    from .config import dataset_key

    key = dataset_key(name)
    try:
        return DATASETS[key]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise SparsetrainError(
            f"Unknown dataset {name!r}; known datasets are: {known}. To use your own "
            "data, pass the path of a .npz file with arrays X_train, y_train, X_test, y_test."
        ) from None


def _candidate_folders(spec: DatasetSpec, base: Path) -> list[Path]:
    return [base, *(base / sub for sub in spec.subfolders)]


def locate(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """Find the folder holding all files of a registered dataset.

    Parameters
    ----------
    name : str
        Registry name (case and ``_``/``-`` do not matter).
    data_dir : path-like, optional
        Searched first; see :func:`data_dirs`.

    Returns
    -------
    Path or None
        The first folder (a base folder itself, or its subfolder named like the
        dataset) that holds every file of the dataset; ``None`` if there is none
        or the dataset is generated.
    """
    spec = _get_spec(name)
    if spec.generated:
        return None
    for base in data_dirs(data_dir):
        for folder in _candidate_folders(spec, base):
            if all((folder / f.name).is_file() for f in spec.files):
                return folder
    return None


def list_datasets(data_dir: str | os.PathLike[str] | None = None) -> list[dict[str, str]]:
    """Describe every registered dataset and where its files are.

    Returns
    -------
    list of dict
        One dict per entry of :data:`DATASETS` with keys ``name``,
        ``description`` and ``location``: the folder found, ``"generated"``,
        or ``"not found (searched: ...)"``.
    """
    out = []
    for spec in DATASETS.values():
        if spec.generated:
            location = "generated"
        else:
            folder = locate(spec.name, data_dir)
            if folder is None:
                searched = ", ".join(str(d) for d in data_dirs(data_dir))
                location = f"not found (searched: {searched})"
            else:
                location = str(folder)
        out.append({"name": spec.name, "description": spec.description, "location": location})
    return out


# ---------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------


def _fetch(url: str, dest: Path) -> None:
    """Copy ``url`` to the file ``dest`` (the only function that uses the network)."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, open(dest, "wb") as f:
        while block := response.read(1 << 20):
            f.write(block)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _download_file(file: DataFile, folder: Path) -> Path:
    """Download one file into ``folder`` atomically, checking its SHA256.

    The bytes go to a temporary file in ``folder``; only a file whose checksum
    matches is renamed (``os.replace``) to its final name. On any failure the
    temporary file is removed and the error propagates.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{file.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _fetch(file.url, tmp)
        digest = _sha256(tmp)
        if digest != file.sha256:
            raise SparsetrainError(
                f"SHA256 checksum mismatch for {file.name} downloaded from {file.url}: "
                f"expected {file.sha256}, got {digest}; the file was discarded. Retry later "
                "or copy the official file by hand."
            )
        dest = folder / file.name
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def _download(spec: DatasetSpec) -> Path:
    """Download the missing files of ``spec`` into its cache subfolder."""
    folder = cache_dir() / spec.subfolders[0]
    for file in spec.files:
        if not (folder / file.name).is_file():
            if file.sha256 is None:
                raise SparsetrainError(
                    f"{file.name} has no published SHA256 to verify a download against, so it "
                    f"is not downloaded automatically; get it from {file.url or 'its source'}")
            _download_file(file, folder)
    return folder


def _not_found(spec: DatasetSpec, data_dir: Any, download_note: str) -> DataNotFoundError:
    searched = ", ".join(str(d) for d in data_dirs(data_dir))
    subs = " or ".join(spec.subfolders)
    files = ", ".join(f.name for f in spec.files)
    cache = cache_dir() / spec.subfolders[0]
    return DataNotFoundError(
        f"Dataset {spec.name!r} not found: its files ({files}) are in none of the folders "
        f"searched ({searched}; directly or in a subfolder {subs}), and {download_note}. "
        "Fix: pass --data-dir (data_dir= in Python) pointing to a folder with the files, "
        "or set the SPARSETRAIN_DATA environment variable to that folder, or put the files "
        f"in the cache folder {cache}."
    )


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    standardize: bool = True,
    download: bool = True,
    **options: Any,
) -> Dataset:
    """Load a dataset by name, or a user ``.npz`` file, as a validated train/test split.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``"fashion-mnist"``, ``"madelon"``,
        ``"synthetic"``), or the path of a ``.npz`` file holding arrays
        ``X_train``, ``y_train``, ``X_test``, ``y_test``.
    data_dir : path-like, optional
        Folder searched first for the dataset's files (see :func:`data_dirs`).
    standardize : bool, default True
        Standardise every feature with the training set's mean and std
        (:func:`standardize_features`).
    download : bool, default True
        Download missing files from the official URLs into the cache folder.
    **options
        Dataset-specific options, listed in ``DATASETS[name].options``.
        ``synthetic`` (``sklearn.datasets.make_classification``):
        ``n_samples=10000``, ``n_features=100``, ``n_informative=20``,
        ``n_classes=2``, ``test_fraction=0.3``, ``seed=0``.
        ``.npz`` files: ``n_classes`` (default ``max(y_train) + 1``).
        ``fashion-mnist`` and ``madelon`` take none.

    Returns
    -------
    Dataset

    Raises
    ------
    DataNotFoundError
        The files are in no folder searched and could not be downloaded.
    SparsetrainError
        Unknown name or option, corrupt file, or invalid arrays.
    """
    if str(name).lower().endswith(".npz"):
        _check_options("a .npz file", {"n_classes": None}, options)
        raw = _load_npz(Path(name).expanduser(), **options)
        ds_name = Path(name).stem
    else:
        spec = _get_spec(name)
        _check_options(f"dataset {spec.name!r}", spec.options, options)
        folder = None
        if not spec.generated:
            folder = locate(spec.name, data_dir)
            if folder is None:
                if not download:
                    raise _not_found(spec, data_dir, "internet download was disabled")
                try:
                    folder = _download(spec)
                except (OSError, SparsetrainError) as exc:
                    reason = " ".join(str(exc).split()) or type(exc).__name__
                    note = (
                        f"internet download was tried and failed ({type(exc).__name__}: {reason})"
                    )
                    raise _not_found(spec, data_dir, note) from exc
        raw = spec.loader(folder, **{**spec.options, **options})
        ds_name = spec.name
    n_classes = validate_arrays(raw.X_train, raw.y_train, raw.X_test, raw.y_test, raw.n_classes)
    X_train = np.ascontiguousarray(raw.X_train, dtype=np.float32)
    X_test = np.ascontiguousarray(raw.X_test, dtype=np.float32)
    y_train = np.asarray(raw.y_train).astype(np.int64)
    y_test = np.asarray(raw.y_test).astype(np.int64)
    mean = std = None
    if standardize:
        # The loaders' arrays are this call's own: standardised where they are.
        X_train, X_test, mean, std = standardize_features(X_train, X_test, in_place=True)
    return Dataset(
        name=ds_name,
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        n_classes=n_classes,
        source=raw.source,
        feature_mean=mean,
        feature_std=std,
    )


def _check_options(what: str, allowed: Mapping[str, Any], given: Mapping[str, Any]) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in allowed.items()) or "none"
        raise SparsetrainError(
            f"load_dataset got unknown option(s) {', '.join(unknown)} for {what}; "
            f"it accepts: {accepted}. Remove or rename the option."
        )


# --- IDX (Fashion-MNIST) ----------------------------------------------------

_IDX_UBYTE = 0x08  # IDX type code of unsigned bytes, the only one the MNIST files use


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse a gzipped IDX file of unsigned bytes.

    Layout: magic ``00 00 08 <ndim>``, then ``ndim`` big-endian uint32 sizes,
    then ``prod(sizes)`` bytes in C order.
    """
    fix = "Delete it and copy or download the official file again."
    header = 4 + 4 * ndim
    try:
        with gzip.open(path, "rb") as f:
            head = f.read(header)
            if len(head) < header:
                raise SparsetrainError(
                    f"IDX file {path} is {len(head)} bytes long after decompression, shorter "
                    f"than its {header}-byte header; it is truncated. {fix}"
                )
            magic = head[:4]
            if magic[:2] != b"\x00\x00" or magic[2] != _IDX_UBYTE or magic[3] != ndim:
                raise SparsetrainError(
                    f"IDX file {path} has magic number 0x{magic.hex()}, expected "
                    f"0x0000{_IDX_UBYTE:02x}{ndim:02x} (unsigned bytes, {ndim} dimensions); it "
                    f"is not the expected IDX file. {fix}"
                )
            dims = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
            expected = math.prod(dims)
            # Read only what the header promises, and no more than a gzip of such data
            # could hold (a "gzip bomb" is refused before it is expanded).
            limit = _MAX_EXPANSION * path.stat().st_size + (1 << 20)
            if expected > limit:
                raise SparsetrainError(
                    f"IDX file {path} promises {expected} data bytes (shape {dims}), more than "
                    f"{_MAX_EXPANSION}x its compressed size; it is corrupt. {fix}"
                )
            raw = head + f.read(expected + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise SparsetrainError(
            f"IDX file {path} could not be decompressed ({type(exc).__name__}: {exc}); it is "
            f"corrupt or truncated. {fix}"
        ) from exc
    if len(raw) - header != expected:
        raise SparsetrainError(
            f"IDX file {path} holds {'more' if len(raw) - header > expected else len(raw) - header}"
            f" data bytes but its header promises {expected} (shape {dims}); it is truncated or "
            f"corrupt. {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _load_idx_pair(folder: Path, images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
    y = _read_idx(folder / labels, 1)  # (n,) uint8
    X = _read_idx(folder / images, 3)  # (n, rows, cols) uint8
    if len(X) != len(y):
        raise SparsetrainError(
            f"{folder / images} holds {len(X)} images but {folder / labels} holds {len(y)} "
            "labels; the files do not belong together. Copy or download the official files."
        )
    return X.reshape(len(X), -1).astype(np.float32), y.astype(np.int64)  # (n, 784) 0..255


def _load_fashion_mnist(folder: Path) -> RawSplits:
    X_train, y_train = _load_idx_pair(
        folder, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
    )
    X_test, y_test = _load_idx_pair(
        folder, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
    )
    return RawSplits(X_train, y_train, X_test, y_test, 10, str(folder))


# --- Madelon (NIPS 2003 text files) -----------------------------------------


def _read_text_matrix(path: Path, ndmin: int) -> np.ndarray:
    try:
        return np.loadtxt(path, dtype=np.float64, ndmin=ndmin)
    except (OSError, ValueError) as exc:
        raise SparsetrainError(
            f"Could not parse {path} as whitespace-separated numbers ({exc}); the file is "
            "corrupt or truncated. Copy or download the official file again."
        ) from exc


def _load_madelon_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    data_path = folder / f"madelon_{split}.data"
    label_path = folder / f"madelon_{split}.labels"
    X = _read_text_matrix(data_path, 2)  # (n, 500)
    y = _read_text_matrix(label_path, 1)  # (n,) in {-1, +1}
    if len(X) != len(y):
        raise SparsetrainError(
            f"{data_path} has {len(X)} rows but {label_path} has {len(y)} labels; the files "
            "do not belong together. Copy or download the official files."
        )
    bad = (y != 1) & (y != -1)
    if bad.any():
        raise SparsetrainError(
            f"{label_path} must hold labels -1 or +1; got {y[np.argmax(bad)].item()!r} on line "
            f"{int(np.argmax(bad)) + 1}. Copy or download the official file again."
        )
    return X.astype(np.float32), (y > 0).astype(np.int64)  # -1/+1 -> 0/1


def _load_madelon(folder: Path) -> RawSplits:
    # The labelled 'valid' split (600) is the test set, as in the paper; the
    # official test split has no public labels.
    X_train, y_train = _load_madelon_split(folder, "train")
    X_test, y_test = _load_madelon_split(folder, "valid")
    return RawSplits(X_train, y_train, X_test, y_test, 2, str(folder))


# --- synthetic (make_classification) ----------------------------------------

_SYNTHETIC_DEFAULTS: dict[str, Any] = {
    "n_samples": 10000,
    "n_features": 100,
    "n_informative": 20,
    "n_classes": 2,
    "test_fraction": 0.3,
    "class_sep": 1.0,
    "seed": 0,
}


def _load_synthetic(
    folder: None,
    *,
    n_samples: int,
    n_features: int,
    n_informative: int,
    n_classes: int,
    test_fraction: float,
    class_sep: float,
    seed: int,
) -> RawSplits:
    """Generate a split with :func:`sparsetrain.synthetic.make_classification` (scikit-learn's
    ``make_classification`` in float32, written row chunk by row chunk).

    Madelon's generator: ``n_informative`` informative features on the vertices
    of a hypercube, 2 clusters per class, ``class_sep=1``, 1% flipped labels.
    Departure from sklearn's defaults: ``n_redundant=0`` and ``n_repeated=0``,
    so the other ``n_features - n_informative`` features are pure noise and
    any ``n_informative <= n_features`` is allowed. ``class_sep`` (default 1, Madelon's)
    scales the hypercube: at 65,536 features a linear model scores 0.58 on the
    default task and 0.81 with ``class_sep=3`` (the learnable variant of
    ``benchmarks/extreme_scale.py``). Rows come out shuffled; the first
    ``n_samples - round(n_samples * test_fraction)`` are the train split.
    """
    for key, value, low in (
        ("n_samples", n_samples, 2),
        ("n_features", n_features, 1),
        ("n_informative", n_informative, 1),
        ("n_classes", n_classes, 2),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise SparsetrainError(
                f"The {key!r} option of the synthetic dataset must be an int >= {low}; "
                f"got {value!r}. Pass e.g. {key}={_SYNTHETIC_DEFAULTS[key]}."
            )
    if n_informative > n_features:
        raise SparsetrainError(
            f"The 'n_informative' option of the synthetic dataset must be <= n_features "
            f"({n_features}); got {n_informative}. Lower n_informative or raise n_features."
        )
    if n_classes * 2 > 2**n_informative:
        raise SparsetrainError(
            f"The synthetic dataset needs n_classes * 2 <= 2**n_informative (2 clusters per "
            f"class on hypercube vertices); got n_classes={n_classes}, "
            f"n_informative={n_informative}. Raise n_informative."
        )
    if not isinstance(test_fraction, float | int) or not 0 < test_fraction < 1:
        raise SparsetrainError(
            "The 'test_fraction' option of the synthetic dataset must be a float in (0, 1); "
            f"got {test_fraction!r}. Pass e.g. test_fraction=0.3."
        )
    n_test = int(round(n_samples * test_fraction))
    n_train = n_samples - n_test
    if n_test < 1 or n_train < 1:
        raise SparsetrainError(
            f"The synthetic split leaves {n_train} train and {n_test} test samples "
            f"(n_samples={n_samples}, test_fraction={test_fraction}); both need at least one. "
            "Raise n_samples or change test_fraction."
        )
    from .synthetic import make_classification

    # float32 rows written in place (no float64 copy): train and test are views of one array.
    X, y = make_classification(
        n_samples,
        n_features,
        n_informative=n_informative,
        n_redundant=0,
        n_repeated=0,
        n_classes=n_classes,
        class_sep=class_sep,
        seed=int(seed),
    )  # X (n_samples, n_features) float32, rows in random order
    source = (
        f"generated (make_classification, n_samples={n_samples}, n_features={n_features}, "
        f"n_informative={n_informative}, n_classes={n_classes}, class_sep={class_sep}, "
        f"test_fraction={test_fraction}, seed={seed})"
    )
    return RawSplits(X[:n_train], y[:n_train], X[n_train:], y[n_train:], n_classes, source)


# --- Higgs (UCI CSV: label, then 28 features) -------------------------------


def _load_higgs(folder: Path, *, n_train: int, n_test: int) -> RawSplits:
    """First ``n_train`` rows train, the next ``n_test`` test (the paper's 105,000 / 50,000).

    A shorter file (any subset of HIGGS.csv.gz) is split in the same 105:50 proportion.
    """
    for key, value in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise SparsetrainError(f"The {key!r} option of the higgs dataset must be an int >= 1; "
                                   f"got {value!r}.")
    path = folder / "HIGGS.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32, max_rows=n_train + n_test,
                               ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise SparsetrainError(f"Could not read {path} as gzip CSV ({type(exc).__name__}: {exc}); "
                               "the file is corrupt or truncated") from exc
    if table.shape[1] != 29 or len(table) < 2:
        raise SparsetrainError(f"{path} must hold rows 'label,f1,...,f28' (29 columns); got "
                               f"{table.shape[1]} columns and {len(table)} rows")
    if len(table) < n_train + n_test:
        n_train = max(1, round(len(table) * n_train / (n_train + n_test)))
        n_test = len(table) - n_train
    y = table[:, 0]
    if not np.isin(y, (0.0, 1.0)).all():
        raise SparsetrainError(f"{path}: the first column must be the label 0 or 1")
    X = np.ascontiguousarray(table[:, 1:])
    y = y.astype(np.int64)
    return RawSplits(X[:n_train], y[:n_train], X[n_train:n_train + n_test],
                     y[n_train:n_train + n_test], 2, f"{path} (train {n_train}, test {n_test})")


# --- CIFAR-10 (official python batches) -------------------------------------

_CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One official CIFAR-10 python batch (a pickled dict) through an unpickler that only
    rebuilds NumPy arrays: any other object in the file is refused, not executed."""
    import pickle

    allowed = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"),
               ("_codecs", "encode")}  # bytes in protocol-2 pickles written by Python 3

    class _ArraysOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) not in allowed:
                raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
            return super().find_class(module.replace("numpy.core", "numpy._core"), name)

    try:
        with open(path, "rb") as f:
            batch = _ArraysOnly(f, encoding="bytes").load()
        X = np.asarray(batch[b"data"], dtype=np.uint8)
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - any failure means a bad file
        raise SparsetrainError(f"Could not read {path} as an official CIFAR-10 python batch "
                               f"({type(exc).__name__}: {exc})") from exc
    if X.ndim != 2 or X.shape[1] != 3072 or len(X) != len(y):
        raise SparsetrainError(f"{path}: expected a (n, 3072) uint8 'data' array and n labels; "
                               f"got {X.shape} and {y.shape}")
    return X.astype(np.float32), y


def _load_cifar10(folder: Path) -> RawSplits:
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR_BATCHES]
    X_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    return RawSplits(X_train, y_train, parts[5][0], parts[5][1], 10, str(folder))


# --- Leukemia (a user-given matrix + labels file) ---------------------------


def _load_leukemia(folder: Path, *, seed: int, test_fraction: float) -> RawSplits:
    """``leukemia_data.npy`` (or ``.csv`` / ``.txt``: one sample per row, comma or whitespace
    separated, 54,675 expression values in the paper) and ``leukemia_labels.txt`` (one label
    per line, any strings or integers; sorted distinct labels become classes 0..C-1), split
    class-stratified 2:1 into train and test with ``seed``."""
    labels_path = folder / "leukemia_labels.txt"
    try:
        with open(labels_path, encoding="utf-8") as f:
            labels = np.array([line.strip() for line in f if line.strip()])
    except (OSError, UnicodeDecodeError) as exc:
        raise SparsetrainError(f"Could not read {labels_path} as UTF-8 text, one label per line "
                               f"({type(exc).__name__}: {exc})") from None
    data_path = next((folder / f"leukemia_data{ext}" for ext in (".npy", ".csv", ".txt")
                      if (folder / f"leukemia_data{ext}").is_file()), None)
    if data_path is None:
        raise DataNotFoundError(f"{folder} has leukemia_labels.txt but no leukemia_data.npy, "
                                ".csv or .txt (one sample per row)")
    try:
        if data_path.suffix == ".npy":
            X = np.load(data_path, allow_pickle=False)
        else:
            delimiter = "," if data_path.suffix == ".csv" else None
            X = _read_text_matrix(data_path, 2) if delimiter is None else np.loadtxt(
                data_path, delimiter=delimiter, dtype=np.float32, ndmin=2)
    except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
        if isinstance(exc, SparsetrainError):
            raise
        reason = " ".join(str(exc).split())[:200]
        raise SparsetrainError(f"Could not read {data_path} as a matrix of numbers, one sample "
                               f"per row ({type(exc).__name__}: {reason})") from None
    if not isinstance(X, np.ndarray) or not np.issubdtype(X.dtype, np.number):
        raise SparsetrainError(f"{data_path} must hold a numeric matrix, one sample per row")
    if X.ndim != 2 or len(X) != len(labels):
        raise SparsetrainError(f"{data_path} has {len(X)} rows but {labels_path} has "
                               f"{len(labels)} labels; one label per sample row is required")
    classes, y = np.unique(labels, return_inverse=True)
    from sklearn.model_selection import train_test_split

    try:
        tr, te = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y,
                                  random_state=int(seed))
    except ValueError as exc:
        raise SparsetrainError(f"cannot split the leukemia data class-stratified ({exc}); every "
                               "class needs at least 2 samples") from exc
    X = X.astype(np.float32)
    return RawSplits(X[tr], y[tr], X[te], y[te], len(classes),
                     f"{folder} ({len(classes)} classes, stratified split seed {seed})")


# --- user .npz file ---------------------------------------------------------

_NPZ_KEYS = ("X_train", "y_train", "X_test", "y_test")


def _check_expansion(path: Path) -> None:
    """Refuse an npz whose arrays would expand beyond :data:`_MAX_EXPANSION` times their
    compressed size (a "zip bomb"), before any is read. Only the four arrays are read, so
    other members do not matter; zipfile stops at each member's declared size."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # np.load's own error names what the file is
    with zipfile.ZipFile(path) as z:
        for key in _NPZ_KEYS:
            try:
                info = z.getinfo(key + ".npy")
            except KeyError:
                continue
            if info.file_size > _MAX_EXPANSION * info.compress_size + (1 << 20):
                raise SparsetrainError(
                    f"The .npz file {path}: array {key} would expand from {info.compress_size} "
                    f"to {info.file_size} bytes, more than {_MAX_EXPANSION}x; it is damaged or "
                    "hostile. Save it again with np.savez or np.savez_compressed."
                )


def _load_npz(path: Path, n_classes: int | None = None) -> RawSplits:
    if not path.is_file():
        raise DataNotFoundError(
            f"The .npz file {path} does not exist (resolved: {path.resolve()}); pass the path "
            "of an existing file with arrays X_train, y_train, X_test, y_test."
        )
    try:
        _check_expansion(path)
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in _NPZ_KEYS if k not in npz.files]
            if missing:
                raise SparsetrainError(
                    f"The .npz file {path} lacks array(s) {', '.join(missing)}; it must hold "
                    f"X_train, y_train, X_test, y_test (found: {', '.join(npz.files) or 'none'}). "
                    "Save it with np.savez(path, X_train=..., y_train=..., X_test=..., "
                    "y_test=...)."
                )
            arrays = [npz[k] for k in _NPZ_KEYS]
    except Exception as exc:  # noqa: BLE001 - zip, zlib, npy-header (even TokenError) failures
        if isinstance(exc, MemoryError):
            raise
        if isinstance(exc, SparsetrainError):
            raise
        raise SparsetrainError(
            f"Could not read {path} as a .npz file of numeric arrays "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); save it with "
            "np.savez(path, X_train=..., y_train=..., X_test=..., y_test=...) and no "
            "object arrays."
        ) from exc
    return RawSplits(*arrays, n_classes, str(path.resolve()))


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_UCI_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/"
_MADELON_URL = _UCI_URL + "madelon/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (unpack it)"

#: Registered datasets: name -> spec. Adding a dataset is one entry.
DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="fashion-mnist",
            description=(
                "Fashion-MNIST: 28x28 grey clothing images as 784 features, 10 classes, "
                "60000 train / 10000 test (Zalando, MIT licence)"
            ),
            loader=_load_fashion_mnist,
            files=(
                DataFile(
                    "train-images-idx3-ubyte.gz",
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    _FASHION_URL + "train-images-idx3-ubyte.gz",
                ),
                DataFile(
                    "train-labels-idx1-ubyte.gz",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    _FASHION_URL + "train-labels-idx1-ubyte.gz",
                ),
                DataFile(
                    "t10k-images-idx3-ubyte.gz",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    _FASHION_URL + "t10k-images-idx3-ubyte.gz",
                ),
                DataFile(
                    "t10k-labels-idx1-ubyte.gz",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    _FASHION_URL + "t10k-labels-idx1-ubyte.gz",
                ),
            ),
            folder_names=("fashion_mnist", "fashion-mnist"),
        ),
        DatasetSpec(
            name="madelon",
            description=(
                "Madelon (NIPS 2003): 500 features, 2 classes, 2000 train / 600 test "
                "(the labelled 'valid' split), labels -1/+1 mapped to 0/1 (UCI, CC BY 4.0)"
            ),
            loader=_load_madelon,
            files=(
                DataFile(
                    "madelon_train.data",
                    "0b6e37711efdc7ab74250c51e7d6966bffd9f8f2b0e9971e882c3a7a380c2314",
                    _MADELON_URL + "MADELON/madelon_train.data",
                ),
                DataFile(
                    "madelon_train.labels",
                    "10bffcc3b017467cb810d326b931951adcbde2b4870faf981da2991993b48689",
                    _MADELON_URL + "MADELON/madelon_train.labels",
                ),
                DataFile(
                    "madelon_valid.data",
                    "cb9a46475147de1a58d9f15ef4c318e5b85de344e0f9ab92626fa446aa815dc9",
                    _MADELON_URL + "MADELON/madelon_valid.data",
                ),
                DataFile(
                    "madelon_valid.labels",
                    "1aa311db914031ce44fc1dcf00fe4a0c31becb6c5c4e809db7fec13eead58fcc",
                    _MADELON_URL + "madelon_valid.labels",
                ),
            ),
            folder_names=("madelon",),
        ),
        DatasetSpec(
            name="higgs",
            description=(
                "Higgs (UCI): 28 features, 2 classes; HIGGS.csv.gz (label first), the paper's "
                "split: first 105000 rows train, next 50000 test (options n_train, n_test)"
            ),
            loader=_load_higgs,
            files=(DataFile("HIGGS.csv.gz", None, _UCI_URL + "00280/HIGGS.csv.gz"),),
            folder_names=("higgs", "HIGGS"),
            options=MappingProxyType({"n_train": 105000, "n_test": 50000}),
        ),
        DatasetSpec(
            name="cifar10",
            description=(
                "CIFAR-10: 32x32 colour images as 3072 features, 10 classes, 50000 train / "
                "10000 test; the official python batches (folder cifar-10-batches-py)"
            ),
            loader=_load_cifar10,
            files=tuple(DataFile(n, None, _CIFAR_URL) for n in _CIFAR_BATCHES),
            folder_names=("cifar-10-batches-py", "cifar10", "cifar-10"),
        ),
        DatasetSpec(
            name="leukemia",
            description=(
                "Leukemia (user-given): leukemia_data.npy/.csv/.txt (one sample per row) and "
                "leukemia_labels.txt (one label per line); class-stratified 2:1 split "
                "(options seed=0, test_fraction=1/3)"
            ),
            loader=_load_leukemia,
            files=(DataFile("leukemia_labels.txt", None, None),),
            folder_names=("leukemia",),
            options=MappingProxyType({"seed": 0, "test_fraction": 1 / 3}),
        ),
        DatasetSpec(
            name="synthetic",
            description=(
                "sklearn make_classification (Madelon's generator), generated in memory; "
                "options n_samples=10000, n_features=100, n_informative=20, n_classes=2, "
                "test_fraction=0.3, seed=0"
            ),
            loader=_load_synthetic,
            options=MappingProxyType(_SYNTHETIC_DEFAULTS),
        ),
    )
}
