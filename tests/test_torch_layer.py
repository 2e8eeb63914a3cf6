"""sparsetrain.torch: gradients against a dense nn.Linear holding the same weights, the
optimizer-state remap of SET / Importance Pruning against a brute-force reference, state
dict round trips and SparseMLP <-> torch conversion."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from sparsetrain.errors import SparsetrainError  # noqa: E402
from sparsetrain.interop import from_torch, to_sequential  # noqa: E402
from sparsetrain.model import SparseMLP  # noqa: E402
from sparsetrain.torch import (  # noqa: E402
    AllReLU,
    ImportancePruning,
    SETScheduler,
    SparseLinear,
    SReLU,
)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

#: Every activation module, by name: make(n) -> module for n neurons.
ACTIVATION_MODULES = {
    "all-relu-odd": lambda n: AllReLU(0.6, 1),
    "all-relu-even": lambda n: AllReLU(0.6, 2),
    "srelu": lambda n: SReLU(n, seed=3),
    "relu": lambda n: nn.ReLU(),
    "sigmoid": lambda n: nn.Sigmoid(),
}


def _dense_twin(layer: SparseLinear) -> nn.Linear:
    lin = nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(layer.dense_weight().double())
        lin.bias.copy_(layer.bias.double())
    return lin


def _at_connections(layer: SparseLinear, dense_grad: torch.Tensor) -> torch.Tensor:
    """Dense (out, in) gradient read at the layer's connections, in ``values`` order."""
    keys = torch.as_tensor(layer.keys())
    return dense_grad.t().reshape(-1)[keys]


@pytest.mark.parametrize("batch", [37, 160])  # SIMD tail only; 128 + 16 blocks + tail
@pytest.mark.parametrize("act", sorted(ACTIVATION_MODULES))
@pytest.mark.parametrize("backend", ["numba", "torch", pytest.param("cuda", marks=CUDA)])
def test_gradients_equal_dense_linear(act, backend, batch):
    device = "cuda" if backend == "cuda" else "cpu"
    gen = np.random.default_rng(0)
    l1 = SparseLinear(30, 40, epsilon=6.0, seed=1, backend="auto" if backend == "cuda" else backend)
    l2 = SparseLinear(40, 7, epsilon=3.0, seed=2, backend="auto" if backend == "cuda" else backend)
    f = ACTIVATION_MODULES[act](40)
    sparse = nn.Sequential(l1, f, l2).to(device)
    dense = nn.Sequential(_dense_twin(l1), ACTIVATION_MODULES[act](40), _dense_twin(l2))
    if act == "srelu":
        dense[1].params.data = f.params.detach().double().clone()
    x = gen.standard_normal((batch, 30)).astype(np.float32)
    xs = torch.tensor(x, device=device, requires_grad=True)
    xd = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    w = torch.as_tensor(gen.standard_normal((batch, 7)))  # a loss with every output in it
    (sparse(xs).double() * w.to(device)).sum().backward()
    out_d = dense(xd)
    (out_d * w).sum().backward()
    np.testing.assert_allclose(sparse(xs).detach().cpu().double(), out_d.detach(), rtol=1e-4, atol=1e-5)

    def check(ours, ref):
        ref = ref.detach()
        np.testing.assert_allclose(ours.detach().cpu().double().numpy(), ref.numpy(), rtol=1e-4,
                                   atol=1e-5 * float(ref.abs().max()))

    check(xs.grad, xd.grad)
    for s, d in ((l1, dense[0]), (l2, dense[2])):
        check(s.values.grad, _at_connections(s, d.weight.grad))
        check(s.bias.grad, d.bias.grad)
    if act == "srelu":
        check(f.params.grad, dense[1].params.grad)


#: Activations the CPU kernels fuse into the layer (SparseLinear(activation=...)).
FUSED = ["all-relu-odd", "all-relu-even", "relu", "sigmoid"]


