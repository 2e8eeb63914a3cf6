"""Fuzz tests (issue 13): the model loader and every dataset reader, fed mutated files, either
load or raise one :class:`SparsetrainError` line; nothing else (no traceback, no crash, no
kernel reading out of bounds: a loaded model must also run a forward pass).

Mutations are drawn by Hypothesis: byte flips, overwrites, insertions and truncations of
the raw file; for compressed files (gzip, npz) the same edits of the *decompressed* bytes,
recompressed, so they reach the parsers past the CRC; for model files, edits of the JSON
metadata (any key set to any JSON value) and of the arrays (any dtype, any shape).

The CI run is bounded (``SPARSETRAIN_FUZZ_EXAMPLES`` examples per target, default 200,
the same inputs every run: about 15 s in all); a longer run is the same file with a larger number::

    SPARSETRAIN_FUZZ_EXAMPLES=5000 python -m pytest -q tests/test_fuzz.py -p no:cacheprovider

Each bug a run finds is kept as an ``@example`` of its target (the regression corpus).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from sparsetrain import data  # noqa: E402
from sparsetrain.errors import SparsetrainError  # noqa: E402
from sparsetrain.io import load_model, save_model  # noqa: E402
from sparsetrain.model import SparseMLP  # noqa: E402

EXAMPLES = int(os.environ.get("SPARSETRAIN_FUZZ_EXAMPLES", "200"))
# The CI run is the same inputs every time; a longer run draws new ones.
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                derandomize="SPARSETRAIN_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=list(HealthCheck), database=None)

# Floats are drawn without subnormals: a test that trained earlier in the same process has
# set the flush-to-zero/denormals-are-zero bits (on purpose, see _kernels.enable_flush_to_zero),
# under which Hypothesis refuses to draw subnormal floats (FloatingPointError).

# ----------------------------------------------------------------------------- mutations

_edit = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
                  st.floats(0, 1, allow_nan=False, allow_subnormal=False), st.binary(min_size=1, max_size=8))
_edits = st.lists(_edit, min_size=1, max_size=4)


def mutate(raw: bytes, edits) -> bytes:
    b = bytearray(raw)
    for op, where, payload in edits:
        pos = min(int(where * len(b)), max(len(b) - 1, 0))
        if op == "flip" and b:
            b[pos] ^= payload[0] or 1
        elif op == "set":
            b[pos:pos + len(payload)] = payload
        elif op == "insert":
            b[pos:pos] = payload
        elif op == "delete":
            del b[pos:pos + len(payload)]
        elif op == "truncate":
            del b[pos:]
    return bytes(b)


def mutate_file(path: Path, edits, inside: bool) -> None:
    """Edit ``path`` in place: its bytes, or (``inside``) its decompressed bytes."""
    raw = path.read_bytes()
    if inside and path.suffix == ".gz":
        path.write_bytes(gzip.compress(mutate(gzip.decompress(raw), edits), mtime=0))
    elif inside and path.suffix == ".npz":
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            members = {n: z.read(n) for n in z.namelist()}
        name = sorted(members)[int(edits[0][1] * len(members)) % len(members)]
        members[name] = mutate(members[name], edits)
        with zipfile.ZipFile(path, "w") as z:
            for n, payload in members.items():
                z.writestr(n, payload)
    else:
        path.write_bytes(mutate(raw, edits))


def check_one_line(fn):
    """``fn()`` returns, or raises one SparsetrainError line; anything else fails."""
    try:
        return fn()
    except SparsetrainError as exc:
        assert "\n" not in str(exc), str(exc)
        return None


# ----------------------------------------------------------------------------- model files


@functools.cache
def _model_files() -> dict[str, bytes]:
    """The unmutated model files (a plain function, not a fixture: Hypothesis would print
    a fixture's value, 20 kB of bytes, with every falsifying example)."""
    folder = Path(tempfile.mkdtemp(prefix="fuzz-models-"))
    rng = np.random.default_rng(0)
    files = {}
    for act in ("all-relu", "srelu"):
        m = SparseMLP.create([6, 8, 5, 3], epsilon=2, rng=rng, activation=act)
        save_model(folder / f"{act}.npz", m, {"epoch": 2, "evolved": True,
                                              "history": [{"epoch": 1}, {"epoch": 2}],
                                              "config": {"epochs": 3}, "run": {}})
        files[act] = (folder / f"{act}.npz").read_bytes()
    shutil.rmtree(folder)
    return files


_X = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)


