"""2 CPU processes (gloo): a MappedEmbeddingBagCollection sharded table-wise and row-wise by TorchRec DMP gives the
same forward as the unsharded module, and the same weights after one fused-SGD step (TorchRec averages embedding
gradients over ranks, so the reference step uses the mean of the two ranks' losses)."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

LR = 0.5


def _features():
    from recsparse.embeddings import FeatureConfig

    return [FeatureConfig("user", 200, 8, "full"),
            FeatureConfig("item", 5000, 8, "universal", num_rows=97, mapper_kwargs={"num_hashes": 2, "seed": 1}),
            FeatureConfig("cat", 10**6, 4, "qr", num_rows=60, pooling="mean")]


def _batch(rank: int):
    from torchrec import KeyedJaggedTensor

    g = torch.Generator().manual_seed(10 + rank)
    lengths = torch.randint(0, 4, (3 * 5,), generator=g)
    values = torch.randint(-50, 10**6, (int(lengths.sum()),), generator=g)
    return KeyedJaggedTensor.from_lengths_sync(keys=["user", "item", "cat"], values=values, lengths=lengths)


def _worker(rank: int, world: int, port: int, plan: str, out_dir: str) -> None:
    import torch.distributed as dist

    from recsparse.embeddings import MappedEmbeddingBagCollection
    from recsparse.embeddings.sharding import load_full_weights, local_shards, shard_model

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        ref = MappedEmbeddingBagCollection(_features(), backend="torchrec", seed=0)
        full = {k: v.detach().clone() for k, v in ref.state_dict().items() if k.endswith(".weight")}
        dmp = shard_model(MappedEmbeddingBagCollection(_features(), backend="torchrec", seed=123), plan=plan,
                          device=torch.device("cpu"), optimizer="sgd", learning_rate=LR)
        assert load_full_weights(dmp, full) >= 1
        out = dmp(_batch(rank)).values()
        emb = dmp.module.embed("item", torch.arange(rank, 40, 3)) if hasattr(dmp, "module") else None
        out.pow(2).sum().backward()
        torch.save({"out": out.detach(), "emb": None if emb is None else emb.detach(), "shards": local_shards(dmp),
                    "full": full}, os.path.join(out_dir, f"{plan}-{rank}.pt"))
        # the backward's all-to-all can still be in flight on the other rank: tearing the group down under it
        # aborts the process ("terminate called without an active exception", ~1 run in 10)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("plan", ["table_wise", "row_wise"])
def test_sharded_equals_unsharded(plan, tmp_path):
    from recsparse.embeddings import MappedEmbeddingBagCollection

    mp.spawn(_worker, args=(2, _free_port(), plan, str(tmp_path)), nprocs=2, join=True)
    ref = MappedEmbeddingBagCollection(_features(), backend="torchrec", seed=0)
    results = [torch.load(tmp_path / f"{plan}-{r}.pt", weights_only=True) for r in range(2)]
    outs = [ref(_batch(r)).values() for r in range(2)]
    for r in range(2):
        torch.testing.assert_close(results[r]["out"], outs[r].detach())  # forward
        if results[r]["emb"] is not None:
            torch.testing.assert_close(results[r]["emb"], ref.embed("item", torch.arange(r, 40, 3)).detach())
    # reference step: SGD on the mean of both ranks' losses
    (sum(o.pow(2).sum() for o in outs) / 2).backward()
    expected = {k: v - LR * dict(ref.named_parameters())[k].grad for k, v in results[0]["full"].items()}
    covered = {k: 0 for k in expected}
    for r in range(2):
        for name, shards in results[r]["shards"].items():
            for (r0, c0), t in shards:
                torch.testing.assert_close(t, expected[name][r0:r0 + t.shape[0], c0:c0 + t.shape[1]])
                covered[name] += t.numel()
    assert covered == {k: v.numel() for k, v in expected.items()}  # every row checked exactly once
    if plan == "row_wise":
        assert all(len(s) == 1 and s[0][1].shape[0] < expected[n].shape[0]
                   for n, s in results[0]["shards"].items())  # really split by rows
