"""Model files at the API level (sparsetrain.io): round trip, metadata, and one test per
kind of damage: newer format version, unknown format name, truncation, tampered shapes,
wrong dtype, missing entry, non-JSON metadata, and a pickle inside the npz."""

from __future__ import annotations

import io
import json
import pickle
import zipfile

import numpy as np
import pytest

from sparsetrain import __version__
from sparsetrain.config import make_config
from sparsetrain.errors import SparsetrainError
from sparsetrain.io import FORMAT_NAME, FORMAT_VERSION, load_model, save_model
from sparsetrain.model import SparseMLP
from sparsetrain.trainer import Trainer, build_model


@pytest.fixture
def model(rng):
    m = SparseMLP.create([12, 20, 16, 3], epsilon=3, rng=rng, activation="all-relu", alpha=0.5,
                         input_mean=rng.standard_normal(12), input_std=rng.uniform(0.5, 2, 12))
    for layer in m.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out)
        layer.velocity[:] = rng.standard_normal(layer.nnz)
    return m


@pytest.fixture
def saved(tmp_path, model):
    path = tmp_path / "model.npz"
    save_model(path, model, {"run": {"dataset": "synthetic", "preset": "paper"}, "epoch": 3})
    return path


def rewrite(src, dst, edit):
    """Copy an npz, letting ``edit(arrays, meta)`` change it (meta is re-serialised)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    edit(arrays, meta)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(dst, **arrays)
    return dst


def refused(path, *fragments):
    with pytest.raises(SparsetrainError) as info:
        load_model(path)
    msg = str(info.value)
    assert str(path) in msg and "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_round_trip_and_metadata(saved, model, rng):
    loaded, meta = load_model(saved)
    X = rng.standard_normal((30, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded.decision_function(X), model.decision_function(X))
    for a, b in zip(loaded.layers, model.layers, strict=True):
        for key in ("row_ptr", "row_cols", "data", "velocity", "bias", "bias_velocity"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == FORMAT_VERSION
    assert meta["library_version"] == __version__
    assert meta["sizes"] == [12, 20, 16, 3] and meta["activation"] == "all-relu"
    assert meta["alpha"] == 0.5 and meta["task"] == "classification"
    assert meta["dataset"] == "synthetic" and meta["preset"] == "paper" and meta["epoch"] == 3


def test_round_trip_regression(tmp_path, rng):
    from sklearn.datasets import make_regression

    X, Y = make_regression(100, 6, n_targets=2, random_state=0)
    cfg = make_config(None, hidden=(16,), epsilon=3.0, epochs=2, loss="mse", seed=0)
    m = build_model(cfg, X, 2, task="regression", y_train=Y * 10 + 5)
    Trainer(cfg, progress=False, verbose=False).fit(m, X, Y * 10 + 5)
    save_model(tmp_path / "r.npz", m)
    loaded, meta = load_model(tmp_path / "r.npz")
    assert meta["task"] == "regression" and meta["dataset"] is None
    np.testing.assert_array_equal(loaded.target_mean, m.target_mean)
    np.testing.assert_array_equal(loaded.predict(X), m.predict(X))


def test_resumed_training_from_file_continues(tmp_path, rng):
    """The file holds the momentum too: training on from a loaded model equals training on."""
    X = rng.standard_normal((64, 12)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    cfg = make_config(None, hidden=(20,), epsilon=3.0, epochs=2, seed=0)
    m = build_model(cfg, X, 3)
    Trainer(cfg, tmp_path, progress=False, verbose=False).fit(m, X, y)
    trainer, loaded = Trainer.from_checkpoint(tmp_path, epochs=3, progress=False)
    trainer.verbose = False
    trainer.fit(loaded, X, y)
    cfg3 = make_config(None, hidden=(20,), epsilon=3.0, epochs=3, seed=0)
    ref = build_model(cfg3, X, 3)
    Trainer(cfg3, progress=False, verbose=False).fit(ref, X, y)
    np.testing.assert_array_equal(loaded.decision_function(X), ref.decision_function(X))


def test_newer_format_version(tmp_path, saved):
    bad = rewrite(saved, tmp_path / "new.npz", lambda a, m: m.update(format_version=FORMAT_VERSION + 1))
    refused(bad, f"format version {FORMAT_VERSION + 1}", "upgrade sparsetrain")


def test_unknown_format_name(tmp_path, saved):
    bad = rewrite(saved, tmp_path / "other.npz", lambda a, m: m.update(format="keras.model"))
    refused(bad, "'keras.model'", FORMAT_NAME)


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.97])
def test_truncated_file(tmp_path, saved, keep):
    raw = saved.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(raw[: int(len(raw) * keep)])
    refused(bad, "truncated")


def test_not_an_npz(tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_text("hello")
    refused(bad, "truncated or not a sparsetrain model")
    with open(tmp_path / "pickled.npz", "wb") as f:  # a whole-file pickle is refused too
        pickle.dump(_Payload(), f)
    refused(tmp_path / "pickled.npz", "not a sparsetrain model", "pickled")


def test_missing_file(tmp_path):
    refused(tmp_path / "nothing.npz", "does not exist")


def _drop_last(key):
    def edit(arrays, meta):
        arrays[key] = arrays[key][:-1]
    return edit


def _set(key, index, value):
    def edit(arrays, meta):
        arrays[key][index] = value
    return edit


@pytest.mark.parametrize(("edit", "fragments"), [
    (_drop_last("layers.0.data"), ["12->20", "differ in length"]),
    (_drop_last("layers.1.bias"), ["20->16", "bias has shape"]),
    (_drop_last("layers.0.row_ptr"), ["row_ptr has shape"]),
    (_set("layers.1.row_ptr", 5, 10**6), ["row_ptr is not a nondecreasing"]),
    (_set("layers.0.row_cols", 0, 20), ["outside [0, 20)"]),
    (_set("layers.2.row_cols", 0, -1), ["outside [0, 3)"]),
    (_drop_last("input_mean"), ["input_mean/input_std must have shape (12,)"]),
    (lambda a, m: m.update(sizes=[12, 20, 17, 3]), ["inconsistent"]),
])
def test_tampered_shapes(tmp_path, saved, edit, fragments):
    refused(rewrite(saved, tmp_path / "bad.npz", edit), "inconsistent", *fragments)


@pytest.mark.parametrize(("key", "dtype"), [("layers.1.row_cols", np.int64),
                                            ("layers.0.data", np.float64),
                                            ("layers.2.row_ptr", np.uint32),
                                            ("input_std", np.float64)])
def test_wrong_dtype(tmp_path, saved, key, dtype):
    def edit(arrays, meta):
        arrays[key] = arrays[key].astype(dtype)

    refused(rewrite(saved, tmp_path / "bad.npz", edit), key, np.dtype(dtype).name)


def test_files_with_int64_pointers_still_load(tmp_path, saved, model, rng):
    """Files before 2026-12-07 held int64 row pointers; the layers hold int32 now."""
    def widen(arrays, meta):
        for l in range(len(model.layers)):
            arrays[f"layers.{l}.row_ptr"] = arrays[f"layers.{l}.row_ptr"].astype(np.int64)

    loaded, _ = load_model(rewrite(saved, tmp_path / "old.npz", widen))
    X = rng.standard_normal((30, 12)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert all(la.row_ptr.dtype == np.int32 for la in loaded.layers)


@pytest.mark.parametrize("key", ["layers.1.velocity", "input_mean", "layers.2.bias"])
def test_missing_array(tmp_path, saved, key):
    refused(rewrite(saved, tmp_path / "bad.npz", lambda a, m: a.pop(key)), "lacks entry", key)


def test_missing_metadata_entry(tmp_path, saved):
    refused(rewrite(saved, tmp_path / "bad.npz", lambda a, m: m.pop("activation")),
            "lacks entry", "activation")
    refused(rewrite(saved, tmp_path / "bad2.npz", lambda a, m: m.update(layers=[])),
            "malformed metadata")


@pytest.mark.parametrize("key, value", [("dropout", 1.5), ("dropout", -0.1), ("alpha", "x"),
                                        ("activation", "tanhh")])
def test_hyperparameters_out_of_range(tmp_path, saved, key, value):
    # A dropout of 1.5 would train with a keep scale of -2: refused as TrainConfig refuses it.
    refused(rewrite(saved, tmp_path / "bad.npz", lambda a, m: m.update({key: value})),
            f"The '{key}' parameter of model file", "Got")


def test_metadata_not_json(tmp_path, saved):
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array("{not json")
    np.savez(tmp_path / "bad.npz", **arrays)
    refused(tmp_path / "bad.npz", "no readable metadata")


class _Payload:
    """Unpickling this would run code; the loader must never get that far."""

    def __reduce__(self):
        return (print, ("pickle executed",))


def test_pickle_inside_npz_refused(tmp_path, saved, capsys):
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["layers.0.data"] = np.array([_Payload()], dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)  # savez pickles object arrays
    refused(tmp_path / "evil.npz", "pickle", "refusing")
    assert "pickle executed" not in capsys.readouterr().out


def test_estimator_model_saves(tmp_path):
    from sklearn.datasets import make_classification

    from sparsetrain.estimators import SETMLPClassifier

    X, y = make_classification(100, 10, random_state=0)
    clf = SETMLPClassifier((16,), epsilon=3.0, max_iter=2, random_state=0).fit(X, y)
    save_model(tmp_path / "clf.npz", clf.model_)
    loaded, _ = load_model(tmp_path / "clf.npz")
    np.testing.assert_allclose(loaded.predict_proba(X), clf.predict_proba(X))


# --- hostile files (issue 13): each ends in one SparsetrainError line before a kernel runs --


@pytest.fixture
def srelu_saved(tmp_path, rng):
    m = SparseMLP.create([6, 8, 5, 2], epsilon=2, rng=rng, activation="srelu")
    path = tmp_path / "srelu.npz"
    save_model(path, m)
    return path


def test_srelu_neuron_params_of_wrong_shape(tmp_path, srelu_saved):
    # (1, n) instead of (4, n): the kernel read t_r, a_r out of bounds (loss 1.4e29).
    def edit(arrays, meta):
        arrays["layers.0.neuron_params"] = arrays["layers.0.neuron_params"][:1].copy()
        arrays["layers.0.neuron_velocity"] = arrays["layers.0.neuron_velocity"][:1].copy()

    refused(rewrite(srelu_saved, tmp_path / "bad.npz", edit), "neuron_params", "(4, 8)")


def test_srelu_switched_on_without_params(tmp_path, saved):
    # A Numba typing traceback once; now the file is refused: srelu needs (4, n_out) params.
    refused(rewrite(saved, tmp_path / "bad.npz", lambda a, m: m.update(activation="srelu")),
            "lacks neuron_params", "srelu")


def test_neuron_params_for_an_activation_without_them(tmp_path, srelu_saved):
    refused(rewrite(srelu_saved, tmp_path / "bad.npz", lambda a, m: m.update(activation="relu")),
            "has neuron_params", "'relu'")


def test_srelu_round_trip(srelu_saved, rng):
    loaded, _ = load_model(srelu_saved)
    assert loaded.layers[0].neuron_params.shape == (4, 8)


def test_shortened_sizes_refused(tmp_path, saved):
    # Dropping the last layer from meta.sizes silently loaded a different, 2-layer network.
    def edit(arrays, meta):
        meta["sizes"] = meta["sizes"][:-1]
        meta["layers"] = meta["layers"][:-1]

    refused(rewrite(saved, tmp_path / "bad.npz", edit), "more layers than sizes")


def _add_member(path, dst, name, payload: bytes, compress=zipfile.ZIP_DEFLATED):
    import shutil

    shutil.copy(path, dst)
    with zipfile.ZipFile(dst, "a", compression=compress) as z:
        with z.open(zipfile.ZipInfo(name), "w") if compress == zipfile.ZIP_STORED else \
                z.open(name, "w") as f:
            f.write(payload)
    return dst


def _npy_header(dtype, shape, pad=0) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape})
    return buf.getvalue()


def test_zip_bomb_in_an_unused_entry_is_never_expanded(tmp_path, saved):
    import tracemalloc

    bad = tmp_path / "bomb.npz"
    import shutil

    shutil.copy(saved, bad)
    with zipfile.ZipFile(bad, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("junk.npy", "w", force_zip64=True) as f:
            f.write(_npy_header(np.uint8, (256 << 20,)))
            zeros = bytes(1 << 22)
            for _ in range(64):  # 256 MB of zeros, about 1 MB compressed
                f.write(zeros)
    assert bad.stat().st_size < 4 << 20
    tracemalloc.start()
    load_model(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20


def test_bomb_in_an_expected_entry_refused_before_reading(tmp_path, saved):
    # The header declares 10^9 momentum values where the layer holds nnz: refused unread.
    def edit(arrays, meta):
        arrays.pop("layers.0.velocity")

    base = rewrite(saved, tmp_path / "base.npz", edit)
    bad = _add_member(base, tmp_path / "bad.npz", "layers.0.velocity.npy",
                      _npy_header(np.float32, (10**9,)) + bytes(1 << 16))
    refused(bad, "layers.0.velocity", "differ in length")


def test_huge_npy_header(tmp_path, saved):
    def edit(arrays, meta):
        arrays.pop("layers.1.bias")

    base = rewrite(saved, tmp_path / "base.npz", edit)
    header = b"\x93NUMPY\x01\x00" + (65535).to_bytes(2, "little") + b"{" + b" " * 65534
    refused(_add_member(base, tmp_path / "bad.npz", "layers.1.bias.npy", header),
            "layers.1.bias", "damaged npy header")


def test_npy_renamed_npz(tmp_path):
    np.save(tmp_path / "weights.npy", np.arange(10.0))
    (tmp_path / "weights.npy").rename(tmp_path / "model.npz")
    refused(tmp_path / "model.npz", "not a sparsetrain model")


def test_metadata_nested_deeply(tmp_path, saved):
    # 10^5 nested lists made json.loads raise RecursionError (a traceback).
    with np.load(saved) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta"] = np.array("[" * 100_000 + "]" * 100_000)
    np.savez(tmp_path / "bad.npz", **arrays)
    refused(tmp_path / "bad.npz", "no readable metadata")


@pytest.mark.parametrize(("key", "value", "fragment"), [
    ("epoch", "abc", "epoch must be an integer"),
    ("epoch", -1, "epoch must be an integer"),
    ("evolved", "yes", "evolved must be true or false"),
    ("history", {"a": 1}, "history must be a JSON array"),
    ("history", [{"epoch": "x"}], "history[0].epoch"),
    ("config", {"lr": "fast"}, "'lr' parameter"),
    ("config", {"hidden": ["x"]}, "damaged training state"),
    ("config", {"nonsense": 1}, "Unknown training option"),
])
def test_tampered_checkpoint_state(tmp_path, saved, key, value, fragment):
    msg = refused(rewrite(saved, tmp_path / "bad.npz", lambda a, m: m.update({key: value})),
                  "damaged training state")
    assert fragment in msg


def test_resume_from_tampered_checkpoint_is_one_line(tmp_path, rng):
    X = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    cfg = make_config(None, hidden=(20,), epsilon=3.0, epochs=1, seed=0)
    Trainer(cfg, tmp_path, progress=False, verbose=False).fit(build_model(cfg, X, 3), X, y)
    rewrite(tmp_path / "model.npz", tmp_path / "model.npz", lambda a, m: m.update(epoch="abc"))
    with pytest.raises(SparsetrainError, match="epoch must be an integer"):
        Trainer.from_checkpoint(tmp_path, epochs=2)


def test_random_byte_flips_end_in_one_line(tmp_path, saved):
    """Once 16 of 800 flips leaked a traceback; every flip now loads or is refused."""
    raw = bytearray(saved.read_bytes())
    gen = np.random.default_rng(13)
    bad = tmp_path / "flip.npz"
    for _ in range(300):
        data = bytearray(raw)
        for pos in gen.integers(0, len(data), gen.integers(1, 4)):
            data[pos] ^= int(gen.integers(1, 256))
        bad.write_bytes(bytes(data))
        try:
            load_model(bad)
        except SparsetrainError as exc:
            assert "\n" not in str(exc)
