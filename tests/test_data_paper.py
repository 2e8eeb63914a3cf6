"""Loaders of the paper datasets not kept in shared/datasets (Higgs, CIFAR-10, Leukemia),
tested on small files written here in the official formats."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest

from sparsetrain import data
from sparsetrain.data import load_dataset
from sparsetrain.errors import DataNotFoundError, SparsetrainError


def write_higgs(folder, rows, rng):
    folder.mkdir(parents=True)
    table = np.column_stack([rng.integers(0, 2, rows), rng.standard_normal((rows, 28))])
    with gzip.open(folder / "HIGGS.csv.gz", "wt") as f:
        for row in table:
            f.write(",".join(f"{v:.6e}" for v in row) + "\n")
    return table


def test_higgs_split_and_subset(tmp_path, rng):
    table = write_higgs(tmp_path / "higgs", 300, rng)
    ds = load_dataset("higgs", tmp_path, standardize=False, n_train=200, n_test=50)
    assert (ds.X_train.shape, ds.X_test.shape, ds.n_classes) == ((200, 28), (50, 28), 2)
    np.testing.assert_allclose(ds.X_train[0], table[0, 1:], rtol=1e-5)
    np.testing.assert_array_equal(ds.y_test, table[200:250, 0].astype(int))
    # A file shorter than the default 105000 + 50000 rows is split 105:50.
    ds = load_dataset("higgs", tmp_path, standardize=False)
    assert len(ds.y_train) == round(300 * 105 / 155) and len(ds.y_test) == 300 - len(ds.y_train)


def test_higgs_not_downloaded_without_checksum(tmp_path):
    with pytest.raises(DataNotFoundError, match="no published SHA256.*HIGGS.csv.gz"):
        load_dataset("higgs", tmp_path)


def write_cifar(folder, rng, n=20):
    folder.mkdir(parents=True)
    expect = {}
    for name in data._CIFAR_BATCHES:
        X = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": X, b"labels": y, b"batch_label": b"x"}, f, protocol=2)
        expect[name] = (X, y)
    return expect


def test_cifar10_batches(tmp_path, rng):
    expect = write_cifar(tmp_path / "cifar-10-batches-py", rng)
    ds = load_dataset("cifar10", tmp_path, standardize=False)
    assert ds.X_train.shape == (100, 3072) and ds.X_test.shape == (20, 3072)
    np.testing.assert_array_equal(ds.X_train[20:40], expect["data_batch_2"][0])
    np.testing.assert_array_equal(ds.y_test, expect["test_batch"][1])


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar10_refuses_arbitrary_pickles(tmp_path, rng, capsys):
    write_cifar(tmp_path / "cifar10", rng)
    with open(tmp_path / "cifar10" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [1]}, f, protocol=2)
    with pytest.raises(SparsetrainError, match=r"refusing to load (__builtin__|builtins)\.print"):
        load_dataset("cifar10", tmp_path)
    assert "must never run" not in capsys.readouterr().out


@pytest.mark.parametrize("fmt", [".npy", ".csv"])
def test_leukemia_stratified_two_to_one(tmp_path, rng, fmt):
    folder = tmp_path / "leukemia"
    folder.mkdir()
    names = np.array(["AML", "ALL", "CLL"])
    labels = np.repeat(names, [30, 15, 9])
    X = rng.standard_normal((len(labels), 12)).astype(np.float32)
    X[:, 0] = np.arange(len(labels))  # row id, to check the split keeps rows intact
    if fmt == ".npy":
        np.save(folder / "leukemia_data.npy", X)
    else:
        np.savetxt(folder / "leukemia_data.csv", X, delimiter=",")
    (folder / "leukemia_labels.txt").write_text("\n".join(labels) + "\n")
    ds = load_dataset("leukemia", tmp_path, standardize=False)
    assert ds.n_classes == 3 and len(ds.y_train) + len(ds.y_test) == len(labels)
    classes = np.unique(labels)  # sorted: ALL, AML, CLL -> 0, 1, 2
    for c, name in enumerate(classes):  # each class split 2:1
        n = int((labels == name).sum())
        assert int((ds.y_test == c).sum()) == round(n / 3)
    rows = ds.X_train[:, 0].astype(int)
    np.testing.assert_array_equal(ds.y_train, np.searchsorted(classes, labels[rows]))
    again = load_dataset("leukemia", tmp_path, standardize=False)
    np.testing.assert_array_equal(again.X_test, ds.X_test)  # same seed, same split
    other = load_dataset("leukemia", tmp_path, standardize=False, seed=1)
    assert not np.array_equal(other.X_test, ds.X_test)


def test_leukemia_row_label_mismatch(tmp_path, rng):
    folder = tmp_path / "leukemia"
    folder.mkdir()
    np.save(folder / "leukemia_data.npy", rng.standard_normal((10, 4)))
    (folder / "leukemia_labels.txt").write_text("a\nb\n")
    with pytest.raises(SparsetrainError, match="10 rows but .* 2 labels"):
        load_dataset("leukemia", tmp_path)