@pytest.mark.parametrize("dropout", [0.0, 0.4])
@pytest.mark.parametrize("act", FUSED)
def test_fused_epilogue_gradients_equal_dense(act, dropout):
    """Activation and dropout in the kernels' epilogue: the dense reference applies the
    same activation and the mask read off the output (an All-ReLU/sigmoid output is zero
    only where dropped; a ReLU output also where z <= 0, where the mask does not matter)."""
    gen = np.random.default_rng(1)
    l1 = SparseLinear(30, 40, epsilon=6.0, seed=1, activation=ACTIVATION_MODULES[act](40),
                      dropout=dropout)
    l2 = SparseLinear(40, 7, epsilon=3.0, seed=2)
    x = gen.standard_normal((150, 30)).astype(np.float32)
    xs = torch.tensor(x, requires_grad=True)
    xd = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(0)
    h = l1(xs)
    kept = (h != 0).double()
    if dropout and act != "relu":  # (ReLU outputs are also zero where z <= 0)
        assert abs(1 - kept.mean().item() - dropout) < 0.03
    w = torch.as_tensor(gen.standard_normal((150, 7)))
    (l2(h).double() * w).sum().backward()
    d1, d2 = _dense_twin(l1), _dense_twin(l2)
    hd = ACTIVATION_MODULES[act](40)(d1(xd)) * kept / (1 - dropout)
    np.testing.assert_allclose(h.detach().double(), hd.detach(), rtol=1e-4, atol=1e-5)
    (d2(hd) * w).sum().backward()
    for ours, ref in ((xs.grad, xd.grad), (l1.values.grad, _at_connections(l1, d1.weight.grad)),
                      (l1.bias.grad, d1.bias.grad),
                      (l2.values.grad, _at_connections(l2, d2.weight.grad))):
        np.testing.assert_allclose(ours.double().numpy(), ref.numpy(), rtol=1e-4,
                                   atol=1e-5 * float(ref.abs().max()))
    l1.eval()  # no dropout in eval mode
    with torch.no_grad():
        np.testing.assert_allclose(l1(xs).double(), ACTIVATION_MODULES[act](40)(d1(xd)),
                                   rtol=1e-4, atol=1e-5)


def test_sparse_layers_chain_without_copies():
    """A sparse layer's output, through an activation and dropout, is the transpose of a
    contiguous (n, B) tensor: the next sparse layer's kernels read it in place."""
    net = nn.Sequential(SparseLinear(20, 30, epsilon=4.0, seed=0), AllReLU(0.6, 1),
                        nn.Dropout(0.3))
    h = net(torch.randn(48, 20, requires_grad=True))
    assert h.t().is_contiguous()


def test_parameters_and_buffers():
    layer = SparseLinear(50, 20, epsilon=5.0, seed=0)
    assert [n for n, _ in layer.named_parameters()] == ["values", "bias"]
    assert layer.values.shape == (layer.nnz,)
    assert {n for n, _ in layer.named_buffers()} == {"row_ptr", "row_cols", "col_ptr",
                                                      "col_rows", "col_pos"}
    assert set(layer.state_dict()) >= {"values", "bias", "row_ptr", "col_pos"}
    assert SparseLinear(50, 20, epsilon=5.0, bias=False, seed=0).bias is None


def test_errors_name_the_parameter():
    with pytest.raises(SparsetrainError, match="'in_features' parameter of SparseLinear"):
        SparseLinear(0, 3)
    with pytest.raises(SparsetrainError, match="'epsilon' parameter"):
        SparseLinear(10, 10, epsilon=-1.0)
    with pytest.raises(SparsetrainError, match="'init' parameter"):
        SparseLinear(10, 10, epsilon=1.0, init="zeros")
    with pytest.raises(SparsetrainError, match="'zeta' parameter of SETScheduler"):
        SETScheduler(nn.Sequential(), zeta=1.5)
    with pytest.raises(SparsetrainError, match="'activation' parameter of SparseLinear"):
        SparseLinear(10, 10, epsilon=1.0, activation=SReLU(10))
    with pytest.raises(SparsetrainError, match="'dropout' parameter of SparseLinear"):
        SparseLinear(10, 10, epsilon=1.0, dropout=1.0)
    with pytest.raises(SparsetrainError, match="expects inputs with 10 features"):
        SparseLinear(10, 10, epsilon=1.0, seed=0)(torch.zeros(3, 11))


