"""LightGCN propagation vs a dense reference on a tiny real Gowalla graph; models read the embedding core."""

from __future__ import annotations

import torch

from recsparse.models import LightGCN, MatrixFactorization, build_cf_mappers, cf_tables, normalized_adjacency


def _dense_reference(frame, nu, ni, ego, layers):
    R = torch.zeros(nu, ni, dtype=torch.float64)
    R[torch.as_tensor(frame["user_id"].to_numpy()), torch.as_tensor(frame["item_id"].to_numpy())] = 1.0
    A = torch.zeros(nu + ni, nu + ni, dtype=torch.float64)
    A[:nu, nu:] = R
    A[nu:, :nu] = R.T
    d = A.sum(1)
    dinv = torch.where(d > 0, d.pow(-0.5), torch.zeros_like(d))
    An = dinv[:, None] * A * dinv[None, :]
    e = ego.double()
    out = [e]
    for _ in range(layers):
        e = An @ e
        out.append(e)
    return torch.stack(out).mean(0), An


def test_adjacency_is_symmetric_normalised(tiny_graph):
    f, nu, ni = tiny_graph
    adj = normalized_adjacency(f["user_id"].to_numpy(), f["item_id"].to_numpy(), nu, ni).to_dense().double()
    _, An = _dense_reference(f, nu, ni, torch.zeros(nu + ni, 1), 0)
    assert torch.allclose(adj, An, atol=1e-6)
    assert torch.allclose(adj, adj.T)


def test_propagation_matches_dense_reference(tiny_graph):
    f, nu, ni = tiny_graph
    um, im = build_cf_mappers("full", f, nu, ni)
    g = LightGCN.from_frame(cf_tables(um, im, nu, ni, 8, seed=3), f, nu, ni, num_layers=3)
    ego = g.ego()
    pu, pi = g.propagate()
    ref, An = _dense_reference(f, nu, ni, ego.detach(), 3)
    assert torch.allclose(torch.cat([pu, pi]).double(), ref, atol=1e-5)
    # gradient through the symmetric sparse product equals the dense one
    w = torch.randn(nu + ni, 8, dtype=torch.float64)
    (torch.cat([pu, pi]).double() * w).sum().backward()
    e0 = ego.detach().double().requires_grad_(True)
    M = sum(torch.linalg.matrix_power(An, k) for k in range(4)) / 4
    ((M @ e0) * w).sum().backward()
    got = g.tables.table_weight("user").grad[:nu].double()
    assert torch.allclose(got, e0.grad[:nu], atol=1e-5)


def test_hashed_nodes_share_rows_but_graph_is_unhashed(tiny_graph):
    f, nu, ni = tiny_graph
    um, im = build_cf_mappers("modulo", f, nu, ni, user_rows=5, item_rows=17)
    tables = cf_tables(um, im, nu, ni, 4, seed=0)
    g = LightGCN.from_frame(tables, f, nu, ni, num_layers=2)
    ego = g.ego()
    # layer 0: users 0 and 5 share a row; after propagation over their own neighbourhoods they differ
    assert torch.equal(ego[0], ego[5])
    pu, _ = g.propagate()
    assert not torch.allclose(pu[0], pu[5])
    ref, _ = _dense_reference(f, nu, ni, ego.detach(), 2)
    assert torch.allclose(pu.double(), ref[:nu], atol=1e-5)
    assert tables.num_rows() == {"user": 5, "item": 17}


def test_mf_scores_are_table_rows(tiny_graph):
    f, nu, ni = tiny_graph
    um, im = build_cf_mappers("full", f, nu, ni)
    mf = MatrixFactorization(cf_tables(um, im, nu, ni, 4, seed=1), nu, ni)
    u, i = torch.tensor([0, 3]), torch.tensor([2, 1])
    want = (mf.tables.table_weight("user")[u] * mf.tables.table_weight("item")[i]).sum(-1)
    assert torch.allclose(mf(u, i), want)
    cos = MatrixFactorization(mf.tables, nu, ni, normalize=True)
    assert torch.allclose(cos.user_vectors(u).norm(dim=1), torch.ones(2))
