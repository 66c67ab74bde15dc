"""FBGEMM TBE vs the nn.EmbeddingBag fallback: same forward, same gradients (exact SGD with lr 1 exposes them),
same updated weights after several fused-optimizer steps, for every optimizer and pooling mode."""

from __future__ import annotations

import pytest
import torch

from recsparse.kernels import OPTIMIZERS, EmbeddingBagTables, FusedTBE, TBEConfig, make_tables

ROWS, DIMS, B = [50, 30, 7], [8, 4, 16], 6


def _batch(seed: int, index_dtype=torch.int64):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, 5, (len(ROWS) * B,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    idx = torch.cat([torch.randint(0, r, (int(lens[t * B:(t + 1) * B].sum()),), generator=g)
                     for t, r in enumerate(ROWS)])
    return idx.to(index_dtype), offsets.to(index_dtype)


def _pair(cfg: TBEConfig):
    a, b = FusedTBE(ROWS, DIMS, cfg), EmbeddingBagTables(ROWS, DIMS, cfg)
    g = torch.Generator().manual_seed(0)
    for t in range(len(ROWS)):
        w = torch.randn(ROWS[t], DIMS[t], generator=g)
        a.set_weights(t, w)
        b.set_weights(t, w)
    return a, b


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_tbe_matches_fallback_over_steps(optimizer, pooling):
    a, b = _pair(TBEConfig(optimizer=optimizer, learning_rate=0.1, pooling=pooling))
    for step in range(4):
        idx, off = _batch(step)
        oa, ob = a(idx, off), b(idx, off)
        torch.testing.assert_close(oa, ob, rtol=1e-5, atol=1e-5)
        target = torch.randn(oa.shape, generator=torch.Generator().manual_seed(100 + step))
        (oa * target).sum().backward()
        (ob * target).sum().backward()
        b.step()
        for t in range(len(ROWS)):
            torch.testing.assert_close(a.weights(t), b.weights(t).detach(), rtol=1e-5, atol=1e-5)
    # the weights really moved
    assert not torch.allclose(a.weights(0), _pair(TBEConfig())[0].weights(0))


@pytest.mark.parametrize("optimizer", ["sgd", "rowwise_adagrad"])
def test_table_groups_run_in_parallel_with_identical_numerics(optimizer):
    one = FusedTBE(ROWS, DIMS, TBEConfig(optimizer=optimizer, learning_rate=0.1))
    two = FusedTBE(ROWS, DIMS, TBEConfig(optimizer=optimizer, learning_rate=0.1, table_groups=2, bounds_check=False))
    assert len(two.groups) == 2 and two.bounds[0][0] == 0 and two.bounds[-1][1] == len(ROWS)
    g = torch.Generator().manual_seed(0)
    for t in range(len(ROWS)):
        w = torch.randn(ROWS[t], DIMS[t], generator=g)
        one.set_weights(t, w)
        two.set_weights(t, w)
    for step in range(3):
        idx, off = _batch(step)
        o1, o2 = one(idx, off), two(idx, off)
        torch.testing.assert_close(o1, o2)
        target = torch.randn(o1.shape, generator=torch.Generator().manual_seed(step))
        (o1 * target).sum().backward()
        (o2 * target).sum().backward()
        for t in range(len(ROWS)):
            torch.testing.assert_close(one.weights(t), two.weights(t))
    assert not torch.allclose(one.weights(0), _pair(TBEConfig())[0].weights(0))
    with torch.no_grad():  # inference path (no autograd Function)
        torch.testing.assert_close(one(idx, off), two(idx, off))


def test_gradient_agreement_via_exact_sgd():
    a, b = _pair(TBEConfig(optimizer="sgd", learning_rate=1.0))
    before = [a.weights(t).clone() for t in range(len(ROWS))]
    idx, off = _batch(7)
    target = torch.randn(B, sum(DIMS), generator=torch.Generator().manual_seed(1))
    (a(idx, off) * target).sum().backward()
    (b(idx, off) * target).sum().backward()
    for t in range(len(ROWS)):
        grad = b.bags[t].weight.grad.to_dense()
        torch.testing.assert_close(before[t] - a.weights(t), grad, rtol=1e-5, atol=1e-6)
        assert grad.abs().sum() > 0 or t == 2


def test_int32_indices_same_result():
    a = FusedTBE(ROWS, DIMS, TBEConfig(index_dtype=torch.int32))
    c = FusedTBE(ROWS, DIMS, TBEConfig())
    for t in range(len(ROWS)):
        c.set_weights(t, a.weights(t))
    idx, off = _batch(3)
    torch.testing.assert_close(a(idx, off), c(idx, off))


def test_fp16_weights_close():
    a = FusedTBE(ROWS, DIMS, TBEConfig(weights_precision="fp16"))
    c = FusedTBE(ROWS, DIMS, TBEConfig())
    g = torch.Generator().manual_seed(5)
    for t in range(len(ROWS)):
        w = torch.randn(ROWS[t], DIMS[t], generator=g)
        a.set_weights(t, w)
        c.set_weights(t, w)
    assert a.weights(0).dtype == torch.float16
    idx, off = _batch(4)
    torch.testing.assert_close(a(idx, off), c(idx, off), rtol=1e-2, atol=1e-2)


def test_make_tables_and_validation():
    assert isinstance(make_tables(ROWS, DIMS, backend="auto"), FusedTBE)
    assert isinstance(make_tables(ROWS, DIMS, backend="torch"), EmbeddingBagTables)
    with pytest.raises(ValueError, match="backend"):
        make_tables(ROWS, DIMS, backend="gpu")
    with pytest.raises(ValueError, match="optimizer"):
        TBEConfig(optimizer="adam")
    with pytest.raises(ValueError, match="learning_rate"):
        TBEConfig(learning_rate=0)
    with pytest.raises(ValueError, match="same length"):
        FusedTBE([1, 2], [4])


def test_weight_views_follow_the_kernel_buffers():
    """weights(t) views are cached, but always alias the kernel's current storage: a deep copy's views write its own
    buffer, and after a training step the cached view shows the updated rows."""
    import copy

    tbe = FusedTBE([50, 30], [8, 4], TBEConfig(learning_rate=0.5))
    v = tbe.weights(1)
    assert v.shape == (30, 4) and tbe.weights(1) is v  # cached
    twin = copy.deepcopy(tbe)
    twin.weights(1).fill_(7.0)
    assert not torch.equal(tbe.weights(1), twin.weights(1))
    before = v.clone()
    idx, off = torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2, 3, 3])  # T=2, B=2
    tbe(idx, off).sum().backward()
    assert not torch.equal(tbe.weights(1), before) and torch.equal(v, tbe.weights(1))
    tbe.float()  # any _apply drops the cache
    assert tbe._views == {}


