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
    layers.L.row_ptr           (n_in+1,) int32         CSR over inputs of layer L (int64 in older files)
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
import math
import os
import struct
import tempfile
import zipfile
import zlib
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
# row_ptr: int32 since 2026-12-07 (int64 before, still read).
_LAYER_KEYS = {"row_ptr": (np.int32, np.int64), "row_cols": np.int32, "data": np.float32,
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
            # mkstemp creates 0600; a run's files get the mode any new file would (umask).
            if hasattr(os, "fchmod"):
                os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


#: Files a training run writes into its ``--out`` folder (what "holds a run" means).
RUN_FILES = ("model.npz", "config.json", "metrics.csv", "learning_curve.png")
#: The lock file of a run folder: held (``flock``) by the process training into it.
LOCK_NAME = ".sparsetrain.lock"


class RunFolder:
    """Exclusive ownership of a run folder for one process (``with claim_run_folder(...)``).

    The lock is an ``flock`` on ``FOLDER/.sparsetrain.lock``, so the operating system
    releases it on *any* exit (kill -9 included); the file holds the owner's pid and host
    for the message another run gets. A lock file whose pid is dead and which no process
    holds is a stale lock: taken over, with :attr:`stale_pid` set for a note.
    """

    def __init__(self, path: Path, fd: int, stale_pid: int | None):
        self.path, self._fd, self.stale_pid = path, fd, stale_pid

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path / LOCK_NAME)  # while held: no one can have taken it over
        except OSError:
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def _lock_owner(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
    except OSError:
        return ""
    return " ".join(text[:2])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _lock(folder: Path, option: str) -> RunFolder:
    import socket

    try:
        import fcntl
    except ImportError:  # no flock (Windows): the recorded pid decides
        fcntl = None
    path = folder / LOCK_NAME
    for _ in range(10):  # retried only if the file is replaced while we lock it
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        owner = _lock_owner(fd)
        if fcntl is None:
            pid = int(owner.split()[0]) if owner[:1].isdigit() else None
            if pid is not None and pid != os.getpid() and _pid_alive(pid):
                os.close(fd)
                raise _in_use(folder, option, owner)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise _in_use(folder, option, owner) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the owner released (and removed) it between our open and lock
                os.close(fd)
                continue
        stale = int(owner.split()[0]) if owner[:1].isdigit() else None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return RunFolder(folder, fd, stale if stale != os.getpid() else None)
    raise SparsetrainError(f"could not lock the '{option}' folder {folder}: its lock file "
                           "keeps changing; is another run starting there?")


def _in_use(folder: Path, option: str, owner: str) -> SparsetrainError:
    who = f" (pid {owner.replace(' ', ' on ')})" if owner else ""
    return SparsetrainError(f"The '{option}' folder {folder} is in use by another sparsetrain "
                            f"run{who}; wait for it to finish, or choose another {option}")


def check_writable_folder(folder, option: str = "--out") -> Path:
    """Create ``folder`` if needed and prove it writable (a probe file is written and
    removed), or raise one line naming ``option``: before any training starts."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SparsetrainError(f"The '{option}' option must name a folder; {folder} is a file. "
                               f"Choose another {option} or remove the file.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SparsetrainError(
            f"The '{option}' folder {folder} is not writable ({type(exc).__name__}: "
            f"{exc.strerror or exc}); choose another {option} or fix its permissions") from None
    return folder


def claim_run_folder(folder, *, resume: bool = False, overwrite: bool = False,
                     option: str = "--out") -> RunFolder:
    """Own ``folder`` for a training run; returns the held :class:`RunFolder`.

    Checks that it is a writable folder, takes its lock (another live run there is an
    error), removes temporary files a killed run left behind, and refuses a folder that
    already holds a run (:data:`RUN_FILES`) unless ``resume`` (continue it) or
    ``overwrite`` (its run files are deleted first).
    """
    if resume and overwrite:
        raise SparsetrainError("'--resume' continues the run in --out and '--overwrite' "
                               "replaces it; give one of them")
    folder = check_writable_folder(folder, option)
    lock = _lock(folder, option)
    try:
        for name in RUN_FILES:  # a kill -9 during an atomic write leaves its temporary file
            for tmp in folder.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        held = [name for name in RUN_FILES if (folder / name).exists()]
        if held and not resume:
            if not overwrite:
                raise SparsetrainError(
                    f"The '{option}' folder {folder} already holds a run ({', '.join(held)}); "
                    f"pass --resume to continue it, --overwrite to replace it, or choose "
                    f"another {option}")
            for name in held:
                (folder / name).unlink()
    except BaseException:
        lock.release()
        raise
    return lock


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


#: Largest metadata JSON read from a model file (a 500-epoch history is a few 100 kB).
MAX_META_BYTES = 64 << 20
#: Largest npy header read (numpy's own default limit).
_MAX_HEADER = 10_000
#: A deflated member may expand this much beyond its compressed size (weights compress
#: about 1.1x; zeros about 1000x, so this also admits all-zero momentum buffers).
_MAX_RATIO = 1100
#: Largest layer width a model file may declare (the kernels index neurons with int32).
_MAX_WIDTH = 2**31 - 1


def load_model(path) -> tuple[SparseMLP, dict]:
    """Read a model file; returns ``(model, meta)``.

    The file is a hostile input until proven otherwise: only the entries the metadata's
    architecture calls for are read, each npy header (dtype, shape, size) is checked
    against the architecture *before* its data is decompressed, data is read in exactly
    the declared number of bytes (a "zip bomb" member is never expanded, a byte flip fails
    the member's CRC), and every array is checked against the declared sizes and
    activation before a kernel sees it (:func:`model_from_arrays`).

    Raises :class:`SparsetrainError` with a one-line reason for a missing, truncated,
    tampered or newer-format file, or one that holds a pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise SparsetrainError(f"model file {path} does not exist; pass the model.npz a "
                               "'sparsetrain train --out RUN' wrote (RUN/model.npz)")
    source = f"model file {path}"
    try:
        with zipfile.ZipFile(path) as z:
            return _build_model(_ZipMembers(z, source, path.stat().st_size), source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, struct.error, EOFError,
            OSError, RuntimeError, NotImplementedError, ValueError, OverflowError) as exc:
        if isinstance(exc, SparsetrainError):
            raise
        if _is_pickle(path):
            raise SparsetrainError(f"{source} is a pickled object, not a sparsetrain model; "
                                   "sparsetrain model files never contain pickles, and loading "
                                   "one could run arbitrary code: refusing it") from None
        reason = " ".join(str(exc).split())[:200]
        raise SparsetrainError(f"{source} is truncated or not a sparsetrain model "
                               f"({type(exc).__name__}: {reason}); retrain or restore it") from None


def _is_pickle(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(1) == b"\x80"  # pickle protocol 2+ opcode PROTO
    except OSError:
        return False


class _ZipMembers:
    """Checked reads of ``NAME.npy`` members of an open npz: ``read(name, dtype, shape)``
    checks the member's npy header against what the architecture calls for, then reads
    exactly that many bytes (plus one, to reach the end and so the CRC check)."""

    def __init__(self, z: zipfile.ZipFile, source: str, file_bytes: int):
        self.z, self.source = z, source
        self.names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
        # Bound on all data read: a stored (uncompressed) file reads at most its own size.
        self.budget = max(file_bytes, 1 << 20) * _MAX_RATIO

    def __contains__(self, name) -> bool:
        return name in self.names

    def read(self, name: str, dtype, shape, max_bytes: int | None = None) -> np.ndarray:
        """Member ``name`` as an array of ``dtype`` and ``shape`` (a tuple, or a callable
        that checks the header's shape and raises); anything else is an error."""
        if name not in self.names:
            raise KeyError(name)
        info = self.z.getinfo(name + ".npy")
        if info.flag_bits & 0x1:
            raise SparsetrainError(f"{self.source}: entry {name} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise SparsetrainError(f"{self.source}: entry {name} uses an unsupported compression "
                                   f"(method {info.compress_type}); sparsetrain writes stored "
                                   "or deflated entries")
        with self.z.open(info) as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    got_shape, fortran, got_dtype = np.lib.format.read_array_header_1_0(
                        f, max_header_size=_MAX_HEADER)
                elif version in ((2, 0), (3, 0)):
                    got_shape, fortran, got_dtype = np.lib.format.read_array_header_2_0(
                        f, max_header_size=_MAX_HEADER)
                else:
                    raise ValueError(f"npy version {version}")
            except Exception as exc:  # numpy's header parser: ValueError, SyntaxError, TokenError...
                reason = " ".join(str(exc).split())[:120]
                raise SparsetrainError(f"array {name} has a damaged npy header ({reason})") from None
            if max_bytes is not None and math.prod(got_shape) * got_dtype.itemsize > max_bytes:
                raise SparsetrainError(f"array {name} is larger than {max_bytes} bytes")
            if got_dtype.hasobject:
                raise SparsetrainError(
                    f"{self.source} holds a pickled (object) array in entry {name}; sparsetrain "
                    "model files never contain pickles, and loading one could run arbitrary "
                    "code: refusing it")
            if not _admits(dtype, got_dtype, native=got_dtype.byteorder in "=<|"):
                raise SparsetrainError(f"array {name} has dtype {got_dtype} and {len(got_shape)} "
                                       f"dimensions, expected {_describe(dtype, shape)}")
            if callable(shape):
                shape(got_shape)
            elif tuple(got_shape) != tuple(shape):
                raise SparsetrainError(f"array {name} has shape {tuple(got_shape)}, expected "
                                       f"{tuple(shape)}")
            if fortran and len(got_shape) > 1:
                raise SparsetrainError(f"array {name} is stored in Fortran order; sparsetrain "
                                       "writes C order")
            nbytes = math.prod(got_shape) * got_dtype.itemsize
            if nbytes > self.budget:
                raise SparsetrainError(
                    f"{self.source}: entry {name} would expand to {nbytes} bytes, more than "
                    f"{_MAX_RATIO}x the file's size; refusing it (a damaged or hostile file)")
            self.budget -= nbytes
            data = _read_exactly(f, nbytes)
            if len(data) != nbytes:
                raise EOFError(f"entry {name} ends after {len(data)} of {nbytes} bytes")
            if f.read(1):  # also reaches the member's end, where zipfile checks its CRC
                raise SparsetrainError(f"array {name} has data beyond its declared shape")
        return np.frombuffer(data, got_dtype).reshape(got_shape).copy()


def _read_exactly(f, n: int) -> bytes:
    parts, left = [], n
    while left > 0:
        part = f.read(min(left, 1 << 24))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _admits(dtype, got, native: bool = True) -> bool:
    """Whether ``got`` is ``dtype`` (one dtype, or a tuple of the ones accepted); any
    (native-order) unicode string is a unicode string."""
    for want in map(np.dtype, dtype if isinstance(dtype, tuple) else (dtype,)):
        if got == want or (want.kind == "U" and got.kind == "U" and native):
            return True
    return False


def _describe(dtype, shape) -> str:
    ndim = "" if callable(shape) else f"{len(shape)}-D "
    names = [np.dtype(d) for d in (dtype if isinstance(dtype, tuple) else (dtype,))]
    if names[0].kind == "U":
        return "a unicode string"
    return ndim + " or ".join(str(d) for d in names)


class _DictMembers:
    """The same checked ``read`` over arrays already in memory (parallel model state)."""

    def __init__(self, arrays, source: str):
        self.arrays, self.source = arrays, source

    def __contains__(self, name) -> bool:
        return name in self.arrays

    def read(self, name: str, dtype, shape, max_bytes: int | None = None) -> np.ndarray:
        arr = np.asarray(self.arrays[name])
        if max_bytes is not None and arr.nbytes > max_bytes:
            raise SparsetrainError(f"array {name} is larger than {max_bytes} bytes")
        if not _admits(dtype, arr.dtype):
            raise SparsetrainError(f"array {name} has dtype {arr.dtype} and {arr.ndim} "
                                   f"dimensions, expected {_describe(dtype, shape)}")
        if callable(shape):
            shape(arr.shape)
        elif arr.shape != tuple(shape):
            raise SparsetrainError(f"array {name} has shape {arr.shape}, expected {tuple(shape)}")
        return arr


def model_from_arrays(arrays, source: str = "model state") -> tuple[SparseMLP, dict]:
    """Inverse of :func:`model_to_arrays`: ``(model, meta)``; errors name ``source``.

    ``arrays`` is checked as :func:`load_model` checks a file (the architecture of the
    metadata, every array's dtype and shape, the activation's per-neuron parameters)."""
    return _build_model(_DictMembers(arrays, source), source)


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting of a JSON text (strings skipped), without recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


#: Deepest JSON nesting a model file's metadata may have (its own is 4 deep).
_MAX_META_DEPTH = 32


def _read_meta(members, source: str) -> dict:
    def check(shape):
        if tuple(shape) != ():
            raise SparsetrainError(f"array meta has shape {tuple(shape)}, expected a 0-d string")

    try:
        arr = members.read("meta", np.dtype("<U1"), check, max_bytes=4 * MAX_META_BYTES)
    except KeyError:
        arr = None
    except SparsetrainError as exc:
        if "pickle" in str(exc):
            raise
        arr = None
    try:  # decoded here: numpy builds a str of code points beyond U+10FFFF (SystemError later)
        text = None if arr is None else (
            arr.astype(arr.dtype.newbyteorder("<")).tobytes().decode("utf-32-le").rstrip("\x00"))
    except (UnicodeError, ValueError):
        text = None
    if text is not None and _nesting_depth(text) <= _MAX_META_DEPTH:
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            meta = None
        if isinstance(meta, dict):
            return meta
    raise SparsetrainError(f"{source} has no readable metadata; it was not written by "
                           "sparsetrain")


def _int(value, name: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        allowed = f"an integer in [{lo}, {hi}]" if hi is not None else f"an integer >= {lo}"
        raise SparsetrainError(f"metadata {name} must be {allowed}; got {value!r}")
    return value


def check_run_state(meta: dict, source: str) -> None:
    """The run state a checkpoint adds to a model file (``epoch``, ``evolved``, ``config``,
    ``history``, ``run``): the types ``--resume`` relies on, or one line naming the field."""
    try:
        if "epoch" in meta:
            _int(meta["epoch"], "epoch", 0)
        if "evolved" in meta and not isinstance(meta["evolved"], bool):
            raise SparsetrainError(f"metadata evolved must be true or false; got {meta['evolved']!r}")
        for key, kind in (("config", dict), ("run", dict), ("history", list)):
            if key in meta and not isinstance(meta[key], kind):
                raise SparsetrainError(f"metadata {key} must be a JSON "
                                       f"{'object' if kind is dict else 'array'}; got "
                                       f"{type(meta[key]).__name__}")
        for i, row in enumerate(meta.get("history", [])):
            if not isinstance(row, dict):
                raise SparsetrainError(f"metadata history[{i}] must be a JSON object")
            _int(row.get("epoch"), f"history[{i}].epoch", 1)
        if "config" in meta:
            from .config import TrainConfig

            TrainConfig.from_dict(meta["config"]).validate(owner="the saved config")
    except SparsetrainError as exc:
        raise SparsetrainError(f"{source} has a damaged training state: {exc}") from None
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise SparsetrainError(f"{source} has a damaged training state "
                               f"({type(exc).__name__}: {exc})") from None


def _build_model(members, source: str) -> tuple[SparseMLP, dict]:
    meta = _read_meta(members, source)
    if meta.get("format") != FORMAT_NAME:
        raise SparsetrainError(f"{source} has format {meta.get('format')!r}, "
                               f"expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise SparsetrainError(
            f"{source} has format version {version!r}; this sparsetrain "
            f"({__version__}) reads versions 1..{FORMAT_VERSION}: upgrade sparsetrain")
    try:
        model = _model_from_members(members, meta, source)
    except KeyError as exc:
        raise SparsetrainError(f"{source} lacks entry {exc}; it is incomplete") from None
    except SparsetrainError as exc:
        if "pickle" in str(exc) or str(exc).startswith(source):
            raise
        raise SparsetrainError(f"{source} is inconsistent: {exc}") from None
    except (IndexError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise SparsetrainError(f"{source} has malformed metadata "
                               f"({type(exc).__name__}: {exc}); it was altered") from None
    check_run_state(meta, source)
    return model, meta


def _model_from_members(members, meta: dict, source: str) -> SparseMLP:
    """The model the metadata declares, each array read only once its header matches."""
    from .activations import get_activation
    from .config import PARAMS
    from .layers import INITIALIZERS
    from .model import TASKS

    for name in ("activation", "alpha", "dropout", "loss"):
        PARAMS[name].check(meta[name], owner=source)
    task = meta.get("task", "classification")
    if task not in TASKS:
        raise SparsetrainError(f"metadata task must be one of {list(TASKS)}; got {task!r}")
    sizes = meta["sizes"]
    if not isinstance(sizes, list) or len(sizes) < 2:
        raise TypeError(f"sizes must be a list of at least 2 layer widths, got {sizes!r}")
    sizes = [_int(s, "sizes", 1, _MAX_WIDTH) for s in sizes]
    n_layers = len(sizes) - 1
    infos = meta["layers"]
    if not isinstance(infos, list) or len(infos) != n_layers:
        raise TypeError(f"layers must list {n_layers} layers for sizes {sizes}, got {infos!r}")
    if f"layers.{n_layers}.row_ptr" in members:
        raise SparsetrainError(f"the file holds more layers than sizes {sizes} declares")
    act = get_activation(meta["activation"])
    layers = []
    for l, info in enumerate(infos):
        n_in, n_out = sizes[l], sizes[l + 1]
        where = f"layer {l} ({n_in}->{n_out})"
        if not isinstance(info, dict) or info.get("init") not in INITIALIZERS:
            raise TypeError(f"layers[{l}] must give an init in {sorted(INITIALIZERS)}, got {info!r}")
        fan_in = info.get("fan_in")
        if isinstance(fan_in, bool) or not isinstance(fan_in, int | float) or not (
                math.isfinite(fan_in) and fan_in > 0):
            raise TypeError(f"layers[{l}].fan_in must be a positive number, got {fan_in!r}")
        key = f"layers.{l}."
        row_ptr = members.read(key + "row_ptr", _LAYER_KEYS["row_ptr"], _shape_is(
            (n_in + 1,), f"invalid {n_in}->{n_out} sparse layer: row_ptr"))
        nnz = int(row_ptr[-1])
        if row_ptr[0] != 0 or nnz > n_in * n_out or np.any(np.diff(row_ptr) < 0):
            raise SparsetrainError(f"invalid {n_in}->{n_out} sparse layer: row_ptr is not a "
                                   f"nondecreasing 0..nnz offset array (nnz <= {n_in * n_out})")
        a = {"row_ptr": row_ptr}
        for name, length in (("row_cols", nnz), ("data", nnz), ("velocity", nnz),
                             ("bias", n_out), ("bias_velocity", n_out)):
            what = "indices, values and velocity differ in length: " if length == nnz else ""
            a[name] = members.read(key + name, _LAYER_KEYS[name], _shape_is(
                (length,), f"invalid {n_in}->{n_out} sparse layer: {what}{key}{name}"))
        neuron = {}
        wants_params = act.n_params > 0 and l < n_layers - 1
        for name in ("neuron_params", "neuron_velocity"):
            if not wants_params:
                if key + name in members:
                    raise SparsetrainError(f"{where} has {name} but activation "
                                           f"{meta['activation']!r} has no per-neuron parameters")
                continue
            if key + name not in members:
                raise SparsetrainError(f"{where} lacks {name}: activation {meta['activation']!r} "
                                       f"needs ({act.n_params}, {n_out}) per-neuron parameters")
            neuron[name] = members.read(key + name, np.float32, _shape_is(
                (act.n_params, n_out), f"{where}: neuron parameters {name}"))
            if not np.all(np.isfinite(neuron[name])):
                raise SparsetrainError(f"{where}: {name} holds NaN or infinite values")
        layers.append(SparseLinear(n_in, n_out, a["row_ptr"], a["row_cols"], a["data"],
                                   bias=a["bias"], velocity=a["velocity"],
                                   bias_velocity=a["bias_velocity"], init=info["init"],
                                   fan_in=fan_in, **neuron))
    stats = {}
    keys = ("input_mean", "input_std") + (("target_mean", "target_std")
                                          if task == "regression" else ())
    for name in keys:
        n = sizes[0] if name.startswith("input") else sizes[-1]
        what = name.split("_")[0]
        stats[name] = members.read(name, np.float32, _shape_is(
            (n,), f"{what}_mean/{what}_std must have shape ({n},): {name}"))
        if not np.all(np.isfinite(stats[name])) or (name.endswith("std")
                                                    and not np.all(stats[name] > 0)):
            raise SparsetrainError(f"array {name} must hold finite values"
                                   + (" > 0" if name.endswith("std") else ""))
    return SparseMLP(layers, activation=meta["activation"], alpha=meta["alpha"],
                     dropout=meta["dropout"], loss=meta["loss"],
                     input_mean=stats["input_mean"], input_std=stats["input_std"], task=task,
                     target_mean=stats.get("target_mean"), target_std=stats.get("target_std"))


def _shape_is(want: tuple, what: str):
    def check(shape):
        if tuple(shape) != want:
            raise SparsetrainError(f"{what} has shape {tuple(shape)}, expected {want}")
    return check
