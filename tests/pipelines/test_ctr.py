"""The CTR task of the training pipeline: trains on real adult through ``run()``, AUC/logloss from torchmetrics equal
sklearn's, budgets, batch slicing over ranks, typed config sections."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsparse.errors import ConfigError
from recsparse.config import build
from recsparse.pipelines.config import CTRConfig
from recsparse.pipelines.ctr import CTRModule, budget_spec, fit_ctr, local_ctr_batch, prepare
from tests.conftest import dataset_path


@pytest.fixture(scope="module")
def adult():
    dataset_path("adult")
    from dataclasses import replace

    from recsparse.data.ctr import load_ctr

    ds = load_ctr("adult")
    # a real slice keeps the test fast: 6k train, 2k valid, 4k test rows
    return replace(ds, train=ds.train.head(6000), valid=ds.valid.head(2000), test=ds.test.head(4000))


def ctr_config(**sections) -> CTRConfig:
    return build(CTRConfig, sections)


def test_fit_ctr_learns_adult_and_reports_the_record(adult):
    rec = fit_ctr(ctr_config(data={"dataset": "adult"}, model={"name": "dcn_v2"},
                             trainer={"max_epochs": 2, "batch_size": 512}), adult)
    assert rec["test_auc"] > 0.85  # income is predictable from these fields (full data: ~.90)
    assert 0 < rec["test_logloss"] < 0.5
    assert rec["epochs"] == 2 and rec["train_examples_per_s"] > 0 and rec["table_bytes"] > 0
    assert "adult.train.csv" in rec["split"]


def test_metrics_match_sklearn(adult):
    from sklearn.metrics import log_loss, roc_auc_score

    from recsparse.models.ctr import build_ctr_model

    fitted = adult.spec.fit(adult.train)
    model = build_ctr_model("wide_deep", fitted, dim=4)
    module = CTRModule(model)
    data = fitted.encode(adult.test)
    for b in data.batches(700):
        module._eval("test", b)
    module.log = lambda *a, **k: None  # outside a Trainer
    module._eval_end("test")
    with torch.no_grad():
        b = data.batch()
        p = torch.sigmoid(model(b.sparse, b.dense)).numpy()
    y = b.label.numpy()
    assert module.last_metrics["test"]["auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert module.last_metrics["test"]["logloss"] == pytest.approx(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7)),
                                                                   abs=1e-4)


def test_budget_spec_sizes_tables(adult):
    full = adult.spec.fit(adult.train)
    rows = full.table_rows()
    uni = budget_spec(adult.spec, rows, "unified", 0.25)
    assert uni.unified_rows == int(np.ceil(0.25 * sum(rows.values())))
    mod = budget_spec(adult.spec, rows, "modulo", 0.5).fit(adult.train)
    for k, r in mod.table_rows().items():
        assert r == int(np.ceil(0.5 * rows[k]))


def test_unified_chunks_reach_the_fitted_spec_from_the_config(adult):
    cfg = ctr_config(data={"dataset": "adult"}, model={"mapper": "unified", "budget": 0.25, "unified_chunks": 4})
    _, fitted = prepare(cfg, adult)
    assert fitted.spec.unified_chunks == 4
    full_rows = sum(adult.spec.fit(adult.train).table_rows().values())
    assert fitted.spec.unified_rows == int(np.ceil(0.25 * full_rows))
    _, one = prepare(ctr_config(data={"dataset": "adult"}, model={"mapper": "unified", "budget": 0.25}), adult)
    assert one.spec.unified_chunks == 1


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="model.budget must be in"):
        ctr_config(model={"budget": 0})
    with pytest.raises(ConfigError, match="model.name must be one of"):
        ctr_config(model={"name": "nope"})
    with pytest.raises(ConfigError, match="data.dataset must be one of"):
        ctr_config(data={"dataset": "criteo-nope"})
    with pytest.raises(ConfigError, match="model.backend=fbgemm is not wired"):
        ctr_config(model={"backend": "fbgemm"})
    with pytest.raises(ConfigError, match="model.unified_chunks=2 needs model.mapper=unified"):
        ctr_config(model={"unified_chunks": 2})
    with pytest.raises(ConfigError, match="must divide model.dim=16"):
        ctr_config(model={"mapper": "unified", "unified_chunks": 3})
    # the CTR trainer is the pipeline's trainer section, with CTR defaults
    t = ctr_config().trainer
    assert (t.batch_size, t.patience, t.num_threads, t.strategy, t.devices) == (1024, 2, 1, "auto", 1)


def test_local_ctr_batch_slices_rows_of_a_real_batch(adult):
    fitted = adult.spec.fit(adult.train)
    batch = fitted.encode(adult.train).batch(torch.arange(7))  # odd: the slices differ by one row
    parts = [local_ctr_batch(batch, r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [4, 3]
    assert torch.equal(torch.cat([p.dense for p in parts]), batch.dense)
    assert torch.equal(torch.cat([p.label for p in parts]), batch.label)
    full = batch.sparse.to_dict()
    for key in batch.sparse.keys():
        got = [p.sparse.to_dict()[key] for p in parts]
        assert torch.equal(torch.cat([g.lengths() for g in got]), full[key].lengths())
        assert torch.equal(torch.cat([g.values() for g in got]), full[key].values())
    assert local_ctr_batch(batch, 0, 1) is batch


def test_loss_ssl_from_the_config_joins_the_ctr_loss(adult):
    """``loss.ssl`` of a CTR config builds the embedding-layer SSL term over the fitted spec (CFM groups from the
    training frame), adds it to the BCE of a training step, and trains through ``run()``."""
    import lightning.pytorch as L

    from recsparse.models.ssl import EmbeddingLayerSSL
    from recsparse.pipelines.ctr import CTRData, build_ctr

    data = CTRData(*prepare(ctr_config(data={"dataset": "adult"}), adult))
    off = ctr_config(data={"dataset": "adult"}, model={"name": "deepfm", "dim": 8})
    assert build_ctr(off, data)[1].ssl is None
    on = ctr_config(data={"dataset": "adult"}, model={"name": "deepfm", "dim": 8},
                    loss={"ssl": {"augment": "cfm", "weight": 0.5, "batch_size": 128}})
    _, module = build_ctr(on, data)
    assert isinstance(module.ssl, EmbeddingLayerSSL)
    assert {id(p) for p in module.ssl.parameters()} <= {id(p) for p in module.parameters()}
    batch = data.fitted.encode(adult.train).batch(torch.arange(256))
    module.log = lambda *a, **k: None  # outside a Trainer
    module.trainer = L.Trainer(barebones=True, accelerator="cpu", devices=1)
    with_ssl = module.training_step(batch, 0)
    module.ssl = None
    assert with_ssl.item() > module.training_step(batch, 0).item()  # InfoNCE > 0 is added
    rec = fit_ctr(replace_trainer(on, max_epochs=2, batch_size=256), adult)
    assert rec["config"]["loss"]["ssl"]["weight"] == 0.5 and rec["test_auc"] > 0.8


def replace_trainer(cfg: CTRConfig, **kw) -> CTRConfig:
    from dataclasses import replace

    return replace(cfg, trainer=replace(cfg.trainer, **kw))
