"""PyTorch interop: the exported torch.sparse module reproduces our outputs (every
activation, both tasks, CSR and COO, and a model trained on Fashion-MNIST), imports
round-trip, and masked / pruned / sparse PyTorch MLPs import with their topology."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest

from sparsetrain.activations import ACTIVATIONS
from sparsetrain.config import make_config
from sparsetrain.data import load_dataset
from sparsetrain.errors import SparsetrainError
from sparsetrain.model import SparseMLP
from sparsetrain.trainer import Trainer, build_model

torch = pytest.importorskip("torch")
pytest.importorskip("torch.nn.utils.prune")
from sparsetrain.interop import from_torch, to_torch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(rng, activation="all-relu", task="classification"):
    extra = ({"loss": "mse", "target_mean": rng.standard_normal(4),
              "target_std": rng.uniform(0.5, 2, 4)} if task == "regression" else {})
    m = SparseMLP.create([20, 30, 25, 4], epsilon=3, rng=rng, activation=activation, alpha=0.6,
                         task=task, input_mean=rng.standard_normal(20),
                         input_std=rng.uniform(0.5, 2, 20), **extra)
    for layer in m.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out) * 0.1
    return m


def torch_out(module, X):
    with torch.no_grad():
        return module(torch.as_tensor(X)).numpy()


@pytest.mark.parametrize("layout", ["csr", "coo"])
@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_export_matches_decision_function(rng, activation, task, layout):
    m = random_model(rng, activation, task)
    X = (rng.standard_normal((64, 20)) * 3).astype(np.float32)
    module = to_torch(m, layout=layout)
    assert not module.training
    layout_of = {"csr": torch.sparse_csr, "coo": torch.sparse_coo}[layout]
    assert all(w.layout == layout_of for w in module.weights)
    assert [int(w._nnz()) for w in module.weights] == [la.nnz for la in m.layers]
    np.testing.assert_allclose(torch_out(module, X), m.decision_function(X), rtol=1e-5, atol=1e-5)
    back = from_torch(module)  # round trip: same topology, values, scaler, activation
    np.testing.assert_array_equal(back.decision_function(X), m.decision_function(X))
    for a, b in zip(back.layers, m.layers, strict=True):
        np.testing.assert_array_equal(a.keys(), b.keys())


def test_a_lean_model_exports_like_the_csc_one(rng):
    """A network without its CSC index (--csc-index drop) builds one for the export only."""
    m = random_model(rng)
    X = (rng.standard_normal((64, 20)) * 3).astype(np.float32)
    expected = torch_out(to_torch(m), X)
    m.set_csc(False)
    np.testing.assert_array_equal(torch_out(to_torch(m), X), expected)
    assert all(la.col_ptr is None for la in m.layers)


def test_exported_module_trains_and_pickles(rng):
    m = random_model(rng)
    module = to_torch(m).train()
    X = torch.as_tensor(rng.standard_normal((8, 20)).astype(np.float32))
    module(X).sum().backward()  # sparse gradients, only at existing connections
    assert module.weights[0].grad.layout == torch.sparse_csr
    buf = io.BytesIO()
    torch.save(module.eval(), buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    np.testing.assert_array_equal(torch_out(again, X), torch_out(module, X))
    assert torch_out(pickle.loads(pickle.dumps(module)), X).shape == (8, 4)


def test_fashion_mnist_predictions_equal(datasets_dir):
    """A small model trained on a Fashion-MNIST subset: the exported module predicts the
    same class for every one of the 10,000 test images, outputs within 1e-5."""
    ds = load_dataset("fashion-mnist", datasets_dir, standardize=False)
    sub = np.random.default_rng(0).choice(len(ds.X_train), 3000, replace=False)
    cfg = make_config("fashion-mnist", hidden=(128, 128), epsilon=5.0, epochs=2, seed=0)
    model = build_model(cfg, ds.X_train[sub], ds.n_classes)
    Trainer(cfg, progress=False, verbose=False).fit(model, ds.X_train[sub], ds.y_train[sub])
    ours = model.decision_function(ds.X_test)
    theirs = torch_out(to_torch(model), ds.X_test)
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(theirs.argmax(axis=1), model.predict(ds.X_test))
    assert np.mean(model.predict(ds.X_test) == ds.y_test) > 0.6  # it is a trained model


def test_import_masked_sequential(rng):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.LeakyReLU(0.2),
                              torch.nn.Linear(16, 3))
    masks = [torch.rand(16, 10) < 0.3, torch.ones(3, 16, dtype=torch.bool)]
    m = from_torch(net, masks)
    assert m.activation == "leaky-relu" and m.alpha == pytest.approx(0.2)
    assert [la.nnz for la in m.layers] == [int(masks[0].sum()), 48]
    X = rng.standard_normal((20, 10)).astype(np.float32)
    with torch.no_grad():  # reference: the dense module with masked weights
        net[0].weight.mul_(masks[0])
        ref = net(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(m.decision_function(X), ref, rtol=1e-5, atol=1e-6)
    # Without masks, exact zeros are absent connections.
    assert from_torch(net).layers[0].nnz == int(masks[0].sum())


def test_import_pruned_and_sparse_tensors(rng):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 2))
    torch.nn.utils.prune.random_unstructured(net[0], "weight", amount=0.5)
    m = from_torch(net)  # picks up torch.nn.utils.prune's weight_mask
    assert m.layers[0].nnz == int(net[0].weight_mask.sum()) == 48
    X = rng.standard_normal((5, 8)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(m.decision_function(X), net(torch.as_tensor(X)).numpy(),
                                   rtol=1e-5, atol=1e-6)
    pairs = [(net[0].weight.detach().to_sparse(), net[0].bias), (net[2].weight, net[2].bias)]
    m2 = from_torch(pairs, activation="relu")
    np.testing.assert_array_equal(m2.decision_function(X), m.decision_function(X))


def test_import_errors():
    seq = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    with pytest.raises(SparsetrainError, match="Tanh"):
        from_torch(seq)
    with pytest.raises(SparsetrainError, match="activation="):
        from_torch([torch.nn.Linear(4, 5), torch.nn.Linear(5, 2)])
    with pytest.raises(SparsetrainError, match="mask 0 has shape"):
        from_torch([torch.nn.Linear(4, 5)], masks=[np.ones((4, 5), bool)])
    with pytest.raises(SparsetrainError, match="layout"):
        to_torch(SparseMLP.create([4, 2], epsilon=1, rng=np.random.default_rng(0)), layout="bsr")


def test_import_sparsetrain_does_not_import_torch():
    code = ("import sys, sparsetrain, sparsetrain.interop, sparsetrain.estimators; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