def _trained_net(opt_name, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(SparseLinear(40, 60, epsilon=8.0, seed=seed), AllReLU(0.6, 1),
                        SparseLinear(60, 30, epsilon=8.0, seed=seed + 1), AllReLU(0.6, 2),
                        SparseLinear(30, 5, epsilon=4.0, seed=seed + 2))
    opt = (torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(net.parameters(), lr=1e-2))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        x = torch.randn(32, 40, generator=gen)
        y = torch.randint(0, 5, (32,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net, opt


def _snapshot(net, opt):
    """Per layer: {key: (value, {state name: value})} and the non-connection state."""
    snap = []
    for m in [m for m in net.modules() if isinstance(m, SparseLinear)]:
        st = opt.state[m.values]
        per = {k: v.clone() for k, v in st.items() if v.shape == m.values.shape}
        other = {k: v.clone() for k, v in st.items() if v.shape != m.values.shape}
        keys, values = m.keys(), m.values.detach()
        conn = {int(k): (float(values[i]), {n: float(t[i]) for n, t in per.items()})
                for i, k in enumerate(keys)}
        snap.append((conn, other, m.values))
    return snap


def _brute_force_removed(conn, zeta):
    """SPEC 1.4 by sorting: the floor(zeta*|N|) negatives closest to zero and the
    floor(zeta*|P|) smallest non-negatives."""
    neg = sorted((v, k) for k, (v, _) in conn.items() if v < 0)
    pos = sorted((v, k) for k, (v, _) in conn.items() if v >= 0)
    k_neg, k_pos = int(zeta * len(neg)), int(zeta * len(pos))
    return {k for _, k in neg[len(neg) - k_neg:]} | {k for _, k in pos[:k_pos]}


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_set_scheduler_remaps_optimizer_state(opt_name):
    net, opt = _trained_net(opt_name)
    before = _snapshot(net, opt)
    rewired = SETScheduler(net, opt, zeta=0.3, seed=0).step()
    layers = [m for m in net.modules() if isinstance(m, SparseLinear)]
    total = 0
    for m, (conn, other, old_param) in zip(layers, before, strict=True):
        assert m.nnz == len(conn)  # exact connection count
        removed = _brute_force_removed(conn, 0.3)
        total += len(removed)
        survivors = set(conn) - removed
        keys = [int(k) for k in m.keys()]
        assert len(set(keys)) == len(keys) and survivors <= set(keys)
        # The new parameter replaced the old one in the optimizer, which holds its state.
        params = [p for g in opt.param_groups for p in g["params"]]
        assert any(p is m.values for p in params) and not any(p is old_param for p in params)
        assert old_param not in opt.state
        st = opt.state[m.values]
        values = m.values.detach()
        for i, k in enumerate(keys):
            if k in survivors:
                value, state = conn[k]
                assert float(values[i]) == value
                assert {n: float(st[n][i]) for n in state} == state
            else:  # regrown: value and moments zero
                assert float(values[i]) == 0.0
                assert all(float(st[n][i]) == 0.0 for n in conn[next(iter(conn))][1])
        for n, v in other.items():  # Adam's step count is kept
            assert torch.equal(st[n], v)
        # the index buffers are a valid layer for the kernels
        m.to_core().check()
    assert rewired == total
    # Training goes on with the new tensors.
    opt.zero_grad()
    nn.functional.cross_entropy(net(torch.randn(8, 40)), torch.randint(0, 5, (8,))).backward()
    opt.step()


def test_importance_pruning_deletes_weak_neurons_inputs():
    net, opt = _trained_net("sgd")
    layers = [m for m in net.modules() if isinstance(m, SparseLinear)]
    before = [(m.nnz, m.to_core()) for m in layers]
    pruned = ImportancePruning(net, opt, percentile=20.0).step()
    assert len(pruned) == 2 and all(p > 0 for p in pruned)
    for m, (nnz, core) in zip(layers[:2], before[:2], strict=True):
        imp = np.bincount(core.row_cols, weights=np.abs(core.data), minlength=core.n_out)
        weak = imp <= np.percentile(imp, 20.0)
        cols = m.row_cols.numpy()
        assert not weak[cols].any()  # pruned neurons have no incoming connection
        assert m.nnz == nnz - int(weak[core.row_cols].sum())
        assert opt.state[m.values]["momentum_buffer"].shape == (m.nnz,)
    assert layers[2].nnz == before[2][0]  # the output layer is not pruned


def test_state_dict_round_trip_after_evolution(tmp_path):
    net, opt = _trained_net("adam")
    SETScheduler(net, opt, seed=1).step()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    fresh, _ = _trained_net("sgd", seed=5)  # other topology, other connection counts
    fresh.load_state_dict(torch.load(path))
    x = torch.randn(50, 40)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


@pytest.mark.parametrize("activation", ["all-relu", "srelu", "leaky-relu", "relu", "sigmoid"])
def test_sparse_mlp_torch_round_trip(activation):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((70, 25)).astype(np.float32) * 3 + 1
    model = SparseMLP.create([25, 40, 30, 6], epsilon=5.0, rng=rng, activation=activation,
                             alpha=0.4, input_mean=X.mean(0), input_std=X.std(0))
    seq = to_sequential(model).eval()
    with torch.no_grad():
        out = seq(torch.as_tensor(X)).numpy()
    ours = model.decision_function(X)
    np.testing.assert_allclose(out, ours, rtol=1e-5, atol=1e-5)
    assert np.array_equal(out.argmax(1), ours.argmax(1))
    back = from_torch(seq)
    assert (back.activation, back.dropout) == (model.activation, model.dropout)
    assert back.slopes() == model.slopes()
    assert np.array_equal(back.decision_function(X), ours)


def test_import_sparsetrain_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import sparsetrain, sparsetrain.interop; "
            "assert 'sparsetrain.torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trained_sequential_converts_back_with_same_predictions():
    """Train the converted model in PyTorch (SGD steps, a SET step), take it back: the
    SparseMLP predicts what the module predicts."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((64, 25)).astype(np.float32)
    y = rng.integers(0, 6, 64)
    model = SparseMLP.create([25, 40, 30, 6], epsilon=5.0, rng=rng, dropout=0.2)
    seq = to_sequential(model)
    opt = torch.optim.SGD(seq.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(seq(torch.as_tensor(X)), torch.as_tensor(y)).backward()
        opt.step()
    SETScheduler(seq, opt, seed=0).step()
    back = from_torch(seq.eval())
    assert back.dropout == 0.2 and back.n_connections == model.n_connections
    with torch.no_grad():
        out = seq(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(back.decision_function(X), out, rtol=1e-5, atol=1e-5)
    assert np.array_equal(back.predict(X), out.argmax(1))


def test_from_torch_reads_unfused_modules():
    """SparseLinear, AllReLU and nn.Dropout as separate modules convert as the fused form."""
    l1 = SparseLinear(12, 20, epsilon=4.0, seed=0)
    l2 = SparseLinear(20, 3, epsilon=4.0, seed=1, allow_dense=True)
    seq = nn.Sequential(l1, AllReLU(0.3, 1), nn.Dropout(0.1), l2).eval()
    back = from_torch(seq)
    assert (back.activation, back.alpha, back.dropout) == ("all-relu", 0.3, 0.1)
    X = np.random.default_rng(0).standard_normal((32, 12)).astype(np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(back.decision_function(X), seq(torch.as_tensor(X)).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_set_scheduler_leaves_fully_connected_layers_alone():
    net = nn.Sequential(SparseLinear(20, 30, epsilon=4.0, seed=0),
                        SparseLinear(30, 4, epsilon=20.0, allow_dense=True, seed=1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    out_values = net[1].values
    SETScheduler(net, opt, seed=0, evolve_output=True).step()
    assert net[1].values is out_values
