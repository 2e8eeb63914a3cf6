"""Gradients and one SGD step against PyTorch autograd on the same (densified) weights,
for every entry of the activation table and both losses, with dropout on."""

from __future__ import annotations

import numpy as np
import pytest
from test_kernels import dropout_mask

from sparsetrain.activations import ACTIVATIONS
from sparsetrain.model import _SEED_MIX, SparseMLP

torch = pytest.importorskip("torch")

SIZES = [20, 30, 25, 15, 4]


def make_model(rng, activation, loss, dropout):
    m = SparseMLP.create(SIZES, epsilon=3, rng=rng, activation=activation, alpha=0.6,
                         dropout=dropout, loss=loss,
                         input_mean=rng.standard_normal(SIZES[0]),
                         input_std=rng.uniform(0.5, 2.0, SIZES[0]))
    for layer in m.layers:
        layer.bias[:] = rng.standard_normal(layer.n_out) * 0.1
    return m


def torch_forward(m, X, y, activation, seed):
    """The same network in float64 PyTorch: dense weights, explicit dropout masks."""
    Ws = [torch.tensor(la.to_dense(), dtype=torch.float64, requires_grad=True) for la in m.layers]
    bs = [torch.tensor(la.bias, dtype=torch.float64, requires_grad=True) for la in m.layers]
    ps = [None if la.neuron_params is None else
          torch.tensor(la.neuron_params, dtype=torch.float64, requires_grad=True) for la in m.layers]
    h = (torch.tensor(X, dtype=torch.float64) - torch.tensor(m.input_mean, dtype=torch.float64)) \
        / torch.tensor(m.input_std, dtype=torch.float64)
    slopes = m.slopes()
    batch = X.shape[0]
    for l in range(len(m.layers)):
        z = h @ Ws[l] + bs[l]
        if l == len(m.layers) - 1:
            h = z
            break
        if activation == "srelu":
            tl, al, tr, ar = ps[l]
            h = torch.where(z >= tr, tr + ar * (z - tr), torch.where(z <= tl, tl + al * (z - tl), z))
        elif activation == "sigmoid":
            h = torch.sigmoid(z)
        else:
            h = torch.where(z > 0, z, slopes[l] * z)
        if m.dropout > 0:
            layer_seed = (seed * _SEED_MIX + l + 1) & 0xFFFFFFFFFFFFFFFF
            keep = dropout_mask(layer_seed, m.layers[l].n_out, batch, m.dropout).T  # (B, n)
            h = h * torch.tensor(keep, dtype=torch.float64) / (1 - m.dropout)
    yt = torch.tensor(y)
    if m.loss == "cross-entropy":
        loss = torch.nn.functional.cross_entropy(h, yt)
    else:
        onehot = torch.nn.functional.one_hot(yt, SIZES[-1]).to(torch.float64)
        loss = 0.5 * ((h - onehot) ** 2).sum(1).mean()
    return loss, Ws, bs, ps


