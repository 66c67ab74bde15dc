"""Self-supervised auxiliary loss (RFM / CFM + InfoNCE, Yao et al. 2021) -> ``benchmarks/results/ssl.json`` (+ .md).

Sections (``--sections``, comma-separated):

* ``two_tower`` — ``--config`` (ML-100K two-tower with user and item side features, leave-last-out) trained once per
  ``--variants`` entry and ``--seeds`` seed through :func:`recsparse.pipelines.train.run` (early stopping on
  validation, test on the best checkpoint). One ``run`` row per (variant, seed) with Recall/NDCG@K overall, on the
  popularity head (top 20 % of items by training count) and on the tail, for test and for validation; one ``mean``
  row per variant with mean ± std over the seeds and the relative change of each figure against the ``none``
  variant of the same invocation.
* ``collect`` — merge the rows that runs started with ``--rows-out`` wrote (``--rows-in`` files; parallel runs
  cannot share one results file) and add the ``mean`` rows.
* ``ctr`` — DCN-V2 and DeepFM (``--ctr-models``) on ml-100k-CTR and adult (``--ctr-datasets``) per ``--variants``
  entry (``none`` = plain BCE; otherwise the SSL term over the feature-embedding layer, as ``CTRModule``'s aux loss)
  and seed: test AUC / logloss of the best-validation epoch, and a ``ctr_mean`` row per group.
* ``cost`` — training examples/s with and without the SSL term (``--batches`` steps of one epoch, no evaluation);
  run it under the timing lock.

A variant is ``none`` or ``AUGMENT[:key=value,...]`` with keys ``w`` (weight α), ``t`` (temperature), ``d``
(multi-hot dropout), ``b`` (SSL batch size), e.g. ``cfm:w=0.3,t=0.1,d=0.2,b=512``; ``--tag`` names the study.

Examples::

    python benchmarks/ssl_bench.py --sections two_tower --variants none rfm:w=0.3 cfm:w=0.3 --seeds 0 1 2 3 4
    flock /tmp/recsparse-timing.lock python benchmarks/ssl_bench.py --sections cost --variants none cfm:w=0.3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KEY = ["section", "study", "dataset", "model", "variant", "seed"]
PARTS = ("", "head_", "tail_")
VARIANT_KEYS = {"w": "weight", "t": "temperature", "d": "dropout", "b": "batch_size"}


def variant_overrides(variant: str) -> list[str]:
    """``cfm:w=0.3,t=0.1`` -> ``loss.ssl.*`` overrides (``none`` -> SSL off)."""
    if variant == "none":
        return ["loss.ssl.weight=0"]
    aug, _, rest = variant.partition(":")
    out = [f"loss.ssl.augment={aug}"]
    kv = dict(p.split("=", 1) for p in rest.split(",") if p)
    unknown = set(kv) - set(VARIANT_KEYS)
    if unknown:
        raise SystemExit(f"variant {variant!r}: unknown keys {sorted(unknown)} (use {sorted(VARIANT_KEYS)})")
    kv.setdefault("w", "0.3")
    out += [f"loss.ssl.{VARIANT_KEYS[k]}={v}" for k, v in kv.items()]
    return out


def _metrics(m: dict[str, float], prefix: str, ks: list[int]) -> dict[str, float]:
    out = {}
    for part in PARTS:
        for k in ks:
            for name in ("recall", "ndcg"):
                out[f"{prefix}{part}{name}@{k}"] = round(float(m[f"{part}{name}@{k}"]), 4)
    return out


def add_title_words(split: Any, min_count: int = 2) -> None:
    """Add ML-100K title words (lower-cased tokens of ``movie_title`` used by >= ``min_count`` items; a multi-hot
    ``title`` feature) to the split's item features: with id, genres and year that makes four item features, so
    half (two) are masked per view and CFM's MI-chosen pairs differ from random ones (with three features
    ⌊3/2⌋ = 1 feature is masked and CFM's group is the seed alone, i.e. RFM)."""
    from collections import Counter

    from recsparse.data import load

    ds = load(split.name)
    assert split.item_features is not None and ds.item is not None
    # the split's dense item index: raw ids sorted by (length, string) over interactions ∪ item table
    raw = sorted(set(ds.inter["item_id"].to_list()) | set(ds.item["item_id"].to_list()), key=lambda t: (len(t), t))
    titles = dict(zip(ds.item["item_id"].to_list(),
                      [[w.lower().strip(",.:()!?'\"") for w in x] for x in ds.item["movie_title"].to_list()]))
    counts = Counter(w for t in titles.values() for w in set(t) if w)
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= min_count))}
    bags = [sorted({vocab[w] for w in titles.get(r, []) if w in vocab}) for r in raw]
    store = split.item_features
    store.lengths["title"] = torch.tensor([len(b) for b in bags], dtype=torch.long)
    store.values["title"] = torch.tensor([v for b in bags for v in b], dtype=torch.long)
    store.vocab_sizes["title"] = len(vocab)


