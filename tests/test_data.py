"""Tests of sparsetrain.data: loaders on the real files, search order, download, errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets_path import shared_datasets_dir

from sparsetrain import data
from sparsetrain.data import (
    DATASETS,
    Dataset,
    data_dirs,
    list_datasets,
    load_dataset,
    locate,
    standardize_features,
    validate_arrays,
)
from sparsetrain.errors import DataNotFoundError, SparsetrainError

REAL = shared_datasets_dir()


def _need_real(sub: str) -> Path:
    folder = REAL / sub
    if not folder.is_dir():
        pytest.skip(f"real data not available at {folder} (set SPARSETRAIN_TEST_DATA)")
    return folder


@pytest.fixture(scope="module")
def madelon_raw():
    _need_real("madelon")
    return load_dataset("madelon", REAL, standardize=False, download=False)


@pytest.fixture(scope="module")
def fashion():
    _need_real("fashion_mnist")
    return load_dataset("fashion-mnist", REAL, download=False)


# --- real datasets ------------------------------------------------------------


def test_fashion_mnist_shapes_and_dtypes(fashion):
    ds = fashion
    assert isinstance(ds, Dataset)
    assert ds.X_train.shape == (60000, 784) and ds.X_test.shape == (10000, 784)
    assert ds.y_train.shape == (60000,) and ds.y_test.shape == (10000,)
    assert ds.n_features == 784 and ds.n_classes == 10
    for X in (ds.X_train, ds.X_test):
        assert X.dtype == np.float32 and X.flags.c_contiguous
    for y in (ds.y_train, ds.y_test):
        assert y.dtype == np.int64
    # the official files are balanced: 6000 / 1000 per class
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.source == str(REAL / "fashion_mnist")
    assert "fashion-mnist" in repr(ds)


def test_fashion_mnist_raw_pixels():
    folder = _need_real("fashion_mnist")
    X, y = data._load_idx_pair(folder, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    assert X.shape == (10000, 784) and X.dtype == np.float32
    assert X.min() == 0.0 and X.max() == 255.0
    assert np.all(X == np.round(X))


def test_madelon_shapes_labels(madelon_raw):
    ds = madelon_raw
    assert ds.X_train.shape == (2000, 500) and ds.X_test.shape == (600, 500)
    assert ds.n_classes == 2 and ds.n_features == 500
    assert set(np.unique(ds.y_train)) == {0, 1} and set(np.unique(ds.y_test)) == {0, 1}
    assert np.bincount(ds.y_train).tolist() == [1000, 1000]
    assert np.bincount(ds.y_test).tolist() == [300, 300]
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.feature_mean is None
    # first value of madelon_train.data is 485; first train label is -1 -> 0
    assert ds.X_train[0, 0] == 485.0 and ds.y_train[0] == 0


def test_standardisation_uses_training_statistics(madelon_raw):
    raw = madelon_raw
    ds = load_dataset("madelon", REAL, download=False)
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0.0, atol=1e-4)
    std = ds.X_train.std(axis=0)
    constant = raw.X_train.std(axis=0) == 0
    np.testing.assert_allclose(std[~constant], 1.0, atol=1e-4)
    mean = raw.X_train.astype(np.float64).mean(axis=0)
    sd = raw.X_train.astype(np.float64).std(axis=0)
    sd[sd == 0] = 1.0
    np.testing.assert_allclose(ds.X_test, (raw.X_test - mean) / sd, rtol=1e-4, atol=1e-4)
    # the test split is NOT re-centred on its own statistics
    assert np.abs(ds.X_test.mean(axis=0)).max() > 0.05
    np.testing.assert_allclose(ds.feature_mean, mean, rtol=1e-6)


def test_fashion_standardised(fashion):
    np.testing.assert_allclose(fashion.X_train.mean(axis=0), 0.0, atol=1e-3)
    assert np.abs(fashion.X_test.mean(axis=0)).max() > 1e-3


def test_standardize_constant_column_and_dtype():
    X_train = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    X_test = np.array([[3.0, 7.0]])
    Xtr, Xte, mean, std = standardize_features(X_train, X_test)
    assert Xtr.dtype == Xte.dtype == mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, [3.0, 5.0])
    np.testing.assert_allclose(std, [np.sqrt(8 / 3), 1.0], rtol=1e-6)
    assert np.all(Xtr[:, 1] == 0.0)
    np.testing.assert_allclose(Xte, [[0.0, 2.0]])
    with pytest.raises(SparsetrainError, match="same number of columns"):
        standardize_features(X_train, X_test[:, :1])


# --- search order -----------------------------------------------------------


def test_data_dirs_order(monkeypatch, tmp_path):
    given, env = tmp_path / "given", tmp_path / "env"
    cache = tmp_path / "cache"
    assert data_dirs() == [cache]
    monkeypatch.setenv("SPARSETRAIN_DATA", str(env))
    assert data_dirs() == [env, cache]
    assert data_dirs(given) == [given, env, cache]
    assert data_dirs(str(given)) == [given, env, cache]


def test_cache_folder_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("SPARSETRAIN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dirs() == [tmp_path / "xdg" / "sparsetrain"]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dirs() == [tmp_path / "home" / ".cache" / "sparsetrain"]


def _copy_madelon(dest: Path) -> Path:
    src = _need_real("madelon")
    dest.mkdir(parents=True, exist_ok=True)
    for f in DATASETS["madelon"].files:
        shutil.copyfile(src / f.name, dest / f.name)
    return dest


def test_locate_search_order(monkeypatch, tmp_path):
    given = _copy_madelon(tmp_path / "given")  # files directly in the folder
    env = _copy_madelon(tmp_path / "env" / "madelon")  # in a subfolder
    cache = _copy_madelon(tmp_path / "cache" / "madelon")
    assert locate("madelon") == cache
    monkeypatch.setenv("SPARSETRAIN_DATA", str(tmp_path / "env"))
    assert locate("madelon") == env
    assert locate("madelon", given) == given
    assert locate("MADELON", tmp_path / "nothing-here") == env
    assert locate("synthetic") is None


def test_locate_accepts_both_subfolder_spellings(tmp_path):
    src = _need_real("fashion_mnist")
    sub = tmp_path / "fashion-mnist"
    sub.mkdir()
    for f in DATASETS["fashion-mnist"].files:
        (sub / f.name).symlink_to(src / f.name)
    assert locate("fashion-mnist", tmp_path) == sub
    assert locate("fashion_mnist", tmp_path) == sub
    assert locate("fashion-mnist", REAL) == REAL / "fashion_mnist"


def test_locate_needs_all_files(tmp_path):
    folder = _copy_madelon(tmp_path / "d")
    (folder / "madelon_valid.labels").unlink()
    assert locate("madelon", folder) is None


# --- missing data and download -----------------------------------------------


def test_missing_data_download_disabled(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("madelon", tmp_path / "empty", download=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert "'madelon'" in msg and str(tmp_path / "empty") in msg
    assert "--data-dir" in msg and "SPARSETRAIN_DATA" in msg
    assert str(tmp_path / "cache" / "madelon") in msg
    assert "disabled" in msg


def test_missing_data_download_fails(tmp_path):
    with pytest.raises(DataNotFoundError, match="tried and failed.*network disabled in tests"):
        load_dataset("fashion-mnist", tmp_path / "empty")
    assert not any((tmp_path / "cache").rglob("*.part"))


def _fake_fetch_from(src: Path, corrupt: bool = False):
    calls = []

    def fake_fetch(url, dest):
        calls.append(url)
        if corrupt:
            Path(dest).write_bytes(b"not the real file")
        else:
            shutil.copyfile(src / url.rsplit("/", 1)[-1], dest)

    return fake_fetch, calls


def test_download_good_checksum(monkeypatch, tmp_path):
    src = _need_real("madelon")
    fake, calls = _fake_fetch_from(src)
    monkeypatch.setattr(data, "_fetch", fake)
    ds = load_dataset("madelon", standardize=False)
    cache = tmp_path / "cache" / "madelon"
    assert ds.source == str(cache)
    assert ds.X_train.shape == (2000, 500)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f.name for f in DATASETS["madelon"].files
    )
    assert calls == [f.url for f in DATASETS["madelon"].files]
    assert all(u.startswith("https://archive.ics.uci.edu/") for u in calls)
    # second load finds the cache and does not download again
    calls.clear()
    load_dataset("madelon", standardize=False)
    assert calls == []


def test_download_bad_checksum_rejected(monkeypatch, tmp_path):
    src = _need_real("madelon")
    fake, _ = _fake_fetch_from(src, corrupt=True)
    monkeypatch.setattr(data, "_fetch", fake)
    with pytest.raises(DataNotFoundError, match="SHA256 checksum mismatch for madelon_train.data"):
        load_dataset("madelon")
    cache = tmp_path / "cache" / "madelon"
    assert list(cache.iterdir()) == []  # no partial or bad file left behind


def test_download_file_direct(monkeypatch, tmp_path):
    src = _need_real("fashion_mnist")
    spec = DATASETS["fashion-mnist"].files[3]  # t10k labels, small
    monkeypatch.setattr(data, "_fetch", _fake_fetch_from(src)[0])
    dest = data._download_file(spec, tmp_path / "dl")
    assert dest.read_bytes() == (src / spec.name).read_bytes()
    bad = data.DataFile(spec.name, "0" * 64, spec.url)
    (tmp_path / "dl2").mkdir()
    with pytest.raises(SparsetrainError, match="checksum mismatch"):
        data._download_file(bad, tmp_path / "dl2")
    assert list((tmp_path / "dl2").iterdir()) == []


def test_registry_checksums_match_real_files():
    _need_real("fashion_mnist")
    checked = set()
    for spec in DATASETS.values():
        folder = locate(spec.name, REAL)
        if folder is None:  # not among the offline copies (higgs, cifar10, leukemia)
            continue
        for f in spec.files:
            if f.sha256 is not None and (folder / f.name).stat().st_size < 2_000_000:
                assert data._sha256(folder / f.name) == f.sha256  # small files: fast
                checked.add(spec.name)
    assert checked == {"fashion-mnist", "madelon"}


# --- corrupt files --------------------------------------------------------------


def _fashion_copy_with(tmp_path: Path, name: str, payload: bytes) -> Path:
    src = _need_real("fashion_mnist")
    folder = tmp_path / "fm"
    folder.mkdir()
    for f in DATASETS["fashion-mnist"].files:
        (folder / f.name).symlink_to(src / f.name)
    (folder / name).unlink()
    (folder / name).write_bytes(payload)
    return folder


def test_truncated_idx_gzip(tmp_path):
    src = _need_real("fashion_mnist")
    name = "train-labels-idx1-ubyte.gz"
    raw = (src / name).read_bytes()
    folder = _fashion_copy_with(tmp_path, name, raw[: len(raw) // 2])
    with pytest.raises(SparsetrainError, match=rf"IDX file .*{name}.*corrupt or truncated"):
        load_dataset("fashion-mnist", folder, download=False)


def test_idx_payload_shorter_than_header_promises(tmp_path):
    src = _need_real("fashion_mnist")
    name = "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress((src / name).read_bytes())
    path = tmp_path / name
    path.write_bytes(gzip.compress(content[:-10]))
    with pytest.raises(SparsetrainError, match="holds 9990 data bytes but its header promises"):
        data._read_idx(path, 1)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc"))
    with pytest.raises(SparsetrainError, match="magic number 0x00000d01, expected 0x00000801"):
        data._read_idx(path, 1)


def test_madelon_bad_labels(tmp_path):
    folder = _copy_madelon(tmp_path / "m")
    (folder / "madelon_valid.labels").write_text("1\n" * 599 + "0\n")
    with pytest.raises(SparsetrainError, match="labels -1 or \\+1; got 0.0 on line 600"):
        load_dataset("madelon", folder, download=False)
    (folder / "madelon_valid.labels").write_text("1\n" * 10)
    with pytest.raises(SparsetrainError, match="has 600 rows but .* has 10 labels"):
        load_dataset("madelon", folder, download=False)


# --- synthetic ------------------------------------------------------------------


def test_synthetic_defaults_and_determinism():
    a = load_dataset("synthetic")
    b = load_dataset("synthetic")
    assert a.X_train.shape == (7000, 100) and a.X_test.shape == (3000, 100)
    assert a.n_classes == 2 and a.X_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert a.source.startswith("generated (make_classification")
    np.testing.assert_array_equal(a.X_train, b.X_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = load_dataset("synthetic", seed=1)
    assert not np.array_equal(a.X_train, c.X_train)


def test_synthetic_options():
    ds = load_dataset(
        "synthetic",
        n_samples=500,
        n_features=30,
        n_informative=5,
        n_classes=3,
        test_fraction=0.2,
        seed=7,
        standardize=False,
    )
    assert ds.X_train.shape == (400, 30) and ds.X_test.shape == (100, 30)
    assert ds.n_classes == 3 and set(np.unique(ds.y_train)) == {0, 1, 2}
    assert "seed=7" in ds.source
    with pytest.raises(SparsetrainError, match="'test_fraction' option .* in \\(0, 1\\)"):
        load_dataset("synthetic", test_fraction=1.5)
    with pytest.raises(SparsetrainError, match="'n_informative' option .* <= n_features"):
        load_dataset("synthetic", n_features=10, n_informative=20)
    with pytest.raises(SparsetrainError, match="unknown option\\(s\\) n_sample .*n_samples=10000"):
        load_dataset("synthetic", n_sample=10)
    with pytest.raises(SparsetrainError, match="unknown option.*accepts: none"):
        load_dataset("madelon", REAL, seed=3)


# --- user .npz file ----------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "X_train": rng.normal(size=(50, 4)),
        "y_train": rng.integers(0, 3, size=50),
        "X_test": rng.normal(size=(20, 4)),
        "y_test": rng.integers(0, 3, size=20),
    }
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    ds = load_dataset(str(path), standardize=False)
    assert ds.name == "mine" and ds.n_classes == 3 and ds.source == str(path.resolve())
    np.testing.assert_allclose(ds.X_train, arrays["X_train"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.X_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert load_dataset(str(path), n_classes=5).n_classes == 5


def test_npz_errors(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, X_train=np.zeros((3, 2)), y_train=np.zeros(3))
    with pytest.raises(SparsetrainError, match="lacks array\\(s\\) X_test, y_test"):
        load_dataset(str(path))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(SparsetrainError, match="Could not read .*bad.npz"):
        load_dataset(str(bad))
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.npz"))


def test_unknown_dataset():
    with pytest.raises(SparsetrainError, match="Unknown dataset 'mnist'") as info:
        load_dataset("mnist")
    msg = str(info.value)
    for name in DATASETS:
        assert name in msg
    assert ".npz" in msg


# --- validate_arrays -------------------------------------------------------------


def _ok():
    X = np.zeros((4, 3), dtype=np.float32)
    y = np.array([0, 1, 2, 1])
    return X, y, X.copy(), y.copy()


def test_validate_ok():
    assert validate_arrays(*_ok()) == 3
    assert validate_arrays(*_ok(), n_classes=10) == 10
    Xtr, ytr, Xte, yte = _ok()
    assert validate_arrays(Xtr, ytr.astype(float), Xte, yte) == 3


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda a: a.update(X_train=np.zeros(4)), "X_train must be a 2-D array"),
        (lambda a: a.update(X_test=np.zeros((0, 3))), "X_test has 0 samples"),
        (
            lambda a: a.update(X_test=np.zeros((4, 500))),
            "X_test has 500 features but X_train has 3",
        ),
        (lambda a: a.update(y_train=np.array([0, 1, 2])), "y_train has 3 labels but X_train has 4"),
        (lambda a: a.update(y_test=np.zeros((4, 1))), "y_test must be a 1-D array"),
        (
            lambda a: a.update(X_train=np.array([[np.nan, 0, 0]] * 2 + [[np.inf, 1, 1]] * 2)),
            "X_train contains 4 NaN or infinite values \\(in 4 of 4 rows\\)",
        ),
        (
            lambda a: a.update(X_test=np.array([[0, 0, 0]] * 3 + [[np.nan, 0, 0]])),
            "X_test contains 1 NaN",
        ),
        (lambda a: a.update(y_train=np.array([0, 1, 2.5, 1])), "integer-valued .* got 2.5"),
        (lambda a: a.update(y_test=np.array(["a", "b", "c", "d"])), "y_test must hold integer"),
        (lambda a: a.update(y_train=np.array([0, -1, 2, 1])), "y_train contains label -1"),
        (
            lambda a: a.update(y_test=np.array([0, 1, 3, 1])),
            "y_test contains label 3, but n_classes is 3",
        ),
        (lambda a: a.update(y_train=np.zeros(4, dtype=int)), "at least 2 classes"),
        (lambda a: a.update(n_classes=2.5), "'n_classes' parameter must be an int"),
    ],
)
def test_validate_errors(mutate, match):
    Xtr, ytr, Xte, yte = _ok()
    args = {"X_train": Xtr, "y_train": ytr, "X_test": Xte, "y_test": yte, "n_classes": None}
    mutate(args)
    with pytest.raises(SparsetrainError, match=match) as info:
        validate_arrays(**args)
    assert "\n" not in str(info.value)


def test_load_dataset_validates_npz(tmp_path):
    path = tmp_path / "nan.npz"
    X = np.zeros((5, 2))
    X[1, 1] = np.nan
    np.savez(
        path,
        X_train=X,
        y_train=np.array([0, 1, 0, 1, 0]),
        X_test=np.zeros((2, 2)),
        y_test=np.array([0, 1]),
    )
    with pytest.raises(SparsetrainError, match="X_train contains 1 NaN"):
        load_dataset(str(path))


# --- list_datasets -------------------------------------------------------------------


def test_list_datasets(tmp_path):
    rows = list_datasets(REAL)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == set(DATASETS)
    assert all(set(r) == {"name", "description", "location"} for r in rows)
    assert by_name["synthetic"]["location"] == "generated"
    assert "n_samples=10000" in by_name["synthetic"]["description"]
    if (REAL / "madelon").is_dir():
        assert by_name["madelon"]["location"] == str(REAL / "madelon")
    missing = {r["name"]: r for r in list_datasets(tmp_path / "none")}
    loc = missing["madelon"]["location"]
    assert loc.startswith("not found (searched: ") and str(tmp_path / "none") in loc


def test_every_registry_entry_is_well_formed():
    for name, spec in DATASETS.items():
        assert spec.name == name == name.lower()
        assert spec.description and callable(spec.loader)
        for f in spec.files:
            if f.sha256 is None:  # never auto-downloaded: no checksum to verify against
                continue
            assert len(f.sha256) == 64 and f.url.startswith(("http://", "https://"))
            assert f.url.endswith(f.name)


# --- issue 13: labels bounded by their distinct values, real features within float32 -------


def _arrays(y_train, X_train=None):
    rng = np.random.default_rng(0)
    n = len(y_train)
    X = rng.standard_normal((n, 3)) if X_train is None else X_train
    return X, np.asarray(y_train), rng.standard_normal((4, 3)), np.zeros(4, np.int64)


@pytest.mark.parametrize("label", [10**7, 2**63 + 5])
def test_huge_label_refused_before_building_a_layer(label):
    # Label 10^7 once built a 10-million-wide output layer, then died with MemoryError;
    # uint64 labels gave "ValueError: high is out of bounds".
    y = np.array([0, 1, 0, 1, label] * 4, dtype=np.uint64)
    with pytest.raises(SparsetrainError) as info:
        data.validate_arrays(*_arrays(y))
    msg = str(info.value)
    assert "holds 3 distinct labels" in msg and f"largest is {label}" in msg
    assert "LabelEncoder" in msg and "\n" not in msg


def test_continuous_looking_labels_suggest_regression():
    y = np.arange(200) * 997  # integer-valued but all distinct: targets, not classes
    with pytest.raises(SparsetrainError, match="use a regression model"):
        data.validate_arrays(*_arrays(y))
    with pytest.raises(SparsetrainError, match="regression model"):
        data.validate_arrays(*_arrays(np.linspace(0, 1, 20)))


def test_many_classes_all_used_are_fine():
    y = np.arange(300) % 150
    assert data.validate_arrays(*_arrays(y)) == 150


def test_complex_features_refused():
    X = np.ones((20, 3), np.complex64)
    with pytest.raises(SparsetrainError, match="must hold real numbers; got dtype complex64"):
        data.validate_arrays(*_arrays(np.arange(20) % 2, X))


def test_float64_beyond_float32_named_as_such():
    # Once reported as "NaN or infinite" after the cast to float32.
    X = np.ones((20, 3))
    X[3, 1] = 1e300
    with pytest.raises(SparsetrainError, match="beyond float32's range"):
        data.validate_arrays(*_arrays(np.arange(20) % 2, X))


@pytest.mark.parametrize("name", ["Madelon", "FASHION_MNIST", " higgs "])
def test_presets_matched_case_insensitively(name):
    from sparsetrain.config import dataset_key, make_config

    # --dataset Madelon once trained with the Fashion-MNIST settings.
    assert make_config(name) == make_config(dataset_key(name))
    from sparsetrain.config import PRESETS

    cfg = make_config("Madelon")
    assert all(getattr(cfg, k) == (tuple(v) if k == "hidden" else v)
               for k, v in PRESETS["madelon"].items())
    assert data._get_spec(name).name == dataset_key(name)


def test_user_npz_zip_bomb_refused_before_expanding(tmp_path):
    import zipfile

    rng = np.random.default_rng(0)
    arrays = dict(y_train=np.arange(8) % 2, X_test=rng.standard_normal((4, 2)),
                  y_test=np.arange(4) % 2)
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for key, arr in arrays.items():
            with z.open(key + ".npy", "w") as f:
                np.lib.format.write_array(f, arr)
        with z.open("X_train.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f8", "fortran_order": False, "shape": (8_000_000, 4)})
            zeros = bytes(1 << 24)
            for _ in range(16):  # 256 MB of zeros in about 0.25 MB
                f.write(zeros)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(SparsetrainError, match="array X_train would expand"):
        data.load_dataset(str(bomb), standardize=False)
