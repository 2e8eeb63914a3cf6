"""Model files and atomic writes.

Model file format (``.npz``, never pickled; load with ``allow_pickle=False``)::

    meta                       0-d unicode array: JSON object with
                               format="sparsetrain.model", format_version, library_version,
                               sizes, activation, alpha, dropout, loss, task
                               ("classification" or "regression"; absent = classification),
                               layers=[{init, fan_in}], dataset and preset (null if unknown),
                               plus free-form run state (config, epoch, evolved, history, run)
    input_mean, input_std      (n_features,) float32   training-set standardisation
    target_mean, target_std    (n_outputs,) float32    regression models only: target standardisation
    layers.L.row_ptr           (n_in+1,) int64         CSR over inputs of layer L
    layers.L.row_cols          (nnz,) int32            output index of each connection
    layers.L.data              (nnz,) float32          connection values
    layers.L.velocity          (nnz,) float32          momentum of each connection
    layers.L.bias, layers.L.bias_velocity   (n_out,) float32
    layers.L.neuron_params, .neuron_velocity (P, n_out) float32, only for activations with
                               trainable per-neuron parameters (SReLU: t_l, a_l, t_r, a_r)

Every write goes to a temporary file in the same folder, is flushed to disk,
then renamed over the target, so a crash never leaves a half-written file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import SparsetrainError
from .layers import SparseLinear
from .model import SparseMLP

FORMAT_NAME = "sparsetrain.model"
FORMAT_VERSION = 1
_LAYER_KEYS = {"row_ptr": np.int64, "row_cols": np.int32, "data": np.float32,
               "velocity": np.float32, "bias": np.float32, "bias_velocity": np.float32}


@contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file next to ``path``; on success fsync it and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
             float_format: str | None = None) -> str:
    """CSV with a header of ``columns`` and one line per row (a missing key is an empty
    cell); floats as ``repr`` or, with ``float_format`` (e.g. ``".6g"``), formatted."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = [row.get(c, "") for c in columns]
        if float_format is not None:
            cells = [format(v, float_format) if isinstance(v, float) else v for v in cells]
        writer.writerow(cells)
    return buf.getvalue()


def write_csv(path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str],
              float_format: str | None = None) -> None:
    """The project's one CSV writer (metrics, benchmark and report tables): atomic."""
    write_text(path, csv_text(rows, columns, float_format))


def model_to_arrays(model: SparseMLP, extra: dict | None = None) -> dict[str, np.ndarray]:
    """``model`` (weights, momentum, scaler, architecture) and ``extra`` run state as named
    flat arrays, the JSON metadata in the 0-d string array ``meta``: what a model file holds,
    and what crosses process boundaries in parallel training."""
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "sizes": model.sizes,
        "activation": model.activation,
        "alpha": model.alpha,
        "dropout": model.dropout,
        "loss": model.loss,
        "task": model.task,
        "dataset": (extra or {}).get("run", {}).get("dataset"),
        "preset": (extra or {}).get("run", {}).get("preset"),
        "layers": [{"init": la.init, "fan_in": la.fan_in} for la in model.layers],
        **(extra or {}),
    }
    arrays = {"meta": np.array(json.dumps(meta)), "input_mean": model.input_mean,
              "input_std": model.input_std}
    if model.task == "regression":
        arrays["target_mean"], arrays["target_std"] = model.target_mean, model.target_std
    for l, layer in enumerate(model.layers):
        for key in _LAYER_KEYS:
            arrays[f"layers.{l}.{key}"] = getattr(layer, key)
        if layer.neuron_params is not None:  # (P, n_out): SReLU's t_l, a_l, t_r, a_r
            arrays[f"layers.{l}.neuron_params"] = layer.neuron_params
            arrays[f"layers.{l}.neuron_velocity"] = layer.neuron_velocity
    return arrays


def save_model(path, model: SparseMLP, extra: dict | None = None) -> None:
    """Write ``model`` (weights, momentum, scaler, architecture) and ``extra`` run state."""
    write_arrays(path, model_to_arrays(model, extra))