def two_tower_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from lightning.pytorch.callbacks import Callback

    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.train import run
    from recsparse.results import provenance

    class ValAtBest(Callback):
        """After test (best checkpoint loaded): validation metrics incl. head/tail of that same model."""

        def __init__(self) -> None:
            self.val: dict[str, float] = {}

        def on_test_end(self, trainer: Any, pl_module: Any) -> None:
            self.val = pl_module.evaluate("val")

    base = ["trainer.progress_bar=false", f"trainer.num_threads={args.threads}", "eval.head_fraction=0.2",
            f"trainer.max_epochs={args.epochs}", *args.set]
    split = None
    rows = []
    for variant in args.variants:
        for seed in args.seeds:
            name = f"ssl_{args.study}_{variant.replace(':', '_').replace(',', '_').replace('=', '')}_s{seed}"
            ov = [*base, *variant_overrides(variant), f"trainer.seed={seed}", f"name={name}",
                  f"trainer.output_dir={args.runs}/{{name}}"]
            cfg = load_config(args.config, ov)
            if split is None:
                split = build_split(cfg)  # the split does not depend on the seed or the SSL settings
                if args.title_words:
                    add_title_words(split)
            cb = ValAtBest()
            t0 = time.perf_counter()
            rec = run(cfg, split, extra_callbacks=[cb])
            wall = time.perf_counter() - t0
            row = {"section": "two_tower", "study": args.study, "variant": variant, "seed": seed,
                   "dataset": rec["dataset"], "item_features": ",".join(split.item_features.names),
                   "epochs": rec["epochs"]}
            row.update(_metrics(rec["test"], "", cfg.eval.ks))
            row.update(_metrics(cb.val, "val_", cfg.eval.ks))
            row.update({"head_users": rec["test"]["head_num_users"], "tail_users": rec["test"]["tail_num_users"],
                        "train_examples_per_s": rec.get("train_examples_per_s"), "config": args.config,
                        "overrides": " ".join(ov)})
            row.update(provenance(wall))
            print({k: v for k, v in row.items() if k not in ("overrides", "command", "machine")}, flush=True)
            rows.append(row)
    return rows


def _is_metric(key: str) -> bool:
    return key.startswith("test_") or ("@" in key and not key.startswith("val_"))


