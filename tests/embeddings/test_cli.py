"""`recsparse embeddings` sub-app: registry listing and GraphHash clustering of real Gowalla, mapper states saved."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from recsparse.cli import app
from recsparse.embeddings.mappers import cluster_bipartite, mapper_from_state


def test_mappers_lists_registry():
    r = CliRunner().invoke(app, ["embeddings", "mappers"])
    assert r.exit_code == 0, r.output
    for name in ("full", "modulo", "universal", "frequency", "qr", "graphhash", "double_graphhash"):
        assert name in r.output


def test_graphhash_command_saves_states(gowalla, tmp_path):
    out = tmp_path / "gh.pt"
    r = CliRunner().invoke(app, ["embeddings", "graphhash", "--resolution", "50", "--save", str(out)])
    assert r.exit_code == 0, r.output
    c = cluster_bipartite(gowalla.train, 50.0, 0, num_users=gowalla.num_users, num_items=gowalla.num_items)
    assert str(c.num_user_clusters) in r.output and str(c.num_item_clusters) in r.output
    states = torch.load(out, weights_only=True)
    users = mapper_from_state(states["user"])
    assert users.num_ids == gowalla.num_users and users.transform(torch.arange(10)).max() < users.num_rows


def test_graphhash_rejects_non_interaction_dataset():
    r = CliRunner().invoke(app, ["embeddings", "graphhash", "--dataset", "scifact"])
    assert r.exit_code != 0