@pytest.mark.parametrize("pooling", ["sum", "mean"])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_no_grad_forward_is_the_kernel_forward(pooling, index_dtype):
    """No-grad host fp32 forward (ATen embedding_bag over the kernel's storage) == the TBE kernel's own forward,
    empty bags included, for one and for two table groups."""
    for groups in (1, 2):
        a, _ = _pair(TBEConfig(pooling=pooling, index_dtype=index_dtype, table_groups=groups, bounds_check=False))
        for step in range(3):
            idx, off = _batch(step, index_dtype)
            assert (off[1:] == off[:-1]).any()  # some empty bags
            kernel = a(idx, off)  # grad enabled: the FBGEMM kernel
            with torch.no_grad():
                torch.testing.assert_close(a(idx, off), kernel.detach(), rtol=1e-6, atol=1e-6)


def test_lookup_with_and_without_grad():
    """lookup(t, rows [N, k]) = sum of the k rows of table t; with grad it is one kernel call whose backward is the
    fused update of exactly those rows; without grad a gather from the kernel's storage."""
    for groups in (1, 3):
        a, _ = _pair(TBEConfig(optimizer="sgd", learning_rate=1.0, table_groups=groups, bounds_check=False))
        w0 = [a.weights(t).clone() for t in range(len(ROWS))]
        rows = torch.tensor([[1, 4], [4, 4], [0, 6]])
        expect = w0[2][rows].sum(dim=1)
        with torch.no_grad():
            torch.testing.assert_close(a.lookup(2, rows), expect)
            torch.testing.assert_close(a.lookup(2, rows[:, :1]), w0[2][rows[:, 0]])
        out = a.lookup(2, rows)
        torch.testing.assert_close(out.detach(), expect)
        out.sum().backward()  # d/dw of each row = number of times it occurs; exact SGD with lr 1
        counts = torch.bincount(rows.reshape(-1), minlength=ROWS[2]).float().unsqueeze(1)
        torch.testing.assert_close(a.weights(2), w0[2] - counts)
        for t in (0, 1):
            assert torch.equal(a.weights(t), w0[t])  # other tables untouched