def mean_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (section, study, dataset, model, variant): mean and std (sample, n-1) of every test metric over
    its seeds, and the relative change of each mean against the same group's ``none`` variant."""
    ident = ("section", "study", "dataset", "model")
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((*(r.get(k) for k in ident), r["variant"]), []).append(r)
    out = []
    for (section, study, dataset, model, variant), rs in groups.items():
        row: dict[str, Any] = {"section": f"{section}_mean", "study": study, "dataset": dataset, "model": model,
                               "variant": variant, "seed": None, "seeds": len(rs),
                               "epochs_mean": round(statistics.mean(r["epochs"] for r in rs), 1)}
        for m in [k for k in rs[0] if _is_metric(k)]:
            vals = [r[m] for r in rs]
            row[m] = round(statistics.mean(vals), 4 if "@" in m else 5)
            row[f"{m}_std"] = round(statistics.stdev(vals), 4 if "@" in m else 5) if len(vals) > 1 else 0.0
        out.append(row)
    for row in out:
        ref = next((r for r in out if r["variant"] == "none"
                    and all(r.get(k) == row.get(k) for k in ("section", "study", "dataset", "model"))), None)
        if ref is None or row["variant"] == "none":
            continue
        for m in [k for k in row if _is_metric(k) and not k.endswith("_std")]:
            if ref.get(m):
                row[f"{m}_rel"] = round(row[m] / ref[m] - 1, 4)
    return out


def ctr_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """DCN-V2 / DeepFM with and without the SSL term (``loss.ssl``: ``EmbeddingLayerSSL`` over the feature embeddings)."""
    from recsparse.config import apply_overrides
    from recsparse.pipelines.config import CTRConfig
    from recsparse.pipelines.ctr import fit_ctr, prepare
    from recsparse.results import provenance

    rows = []
    for dataset in args.ctr_datasets:
        def ctr_cfg(model: str = "deepfm", seed: int = 0, variant: str = "none") -> CTRConfig:
            d = {"data": {"dataset": dataset}, "model": {"name": model},
                 "trainer": {"max_epochs": args.ctr_epochs, "patience": args.ctr_patience,
                             "num_threads": args.threads, "seed": seed}}
            return CTRConfig.from_dict(apply_overrides(d, variant_overrides(variant)))  # the CLI's override path

        ds, fitted = prepare(ctr_cfg())  # the full-vocabulary spec: the same for every model, seed and variant
        for model in args.ctr_models:
            for variant in args.variants:
                for seed in args.seeds:
                    cfg = ctr_cfg(model, seed, variant)  # loss.ssl: the term is built over the fitted spec by the run
                    ssl = cfg.loss.ssl if cfg.loss.ssl.enabled else None
                    t0 = time.perf_counter()
                    rec = fit_ctr(cfg, ds, fitted)
                    row = {"section": "ctr", "study": args.study, "dataset": rec["dataset"], "model": model,
                           "variant": variant, "seed": seed, "test_auc": rec["test_auc"],
                           "test_logloss": rec["test_logloss"], "val_auc": rec["val_auc"], "epochs": rec["epochs"],
                           "train_examples_per_s": rec["train_examples_per_s"],
                           "ssl": None if ssl is None else str(ssl), "max_epochs": cfg.trainer.max_epochs,
                           "patience": cfg.trainer.patience}
                    row.update(provenance(time.perf_counter() - t0))
                    print({k: v for k, v in row.items() if k not in ("command", "machine")}, flush=True)
                    rows.append(row)
    return rows


