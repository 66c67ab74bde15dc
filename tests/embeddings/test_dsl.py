"""Dynamic sparse learning: cosine schedule values, masks exactly zero and at density through optimizer steps (Adam
moments included), prune/grow counts and criteria per update, fbgemm rejected, one-shot magnitude masks, and the CSR
export round trip (rows, embed, pooled forward, save/load) on real Gowalla ids."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchrec import KeyedJaggedTensor

from recsparse.embeddings import FeatureConfig, MappedEmbeddingBagCollection
from recsparse.embeddings.dsl import DSLConfig, DynamicSparsity, magnitude_masks, update_ratio
from recsparse.embeddings.sparse import SparseEmbeddingTables, export_sparse
from recsparse.errors import ConfigError
from tests.pipelines.conftest import gowalla_small  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def test_cosine_schedule_values():
    r0, rf, T = 0.5, 0.005, 1000
    assert update_ratio(0, T, r0, rf) == pytest.approx(0.5)
    assert update_ratio(T // 2, T, r0, rf) == pytest.approx((0.5 + 0.005) / 2)
    assert update_ratio(T // 4, T, r0, rf) == pytest.approx(rf + 0.5 * (r0 - rf) * (1 + math.cos(math.pi / 4)))
    assert update_ratio(T, T, r0, rf) == pytest.approx(0.005)
    assert update_ratio(2 * T, T, r0, rf) == pytest.approx(0.005)  # clamped past the horizon
    vals = [update_ratio(t, T, r0, rf) for t in range(0, T + 1, 50)]
    assert all(a > b for a, b in zip(vals, vals[1:]))  # strictly decreasing
    assert update_ratio(700, T, 0.3, 0.01, "constant") == 0.3


def test_config_validation():
    c = DSLConfig()
    assert (c.density, c.interval, c.ratio, c.ratio_final, c.schedule) == (0.5, 3000, 0.5, 0.005, "cosine")
    for bad, field in [(dict(density=0.0), "density"), (dict(density=1.5), "density"),
                       (dict(interval=0), "interval"), (dict(interval=2.5), "interval"),
                       (dict(ratio=1.2), "ratio"), (dict(schedule="linear"), "schedule"),
                       (dict(density="half"), "density"), (dict(end=0), "end"), (dict(scope="column"), "scope")]:
        with pytest.raises(ConfigError, match=field):
            DSLConfig(**bad)


def _tables(gowalla, backend="torch", dim=16):
    return MappedEmbeddingBagCollection([FeatureConfig("user", gowalla.num_users, dim),
                                         FeatureConfig("item", gowalla.num_items, dim)],
                                        backend=backend, init_std=0.1, seed=0)


def _batches(gowalla, n, size=1024):
    tr = gowalla.train.sample(n * size, seed=1)
    u = torch.tensor(tr["user_id"].to_numpy()).view(n, size)
    i = torch.tensor(tr["item_id"].to_numpy()).view(n, size)
    return list(zip(u, i))


def _loss(t, users, items):
    eu, ei = t.embed("user", users), t.embed("item", items)
    neg = t.embed("item", torch.roll(items, 1))
    return -torch.nn.functional.logsigmoid((eu * ei).sum(-1) - (eu * neg).sum(-1)).mean()


OPTIMIZERS = {
    "adam_wd": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
}


@pytest.mark.parametrize("backend", ["torch", "torchrec"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_masks_stay_exactly_zero_and_at_density(gowalla, backend, opt_name):
    t = _tables(gowalla, backend)
    steps = 12
    dsl = DynamicSparsity(t, DSLConfig(density=0.2, interval=3, ratio=0.5, ratio_final=0.05), total_steps=steps)
    opt = OPTIMIZERS[opt_name](t.parameters())
    counts = {n: int(m.sum()) for n, m in dsl.masks.items()}
    for n, m in dsl.masks.items():
        assert counts[n] == round(0.2 * m.numel())
    for users, items in _batches(gowalla, steps):
        opt.zero_grad()
        _loss(t, users, items).backward()
        dsl.before_step(opt)
        opt.step()
        # the invariant holds right after the optimizer step (nothing re-masks the weights)
        for n, w in dsl.params.items():
            mask = dsl.masks[n]
            assert int(mask.sum()) == counts[n]  # density is constant through updates
            assert torch.count_nonzero(w.detach()[~mask]) == 0
            for v in opt.state[w].values():  # Adam moments, momentum buffers, Adagrad sums
                if isinstance(v, torch.Tensor) and v.shape == w.shape:
                    assert torch.count_nonzero(v[~mask]) == 0
    assert len(dsl.history) == 3  # updates at steps 3, 6, 9 (none at the last step)
    # the weights that stayed active were trained
    w = dsl.params["t_item"].detach()
    assert torch.count_nonzero(w) > 0.9 * counts["t_item"] * 0.5


def _observed_step(t, dsl, opt, users, items, gsum):
    """Backward, then ``dsl.before_step``; returns its entry and the masks and weights it started from, and adds the
    step's gradients to ``gsum`` (the test's own copy of the regrowth score)."""
    opt.zero_grad()
    _loss(t, users, items).backward()
    before = {n: m.clone() for n, m in dsl.masks.items()}
    weights = {n: w.detach().clone() for n, w in dsl.params.items()}
    for n, w in dsl.params.items():
        gsum[n] += w.grad
    return dsl.before_step(opt), before, weights


def test_prune_grow_counts_and_criteria(gowalla):
    """Every 2nd step: round(ratio_t · active) pruned (smallest |w|) and as many regrown (largest |gradient summed
    over the interval|, zero-initialised); the cosine runs over the first end=0.75 of the steps, then the mask is
    frozen."""
    t = _tables(gowalla)
    cfg = DSLConfig(density=0.3, interval=2, ratio=0.4, ratio_final=0.01, end=0.75)
    total = 12
    dsl = DynamicSparsity(t, cfg, total_steps=total)
    assert dsl.end_step == 9
    opt = torch.optim.SGD(t.parameters(), lr=0.5)
    gsum = {n: torch.zeros_like(w) for n, w in dsl.params.items()}
    last_grown: dict[str, torch.Tensor] = {}
    updates = 0
    for step, (users, items) in enumerate(_batches(gowalla, total, size=512), start=1):
        entry, before, weights = _observed_step(t, dsl, opt, users, items, gsum)
        if step % 2 or step > 9:
            assert entry is None and all(torch.equal(before[n], dsl.masks[n]) for n in before)
        else:
            updates += 1
            ratio = update_ratio(step, 9, 0.4, 0.01)
            assert entry["step"] == step and entry["ratio"] == pytest.approx(ratio)
            for n, old in before.items():
                new = dsl.masks[n]
                expect = round(ratio * int(old.sum()))
                pruned, grown = old & ~new, new & ~old
                assert entry["pruned"][n] == entry["grown"][n] == expect > 0
                assert int(pruned.sum()) == int(grown.sum()) == expect
                # pruned: the smallest |w| among the active weights
                kept = old & new
                assert weights[n][pruned].abs().max() <= weights[n][kept].abs().min()
                # grown: the largest |gradient summed since the last update| among the candidates
                cand = ~old & ~new
                assert gsum[n][grown].abs().min() >= gsum[n][cand].abs().max()
                assert torch.count_nonzero(dsl.params[n].detach()[grown]) == 0
                # pruned_fresh: pruned weights that the previous update had regrown
                fresh = int((pruned & last_grown[n]).sum()) if n in last_grown else 0
                assert entry["pruned_fresh"][n] == fresh
                last_grown[n] = grown
                gsum[n].zero_()
        opt.step()
    assert updates == len(dsl.history) == 4 and not dsl.grad_sum  # frozen after step 9, score buffers freed



def test_row_scope_keeps_every_rows_budget(gowalla):
    """scope='row': the initial mask gives each row floor/ceil of its share; an update prunes the n smallest |w| and
    regrows the n largest |summed gradient| inside every row the interval touched (rows it did not touch keep their
    mask); per-row counts never change; Adam keeps the masked weights at exactly zero."""
    t = _tables(gowalla)
    cfg = DSLConfig(density=0.25, interval=3, ratio=0.5, ratio_final=0.3, end=1.0, scope="row")
    dsl = DynamicSparsity(t, cfg, total_steps=10)
    counts0 = {n: m.sum(dim=1) for n, m in dsl.masks.items()}
    for n, c in counts0.items():
        assert int(c.sum()) == round(0.25 * dsl.masks[n].numel()) and int(c.max() - c.min()) <= 1
    opt = torch.optim.Adam(t.parameters(), lr=0.05)
    gsum = {n: torch.zeros_like(w) for n, w in dsl.params.items()}
    updates = 0
    for step, (users, items) in enumerate(_batches(gowalla, 9, size=64), start=1):
        entry, before, weights = _observed_step(t, dsl, opt, users, items, gsum)
        if entry is not None:
            updates += 1
            for n, old in before.items():
                new = dsl.masks[n]
                assert torch.equal(new.sum(dim=1), counts0[n])
                touched = (gsum[n] != 0).any(dim=1)
                assert torch.equal(old[~touched], new[~touched]) and bool(touched.any()) and not bool(touched.all())
                k = round(entry["ratio"] * float(counts0[n].float().mean()))
                assert entry["pruned"][n] == entry["grown"][n] == k * int(touched.sum()) > 0
                for r in touched.nonzero().squeeze(1)[:50].tolist():
                    pruned, grown, kept = old[r] & ~new[r], new[r] & ~old[r], old[r] & new[r]
                    assert int(pruned.sum()) == int(grown.sum()) == k
                    assert weights[n][r][pruned].abs().max() <= weights[n][r][kept].abs().min()
                    cand = ~old[r] & ~new[r]
                    assert gsum[n][r][grown].abs().min() >= gsum[n][r][cand].abs().max()
                    assert torch.count_nonzero(dsl.params[n].detach()[r][grown]) == 0
                gsum[n].zero_()
        opt.step()
        for n, w in dsl.params.items():
            assert torch.count_nonzero(w.detach()[~dsl.masks[n]]) == 0
    assert updates == 3

def test_fbgemm_backend_is_rejected_with_reason():
    t = MappedEmbeddingBagCollection([FeatureConfig("a", 100, 8)], backend="fbgemm")
    with pytest.raises(ConfigError, match="fbgemm.*never materialises the gradient"):
        DynamicSparsity(t, DSLConfig(), total_steps=10)
    with pytest.warns(UserWarning, match="interval=3000 exceeds the run's 10 optimizer steps"):
        DynamicSparsity(MappedEmbeddingBagCollection([FeatureConfig("a", 100, 8)], backend="torch"), DSLConfig(), 10)


def test_state_round_trip_restores_masks(gowalla):
    t = _tables(gowalla)
    a = DynamicSparsity(t, DSLConfig(density=0.1, interval=2, seed=3), total_steps=10)
    b = DynamicSparsity(_tables(gowalla), DSLConfig(density=0.1, interval=2, seed=4), total_steps=10)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    with pytest.raises(ConfigError, match="masks tables"):
        b.load_state_dict({**a.state_dict(), "masks": {"t_user": a.masks["t_user"]}})


def test_magnitude_masks_keep_the_largest(gowalla):
    t = _tables(gowalla)
    masks = magnitude_masks(t, 0.1)
    for n, m in masks.items():
        w = dict(zip(t.table_names, [t.table_weight("user"), t.table_weight("item")]))[n].detach()
        assert int(m.sum()) == round(0.1 * m.numel())
        assert w[m].abs().min() >= w[~m].abs().max()


@pytest.mark.parametrize("density", [0.05, 0.5])
def test_sparse_export_round_trip_equals_dense_masked_table(gowalla, tmp_path, density):
    t = MappedEmbeddingBagCollection([FeatureConfig("user", gowalla.num_users, 64),
                                      FeatureConfig("item", gowalla.num_items, 32, "qr", num_rows=2000,
                                                    pooling="mean")], backend="torch", init_std=0.1, seed=0)
    dsl = DynamicSparsity(t, DSLConfig(density=density, interval=1), total_steps=5)
    sp = export_sparse(t, dsl.masks)
    for f in t.features:  # every row, read back from the CSR buffers
        dense = t.table_weight(f.name).detach() * dsl.masks[f.table_name]
        assert torch.equal(sp.dense_weight(f.name), dense)
    nnz = sum(int(m.sum()) for m in dsl.masks.values())
    assert sp.nnz() == nnz
    # bytes: values fp32 + uint8 column ids + int32 row pointers (+ mapper state: none for full-identity / qr)
    rows = [t.mapper("user").num_rows, t.mapper("item").num_rows]
    mapper_state = sum(f.mapper.num_bytes_state for f in t.features)
    assert sp.num_bytes() == nnz * (4 + 1) + sum(4 * (r + 1) for r in rows) + mapper_state
    tr = gowalla.train.sample(300, seed=0)
    u, i = torch.tensor(tr["user_id"].to_numpy()), torch.tensor(tr["item_id"].to_numpy())
    torch.testing.assert_close(sp.embed("user", u), t.embed("user", u).detach(), rtol=0, atol=0)
    torch.testing.assert_close(sp.embed("item", i), t.embed("item", i).detach())
    # batch of 80: item bags of 5 ids (then empty bags, mean pooling), user bags of 1 id (then empty)
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["item", "user"], values=torch.cat([i[:200], u[:60]]),
                                              lengths=torch.tensor([5] * 40 + [0] * 40 + [1] * 60 + [0] * 20))
    torch.testing.assert_close(sp(kjt).values(), t(kjt).values().detach())
    path = tmp_path / "table.pt"
    sp.save(path)
    back = SparseEmbeddingTables.load(path)
    assert back.num_bytes() == sp.num_bytes()
    torch.testing.assert_close(back.embed("item", i), sp.embed("item", i), rtol=0, atol=0)


def test_sparse_artefact_is_validated(gowalla):
    t = _tables(gowalla, dim=8)
    art = export_sparse(t, magnitude_masks(t, 0.2)).artefact()
    art["tables"]["t_item"]["indices"] = art["tables"]["t_item"]["indices"] + 200  # columns past dim 8
    from recsparse.embeddings.mappers import MapperStateError

    with pytest.raises(MapperStateError, match="inconsistent CSR"):
        SparseEmbeddingTables.from_artefact(art)
    with pytest.raises(MapperStateError, match="not a recsparse sparse-table artefact"):
        SparseEmbeddingTables.from_artefact({"format": "x"})


def test_model_dsl_config_trains_mf_end_to_end(gowalla_small, tmp_path):  # noqa: F811
    """``model.dsl.*`` switches DSL on for `recsparse train`: the trained tables hold exactly the density, the
    reported bytes are the CSR artefact's, the masks travel in the checkpoint; bad combinations name the field."""
    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.train import run

    cfg_path = REPO / "configs" / "gowalla_mf.yaml"
    common = [f"data.dataset={gowalla_small}", "model.dim=8", "trainer.batch_size=256", "trainer.max_epochs=2",
              "loss.num_uniform_negatives=32", "trainer.progress_bar=false", f"trainer.output_dir={tmp_path}/run"]
    cfg = load_config(cfg_path, [*common, "model.dsl.density=0.25", "model.dsl.interval=3", "model.dsl.ratio=0.3"])
    assert cfg.model.dsl == DSLConfig(density=0.25, interval=3, ratio=0.3)
    rec = run(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if "DynamicSparsity" in k)
    assert state["step"] > 3 and len(state["history"]) >= 1
    for name, mask in state["masks"].items():
        w = ckpt["state_dict"][f"model.tables.bags.{name}.weight"]
        assert int(mask.sum()) == round(0.25 * mask.numel()) and torch.count_nonzero(w[~mask]) == 0
    assert rec["nnz"] <= sum(int(m.sum()) for m in state["masks"].values()) and rec["bytes"] < rec["dense_bytes"]
    for bad, msg in [(["model.backend=fbgemm"], "model.dsl does not run on model.backend=fbgemm"),
                     (["model.dsl.density=1.5"], "model.dsl.density must be in"),
                     (["model.dsl.interval=0.5"], "model.dsl.interval"),
                     (["model.dsl.sparsity=0.5"], "model.dsl.sparsity")]:
        with pytest.raises(ConfigError, match=msg):
            load_config(cfg_path, [*common, "model.dsl.density=0.2", *bad])
