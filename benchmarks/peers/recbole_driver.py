"""RecBole side of ``benchmarks/peers_bench.py``; runs with the PEERS venv's python (RecBole 1.2.1), not ours.

Modes (one JSON object is written to ``--out``):

* ``train`` — RecBole's own data pipeline, model and ``Trainer`` on the pre-split atomic files
  ``<data_dir>/<dataset>/<dataset>.{train,valid,test}.inter`` (``benchmark_filename``: no re-splitting, no
  filtering). Epochs run through ``Trainer._train_epoch`` (RecBole's training loop for one epoch: its data loader,
  negative sampler, loss and optimiser); every ``--eval-every`` epochs ``Trainer.evaluate`` scores the ``valid``
  file, which the bench fills with the TEST interactions (so history masking = training items only, exactly as in
  our protocol). Stops after ``--budget-s`` seconds of training (``--budget-clock``: process CPU seconds, default,
  or wall seconds; evaluation time excluded and reported apart). ``--budget-file``: a file holding a number of
  seconds, re-read after every epoch, replaces ``--budget-s`` while training (so a budget that depends on another
  run, e.g. 3x our time to a threshold, can be set once that run is done); the budget in force is recorded.
  Saves the final state dict (``--state``) and the final user/item vectors in the ORIGINAL id order
  (``--export``, ``.npz`` with ``user [U, d]``, ``item [I, d]``) so our evaluator can re-score them.
* ``eval`` — fresh process: build the dataset, load ``--state``, time one full-ranking ``Trainer.evaluate``;
  reports seconds and the process's peak RSS.
* ``throughput`` — ``--batches`` steps of RecBole's epoch loop, timed (wall and process CPU seconds).
* ``score`` — load user/item vectors from ``--vectors`` (``.npz`` in original id order, e.g. OUR trained model's
  vectors) into a RecBole ``BPR`` model (score = inner product) and evaluate them with RecBole's evaluator.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # RecBole's own checkpoints are pickled dicts


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(args: argparse.Namespace, model_name: str):
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_logger, init_seed

    torch.set_num_threads(args.threads)
    num_items = args.num_items
    cfg = {
        "data_path": str(Path(args.data_dir)), "benchmark_filename": ["train", "valid", "test"],
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "load_col": {"inter": ["user_id", "item_id"]},
        "use_gpu": False, "show_progress": False, "state": "WARNING", "seed": args.seed,
        "checkpoint_dir": str(Path(args.work) / "saved"), "metrics": ["Recall", "NDCG"], "topk": [20],
        "valid_metric": "Recall@20", "metric_decimal_place": 6,
        "eval_args": {"group_by": "user", "order": "RO", "mode": "full"},
        # users per full-ranking batch = eval_batch_size // (items + 1): RecBole's default 4096 is ONE user per
        # batch on a 41k catalog; --eval-users makes its score block the same size as ours (1024 users)
        "eval_batch_size": args.eval_users * (num_items + 1),
    }
    if args.lr is not None:
        cfg["learning_rate"] = args.lr
    config = Config(model=model_name, dataset=args.dataset, config_dict=cfg)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    setup_s = time.perf_counter() - t0
    return config, dataset, train_data, valid_data, model, trainer, setup_s


def vectors(model) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    with torch.no_grad():
        if hasattr(model, "norm_adj_matrix"):  # LightGCN: propagated layer mean
            u, i = model.forward()
        else:  # BPR: the tables
            u, i = model.user_embedding.weight, model.item_embedding.weight
    return u.detach(), i.detach()


def to_original_order(dataset, u, i):
    """RecBole remaps tokens to 1..N (0 = padding): row r of the output is the vector of original id r."""
    import numpy as np

    out = []
    for field, mat in (("user_id", u), ("item_id", i)):
        tokens = dataset.field2id_token[field]
        orig = np.array([int(t) for t in tokens[1:]], dtype=np.int64)
        res = np.zeros((int(orig.max()) + 1, mat.shape[1]), dtype=np.float32)
        res[orig] = mat[1:].numpy()
        out.append(res)
    return out


def cmd_train(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    config, dataset, train_data, valid_data, model, trainer, setup_s = build(args, args.model)
    rec = {"peer": "recbole", "model": args.model, "setup_s": round(setup_s, 2), "threads": args.threads,
           "embedding_size": config["embedding_size"], "learning_rate": config["learning_rate"],
           "train_batch_size": config["train_batch_size"], "n_layers": config["n_layers"],
           "reg_weight": config["reg_weight"], "examples_per_epoch": len(train_data.dataset),
           "num_users": dataset.user_num - 1, "num_items": dataset.item_num - 1, "curve": [], "epochs": []}
    train_s = train_cpu_s = 0.0
    epoch = 0
    budget_s = args.budget_s
    while epoch < args.max_epochs:
        t0, c0 = time.perf_counter(), time.process_time()
        loss = trainer._train_epoch(train_data, epoch, show_progress=False)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        train_s += dt
        train_cpu_s += dc
        loss = float(sum(loss)) if isinstance(loss, tuple) else float(loss)
        rec["epochs"].append({"epoch": epoch + 1, "seconds": round(dt, 2), "cpu_seconds": round(dc, 2),
                              "loss": round(loss, 4)})
        epoch += 1
        spent = train_cpu_s if args.budget_clock == "cpu" else train_s
        budget_s = read_budget(args.budget_file, budget_s)
        rec.update(budget_s=budget_s, budget_clock=args.budget_clock)
        last = spent >= budget_s or epoch >= args.max_epochs
        if epoch % args.eval_every == 0 or last:
            t1 = time.perf_counter()
            res = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
            point = {"epoch": epoch, "train_s": round(train_s, 2), "train_cpu_s": round(train_cpu_s, 2),
                     "recall@20": float(res["recall@20"]), "ndcg@20": float(res["ndcg@20"]),
                     "eval_s": round(time.perf_counter() - t1, 2)}
            rec["curve"].append(point)
            print(json.dumps(point), flush=True)
            save(args, model, dataset)  # after every evaluation: a run stopped early still leaves its model
        rec.update(train_s=round(train_s, 2), train_cpu_s=round(train_cpu_s, 2), peak_rss_mb=round(peak_rss_mb(), 1))
        write(args.out, rec)
        if last:
            break
    rec["finished"] = True
    return rec


def read_budget(path: str | None, current: float) -> float:
    """The budget in ``path`` (one number of seconds) if that file exists, else ``current``."""
    if not path or not Path(path).is_file():
        return current
    try:
        return float(Path(path).read_text().strip())
    except ValueError:
        print(f"{path}: not a number of seconds; keeping the budget {current:.0f} s", file=sys.stderr, flush=True)
        return current


def save(args: argparse.Namespace, model, dataset) -> None:
    """The state dict (``--state``) and the vectors in original id order (``--export``), each written atomically."""
    import numpy as np
    import torch

    if args.state:
        torch.save(model.state_dict(), args.state + ".tmp")
        os.replace(args.state + ".tmp", args.state)
    if args.export:
        u, i = to_original_order(dataset, *vectors(model))
        np.savez(args.export + ".tmp.npz", user=u, item=i)
        os.replace(args.export + ".tmp.npz", args.export)


def cmd_throughput(args: argparse.Namespace) -> dict:
    """``--batches`` training steps of RecBole's own epoch loop (data loader + negative sampling + step), timed."""
    import itertools

    config, dataset, train_data, valid_data, model, trainer, setup_s = build(args, args.model)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer._train_epoch(itertools.islice(train_data, args.batches), 0, show_progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = args.batches * config["train_batch_size"]
    return {"peer": "recbole", "model": args.model, "batches": args.batches, "batch_size": config["train_batch_size"],
            "examples": n, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "examples_per_cpu_s": round(n / cpu, 1),
            "examples_per_wall_s": round(n / wall, 1), "threads": args.threads}


def cmd_eval(args: argparse.Namespace) -> dict:
    import torch

    t0 = time.perf_counter()
    config, dataset, train_data, valid_data, model, trainer, setup_s = build(args, args.model)
    trained = bool(args.state) and Path(args.state).is_file()
    if trained:  # else the initial weights: the same amount of work, only the metric values differ
        model.load_state_dict(torch.load(args.state, map_location="cpu", weights_only=True))
    load_s = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    res = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    return {"peer": "recbole", "model": args.model, "eval_s": round(time.perf_counter() - t1, 3),
            "eval_cpu_s": round(time.process_time() - c1, 3),
            "load_s": round(load_s, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "threads": args.threads,
            "weights": args.state if trained else "initial (untrained)", "eval_users_per_batch": args.eval_users, "recall@20": float(res["recall@20"]),
            "ndcg@20": float(res["ndcg@20"])}


def cmd_score(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    config, dataset, train_data, valid_data, model, trainer, setup_s = build(args, "BPR")
    v = np.load(args.vectors)
    u, i = v["user"], v["item"]
    with torch.no_grad():
        for field, table, mat in (("user_id", model.user_embedding, u), ("item_id", model.item_embedding, i)):
            tokens = dataset.field2id_token[field]
            orig = torch.tensor([int(t) for t in tokens[1:]])
            if table.weight.shape[1] != mat.shape[1]:
                table.weight = torch.nn.Parameter(torch.zeros(table.weight.shape[0], mat.shape[1]))
            table.weight[1:] = torch.from_numpy(mat)[orig]
    res = trainer.evaluate(valid_data, load_best_model=False, show_progress=False)
    return {"peer": "recbole", "mode": "score", "vectors": args.vectors, "recall@20": float(res["recall@20"]),
            "ndcg@20": float(res["ndcg@20"])}


def write(path: str, obj: dict) -> None:
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["train", "eval", "score", "throughput"])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--model", default="LightGCN", choices=["LightGCN", "BPR"])
    p.add_argument("--data-dir", required=True, help="folder holding <dataset>/<dataset>.{train,valid,test}.inter")
    p.add_argument("--dataset", default="gowalla")
    p.add_argument("--num-items", type=int, required=True)
    p.add_argument("--work", required=True, help="RecBole's working folder (logs, checkpoints)")
    p.add_argument("--out", required=True)
    p.add_argument("--budget-s", type=float, default=1200.0)
    p.add_argument("--budget-file", default=None, help="re-read after every epoch; replaces --budget-s when present")
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--budget-clock", choices=["cpu", "wall"], default="cpu",
                   help="budget in process CPU seconds (robust to a shared machine) or wall seconds")
    p.add_argument("--eval-every", type=int, default=1)
    p.add_argument("--eval-users", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--lr", type=float, default=None, help="default: RecBole's own (0.001)")
    p.add_argument("--state", default=None)
    p.add_argument("--export", default=None)
    p.add_argument("--vectors", default=None)
    a = p.parse_args()
    os.makedirs(a.work, exist_ok=True)
    os.chdir(a.work)  # RecBole writes log/ and log_tensorboard/ into the working directory
    fn = {"train": cmd_train, "eval": cmd_eval, "score": cmd_score, "throughput": cmd_throughput}[a.mode]
    write(a.out, fn(a))
    print(json.dumps({"done": a.mode, "out": a.out}))


if __name__ == "__main__":
    sys.exit(main())