def write_arrays(path, arrays: dict[str, np.ndarray]) -> None:
    """Atomically write named arrays as an ``.npz`` file (no pickles)."""
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def load_model(path) -> tuple[SparseMLP, dict]:
    """Read a model file; returns ``(model, meta)``.

    Raises :class:`SparsetrainError` with a one-line reason for a missing, truncated,
    tampered or newer-format file, or one that holds a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise SparsetrainError(f"model file {path} does not exist; pass the model.npz a "
                               "'sparsetrain train --out RUN' wrote (RUN/model.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "Object arrays" in str(exc):  # an npz member that only unpickling could read
            raise SparsetrainError(f"model file {path} holds a pickled (object) array; "
                                   "sparsetrain model files never contain pickles, and "
                                   "loading one could run arbitrary code: refusing it") from None
        raise SparsetrainError(f"model file {path} is truncated or not a sparsetrain model "
                               f"({type(exc).__name__}: {exc}); retrain or restore it") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise SparsetrainError(f"model file {path} is truncated or not a sparsetrain model "
                               f"({type(exc).__name__}: {exc}); retrain or restore it") from None
    return model_from_arrays(arrays, f"model file {path}")


def model_from_arrays(arrays, source: str = "model state") -> tuple[SparseMLP, dict]:
    """Inverse of :func:`model_to_arrays`: ``(model, meta)``; errors name ``source``."""
    try:
        meta = json.loads(str(arrays["meta"]))
        if not isinstance(meta, dict):
            raise json.JSONDecodeError("not a JSON object", str(arrays["meta"]), 0)
    except (KeyError, json.JSONDecodeError):
        raise SparsetrainError(f"{source} has no readable metadata; it was not "
                               "written by sparsetrain") from None
    if meta.get("format") != FORMAT_NAME:
        raise SparsetrainError(f"{source} has format {meta.get('format')!r}, "
                               f"expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise SparsetrainError(
            f"{source} has format version {version!r}; this sparsetrain "
            f"({__version__}) reads versions 1..{FORMAT_VERSION}: upgrade sparsetrain")
    try:
        sizes = [int(s) for s in meta["sizes"]]
        layers = []
        for l in range(len(sizes) - 1):
            a = {}
            for key, dtype in _LAYER_KEYS.items():
                arr = arrays[f"layers.{l}.{key}"]
                if arr.dtype != dtype or arr.ndim != 1:
                    raise SparsetrainError(f"array layers.{l}.{key} has dtype {arr.dtype} and "
                                           f"{arr.ndim} dimensions, expected 1-D {np.dtype(dtype)}")
                a[key] = arr
            info = meta["layers"][l]
            neuron = {}
            for key in ("neuron_params", "neuron_velocity"):
                arr = arrays.get(f"layers.{l}.{key}")
                if arr is not None and (arr.dtype != np.float32 or arr.ndim != 2):
                    raise SparsetrainError(f"array layers.{l}.{key} must be 2-D float32; got "
                                           f"{arr.dtype} with {arr.ndim} dimensions")
                neuron[key] = arr
            layers.append(SparseLinear(sizes[l], sizes[l + 1], a["row_ptr"], a["row_cols"],
                                       a["data"], bias=a["bias"], velocity=a["velocity"],
                                       bias_velocity=a["bias_velocity"], init=info["init"],
                                       fan_in=info["fan_in"], **neuron))
        task = meta.get("task", "classification")
        stats = ("input_mean", "input_std") + (("target_mean", "target_std")
                                                if task == "regression" else ())
        for key in stats:
            if arrays[key].dtype != np.float32:
                raise SparsetrainError(f"array {key} has dtype {arrays[key].dtype}, expected float32")
        # A model file is a boundary: its hyperparameters pass TrainConfig's own rules.
        from .config import PARAMS

        for name in ("activation", "alpha", "dropout", "loss"):
            PARAMS[name].check(meta[name], owner=source)
        model = SparseMLP(layers, activation=meta["activation"], alpha=meta["alpha"],
                          dropout=meta["dropout"], loss=meta["loss"],
                          input_mean=arrays["input_mean"], input_std=arrays["input_std"],
                          task=task, target_mean=arrays.get("target_mean"),
                          target_std=arrays.get("target_std"))
    except KeyError as exc:
        raise SparsetrainError(f"{source} lacks entry {exc}; it is incomplete") from None
    except SparsetrainError as exc:
        raise SparsetrainError(f"{source} is inconsistent: {exc}") from None
    except (IndexError, TypeError, ValueError) as exc:
        raise SparsetrainError(f"{source} has malformed metadata "
                               f"({type(exc).__name__}: {exc}); it was altered") from None
    return model, meta