def _load_and_run(path):
    from sparsetrain.trainer import Trainer

    def go():
        model, meta = load_model(path)
        model.decision_function(_X)  # the kernels see only what the loader checked
        if "config" in meta:  # what --resume reads
            Trainer.from_checkpoint(path.parent) if path.name == "model.npz" else None
        return model
    return check_one_line(go)


@FUZZ
@given(act=st.sampled_from(["all-relu", "srelu"]), edits=_edits, inside=st.booleans())
# Found by a 3000-example run: meta's last UTF-32 code point made > U+10FFFF (SystemError).
@example(act="all-relu", edits=[("flip", 0.9999999999999999, b"\x00")], inside=True)
def test_fuzz_model_file_bytes(tmp_path_factory, act, edits, inside):
    path = tmp_path_factory.mktemp("m") / "model.npz"
    path.write_bytes(_model_files()[act])
    mutate_file(path, edits, inside)
    _load_and_run(path)


_json = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70)
                     | st.floats(allow_nan=True, allow_subnormal=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_META_KEYS = ["format", "format_version", "sizes", "activation", "alpha", "dropout", "loss",
              "task", "layers", "epoch", "evolved", "history", "config", "run"]


@FUZZ
@given(act=st.sampled_from(["all-relu", "srelu"]), key=st.sampled_from(_META_KEYS),
       value=_json, index=st.integers(0, 5))
@example(act="srelu", key="activation", value="relu", index=0)
@example(act="all-relu", key="activation", value="srelu", index=0)
@example(act="all-relu", key="sizes", value=[6, 8, 3], index=0)
@example(act="all-relu", key="epoch", value="abc", index=0)
def test_fuzz_model_metadata(tmp_path_factory, act, key, value, index):
    path = tmp_path_factory.mktemp("m") / "model.npz"
    with np.load(io.BytesIO(_model_files()[act])) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    target = meta[key]
    if isinstance(target, list) and target and not isinstance(value, list):
        target[index % len(target)] = value  # one element of a list
    else:
        meta[key] = value
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    _load_and_run(path)


_DTYPES = ["int8", "uint8", "int32", "int64", "uint64", "float16", "float32", "float64",
           "complex64", "bool", ">f4", ">i8", "<U3"]


@FUZZ
@given(act=st.sampled_from(["all-relu", "srelu"]), which=st.integers(0, 100),
       dtype=st.sampled_from(_DTYPES), shape=st.lists(st.integers(0, 10), max_size=3),
       fill=st.floats(allow_nan=True, allow_subnormal=False) | st.integers(-2**40, 2**40),
       keep_shape=st.booleans())
@example(act="srelu", which=3, dtype="float32", shape=[1, 8], fill=0.0, keep_shape=False)
def test_fuzz_model_arrays(tmp_path_factory, act, which, dtype, shape, fill, keep_shape):
    path = tmp_path_factory.mktemp("m") / "model.npz"
    with np.load(io.BytesIO(_model_files()[act])) as z:
        arrays = {k: z[k] for k in z.files}
    name = sorted(k for k in arrays if k != "meta")[which % (len(arrays) - 1)]
    new_shape = arrays[name].shape if keep_shape else tuple(shape)
    try:
        arrays[name] = np.full(new_shape, fill).astype(dtype)
    except (OverflowError, ValueError):
        arrays[name] = np.zeros(new_shape, dtype)
    np.savez(path, **arrays)
    _load_and_run(path)


# ----------------------------------------------------------------------------- datasets


def _gz(path: Path, payload: bytes) -> None:
    path.write_bytes(gzip.compress(payload, mtime=0))


def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return head + arr.astype(np.uint8).tobytes()


def _write_dataset(name: str, folder: Path) -> None:
    rng = np.random.default_rng(0)
    if name == "fashion-mnist":
        for split, n in (("train", 8), ("t10k", 4)):
            _gz(folder / f"{split}-images-idx3-ubyte.gz", _idx(rng.integers(0, 256, (n, 3, 3))))
            _gz(folder / f"{split}-labels-idx1-ubyte.gz", _idx(np.arange(n) % 3))
    elif name == "madelon":
        for split, n in (("train", 8), ("valid", 4)):
            np.savetxt(folder / f"madelon_{split}.data", rng.integers(0, 999, (n, 5)), fmt="%d")
            np.savetxt(folder / f"madelon_{split}.labels", np.where(np.arange(n) % 2, 1, -1),
                       fmt="%d")
    elif name == "higgs":
        table = np.column_stack([np.arange(12) % 2, rng.standard_normal((12, 28))])
        buf = io.StringIO()
        np.savetxt(buf, table, delimiter=",", fmt="%.6g")
        _gz(folder / "HIGGS.csv.gz", buf.getvalue().encode())
    elif name == "cifar10":
        for batch in data._CIFAR_BATCHES:
            d = {b"data": rng.integers(0, 256, (3, 3072)).astype(np.uint8),
                 b"labels": [0, 1, 2]}
            (folder / batch).write_bytes(pickle.dumps(d, protocol=2))
    elif name == "leukemia":
        (folder / "leukemia_labels.txt").write_text("\n".join(["ALL", "AML"] * 6) + "\n")
        np.savetxt(folder / "leukemia_data.csv", rng.standard_normal((12, 5)), delimiter=",")
    elif name == "npz":
        np.savez(folder / "user.npz", X_train=rng.standard_normal((8, 4)),
                 y_train=np.arange(8) % 2, X_test=rng.standard_normal((4, 4)),
                 y_test=np.arange(4) % 2)


_READERS = ["fashion-mnist", "madelon", "higgs", "cifar10", "leukemia", "npz"]


@functools.cache
def _dataset_files() -> dict[str, dict[str, bytes]]:
    files = {}
    for name in _READERS:
        folder = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
        _write_dataset(name, folder)
        _load_dataset(name, folder)  # the unmutated files load
        files[name] = {p.name: p.read_bytes() for p in folder.iterdir()}
        shutil.rmtree(folder)
    return files


def _load_dataset(name: str, folder: Path):
    target = str(folder / "user.npz") if name == "npz" else name
    return data.load_dataset(target, folder, standardize=False, download=False)


@FUZZ
@given(name=st.sampled_from(_READERS), which=st.integers(0, 20), edits=_edits,
       inside=st.booleans())
def test_fuzz_dataset_readers(tmp_path_factory, name, which, edits, inside):
    folder = tmp_path_factory.mktemp(name)
    files = _dataset_files()[name]
    for fname, raw in files.items():
        (folder / fname).write_bytes(raw)
    target = folder / sorted(files)[which % len(files)]
    mutate_file(target, edits, inside)
    check_one_line(lambda: _load_dataset(name, folder))


@FUZZ
@given(key=st.sampled_from(["X_train", "y_train", "X_test", "y_test"]),
       dtype=st.sampled_from(_DTYPES), shape=st.lists(st.integers(0, 9), max_size=3),
       fill=st.floats(allow_nan=True, allow_subnormal=False) | st.integers(-2**64 + 1, 2**64 - 1))
@example(key="y_train", dtype="uint64", shape=[8], fill=2**64 - 1)
@example(key="y_train", dtype="int64", shape=[8], fill=10**7)
@example(key="X_train", dtype="complex64", shape=[8, 4], fill=1.0)
@example(key="X_train", dtype="float64", shape=[8, 4], fill=1e300)
def test_fuzz_user_npz_arrays(tmp_path_factory, key, dtype, shape, fill):
    folder = tmp_path_factory.mktemp("npz")
    _write_dataset("npz", folder)
    with np.load(folder / "user.npz") as z:
        arrays = {k: z[k] for k in z.files}
    try:
        arrays[key] = np.full(tuple(shape), fill).astype(dtype)
    except (OverflowError, ValueError):
        arrays[key] = np.zeros(tuple(shape), dtype)
    np.savez(folder / "user.npz", **arrays)
    check_one_line(lambda: _load_dataset("npz", folder))
