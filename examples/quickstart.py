"""Quickstart: train a truly sparse MLP (SET, All-ReLU) on a Fashion-MNIST subset, save it,
load it back.

    SPARSETRAIN_DATA=../shared/datasets python examples/quickstart.py
"""

import os
import tempfile
from pathlib import Path

import numpy as np

from sparsetrain import make_config
from sparsetrain.data import load_dataset
from sparsetrain.io import load_model
from sparsetrain.trainer import Trainer, build_model

DATA = os.environ.get("SPARSETRAIN_DATA") or Path(__file__).resolve().parents[2] / "shared" / "datasets"

ds = load_dataset("fashion-mnist", DATA, standardize=False)  # raw pixels; the model standardises
rng = np.random.default_rng(0)
train = rng.choice(len(ds.X_train), 6000, replace=False)  # a subset keeps this to seconds
X, y = ds.X_train[train], ds.y_train[train]

# The paper's Fashion-MNIST preset, made smaller: 784-256-256-10, epsilon 10, 3 epochs.
cfg = make_config("fashion-mnist", hidden=(256, 256), epsilon=10.0, epochs=3, seed=0)
model = build_model(cfg, X, ds.n_classes)
print(model)  # layer sizes and connection counts (about epsilon * (n_in + n_out) each)

with tempfile.TemporaryDirectory() as run:
    history = Trainer(cfg, out_dir=run, progress=False).fit(model, X, y, ds.X_test, ds.y_test)
    print(f"test accuracy after {len(history)} epochs: {history[-1]['test_accuracy']:.4f}")
    loaded, meta = load_model(Path(run) / "model.npz")  # weights, momentum, scaler, metadata
    assert np.array_equal(loaded.predict(ds.X_test), model.predict(ds.X_test))
    print(f"reloaded {meta['format']} v{meta['format_version']}: sizes {meta['sizes']}, "
          f"activation {meta['activation']}, epoch {meta['epoch']}")

W1 = model.layers[0].to_scipy()  # scipy.sparse.csr_matrix (784, 256)
print(f"first layer: {W1.shape}, {W1.nnz} connections ({100 * W1.nnz / np.prod(W1.shape):.1f}% dense)")