@pytest.mark.parametrize("loss", ["cross-entropy", "mse"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_gradients_equal_autograd(activation, loss, dropout):
    rng = np.random.default_rng(7)
    m = make_model(rng, activation, loss, dropout)
    X = rng.standard_normal((16, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], 16)
    seed = 424242
    ours_loss, grads = m.gradients(X, y, seed=seed)
    ref_loss, Ws, bs, ps = torch_forward(m, X, y, activation, seed)
    ref_loss.backward()
    assert ours_loss == pytest.approx(ref_loss.item(), rel=1e-5)
    for layer, (g, gb, pg), W, b, p in zip(m.layers, grads, Ws, bs, ps, strict=True):
        assert (pg is None) == (p is None)
        if p is not None:  # SReLU parameters (t_l, a_l, t_r, a_r) of this layer's neurons
            ref = p.grad.numpy()
            np.testing.assert_allclose(pg, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        ref = W.grad.numpy()[layer.rows(), layer.row_cols]  # only existing connections
        scale = np.abs(ref).max()
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(gb, b.grad.numpy(), rtol=1e-4,
                                   atol=1e-4 * np.abs(b.grad.numpy()).max())


def test_train_step_equals_torch_sgd():
    """One momentum-SGD step (decay on connection values only) equals torch.optim.SGD
    on the masked dense weights, and touches no absent connection."""
    rng = np.random.default_rng(3)
    m = make_model(rng, "all-relu", "cross-entropy", 0.0)
    for layer in m.layers:  # nonzero momentum state, as mid-training
        layer.velocity[:] = rng.standard_normal(layer.nnz) * 0.01
        layer.bias_velocity[:] = rng.standard_normal(layer.n_out) * 0.01
    X = rng.standard_normal((32, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], 32)
    loss, Ws, bs, _ = torch_forward(m, X, y, "all-relu", 0)
    opt = torch.optim.SGD([{"params": Ws, "weight_decay": 2e-4}, {"params": bs}], lr=0.05,
                          momentum=0.9)
    for p, layer in zip(Ws, m.layers, strict=True):  # torch's buffer is -v/lr in our terms
        buf = np.zeros((layer.n_in, layer.n_out))
        buf[layer.rows(), layer.row_cols] = -layer.velocity / 0.05
        opt.state[p]["momentum_buffer"] = torch.tensor(buf)
    for p, layer in zip(bs, m.layers, strict=True):
        opt.state[p]["momentum_buffer"] = torch.tensor(-layer.bias_velocity / 0.05,
                                                       dtype=torch.float64)
    masks = [torch.tensor(la.to_dense() != 0) for la in m.layers]
    loss.backward()
    for W, mask in zip(Ws, masks, strict=True):
        W.grad *= mask  # the dense-masked way: gradient only where connections exist
    opt.step()
    m.train_step(X, y, np.arange(32), lr=0.05, momentum=0.9, weight_decay=2e-4, seed=0)
    for layer, W, b in zip(m.layers, Ws, bs, strict=True):
        dense = layer.to_dense()
        np.testing.assert_allclose(dense, W.detach().numpy() * (dense != 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.bias, b.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["srelu", "all-relu"])
def test_fused_train_step_equals_gradients_plus_manual_step(activation):
    """The kernels' in-place update (weights, biases, SReLU parameters) equals the
    unfused gradients followed by the SPEC 1.3 step written out in NumPy."""
    import copy

    rng = np.random.default_rng(11)
    m = make_model(rng, activation, "cross-entropy", 0.3)
    for layer in m.layers:
        layer.velocity[:] = rng.standard_normal(layer.nnz) * 0.01
        if layer.neuron_params is not None:
            layer.neuron_velocity[:] = rng.standard_normal(layer.neuron_params.shape) * 0.01
    ref = copy.deepcopy(m)
    X = rng.standard_normal((24, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], 24)
    lr, mom, wd = 0.05, 0.9, 2e-4
    _, grads = ref.gradients(X, y, seed=5)
    for layer, (g, gb, pg) in zip(ref.layers, grads, strict=True):
        layer.velocity[:] = mom * layer.velocity - lr * (g + wd * layer.data)
        layer.data += layer.velocity
        layer.bias_velocity[:] = mom * layer.bias_velocity - lr * gb
        layer.bias += layer.bias_velocity
        if pg is not None:
            layer.neuron_velocity[:] = mom * layer.neuron_velocity - lr * pg
            layer.neuron_params += layer.neuron_velocity
    m.train_step(X, y, np.arange(24), lr=lr, momentum=mom, weight_decay=wd, seed=5)
    for a, b in zip(m.layers, ref.layers, strict=True):
        np.testing.assert_allclose(a.data, b.data, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.velocity, b.velocity, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.bias, b.bias, rtol=1e-5, atol=1e-6)
        if a.neuron_params is not None:
            np.testing.assert_allclose(a.neuron_params, b.neuron_params, rtol=1e-5, atol=1e-6)