def cost_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    from recsparse.pipelines.config import load_config
    from recsparse.pipelines.data import build_split
    from recsparse.pipelines.train import run
    from recsparse.results import provenance

    rows, split = [], None
    for variant in args.variants:
        ov = ["trainer.progress_bar=false", f"trainer.num_threads={args.threads}", "trainer.max_epochs=1",
              f"trainer.limit_train_batches={args.batches}", *args.set, *variant_overrides(variant),
              "name=ssl_cost", "trainer.output_dir=/tmp/recsparse-ssl-cost/{name}"]
        cfg = load_config(args.config, ov)
        if split is None:
            split = build_split(cfg)
            if args.title_words:
                add_title_words(split)
        t0 = time.perf_counter()
        rec = run(cfg, split, test=False)
        row = {"section": "cost", "study": args.study, "variant": variant, "seed": 0, "dataset": rec["dataset"],
               "batch_size": cfg.trainer.batch_size, "ssl_batch_size": cfg.loss.ssl.batch_size if variant != "none"
               else 0, "batches": args.batches, "threads": args.threads,
               "train_examples_per_s": rec["train_examples_per_s"], "overrides": " ".join(ov)}
        row.update(provenance(time.perf_counter() - t0))
        print({k: v for k, v in row.items() if k not in ("overrides", "command", "machine")}, flush=True)
        rows.append(row)
    ref = next((r for r in rows if r["variant"] == "none"), None)
    for r in rows:
        if ref is not None and r is not ref:
            r["relative_throughput"] = round(r["train_examples_per_s"] / ref["train_examples_per_s"], 3)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sections", default="two_tower")
    p.add_argument("--config", default="configs/ml100k_two_tower.yaml")
    p.add_argument("--variants", nargs="+", default=["none", "rfm", "cfm"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--study", default="main", help="name of this comparison (rows are keyed by it)")
    p.add_argument("--epochs", type=int, default=30, help="trainer.max_epochs (early stopping still applies)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-title-words", dest="title_words", action="store_false",
                   help="keep the config's item features (id, genres, year) only")
    p.add_argument("--batches", type=int, default=40, help="steps timed by --sections cost")
    p.add_argument("--set", action="append", default=[], help="extra override KEY=VALUE for every run")
    p.add_argument("--runs", default="/tmp/recsparse-ssl-runs", help="folder for the run directories")
    p.add_argument("--ctr-datasets", nargs="+", default=["ml-100k-ctr", "adult"])
    p.add_argument("--ctr-models", nargs="+", default=["dcn_v2", "deepfm"])
    p.add_argument("--ctr-epochs", type=int, default=10, help="CTR max_epochs (early stopping on validation AUC)")
    p.add_argument("--ctr-patience", type=int, default=2)
    p.add_argument("--rows-out", default=None, help="write the rows to this JSON file instead of the results file")
    p.add_argument("--rows-in", nargs="*", default=[], help="--sections collect: JSON files written by --rows-out")
    p.add_argument("--no-save", action="store_true")
    args = p.parse_args()
    from recsparse.io import write_json
    from recsparse.results import print_table, save_results

    records: list[dict[str, Any]] = []
    for section in args.sections.split(","):
        if section == "two_tower":
            runs = two_tower_rows(args)
            records += runs if args.rows_out else runs + mean_rows(runs)
        elif section == "ctr":
            runs = ctr_rows(args)
            records += runs if args.rows_out else runs + mean_rows(runs)
        elif section == "collect":
            from recsparse.results import provenance

            runs = [r for path in args.rows_in for r in json.loads(Path(path).read_text())]
            for r in runs:  # rows-out files of the first version named the two-tower section "run"
                if r["section"] == "run":
                    r["section"] = "two_tower"
            means = mean_rows([r for r in runs if r["section"] in ("two_tower", "ctr")])
            for m in means:  # a mean row is computed here from run rows measured at their own commits
                m.update(provenance())
                m["run_commits"] = ",".join(sorted({r["git_commit"] for r in runs
                                                    if r["variant"] == m["variant"] and r.get("model") == m["model"]
                                                    and r.get("dataset") == m["dataset"]}))
            records += runs + means
        elif section == "cost":
            records += cost_rows(args)
        else:
            raise SystemExit(f"unknown section {section!r} (two_tower, ctr, collect, cost)")
    cols = ["section", "study", "dataset", "model", "variant", "seed", "recall@50", "tail_recall@50", "head_recall@50",
            "ndcg@50", "test_auc", "test_logloss"]
    print_table(records, [c for c in cols if any(c in r for r in records)])
    if args.rows_out:
        write_json(args.rows_out, records)
        return
    if not args.no_save:
        print(save_results("ssl", records, KEY))


if __name__ == "__main__":
    main()
