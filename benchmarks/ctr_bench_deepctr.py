"""DeepCTR-Torch side of ``benchmarks/ctr_bench.py --sections peer``: runs INSIDE the peer's own venv
(``/work/venvs/deepctr``: torch==2.13.0 + deepctr-torch + requests), never in the project's environment.

Input: a JSON job (written by ctr_bench.py) naming an ``.npz`` of the SAME encoded rows recsparse trains on (table
rows of recsparse's fitted vocabulary mappers; multi-hot bags padded with 0 and shifted by +1, DeepCTR's mask), the
feature sizes, dim, batch size, epochs and patience. For each model: train epoch by epoch with ``fit(epochs=1)``,
early-stop on validation AUC with the same patience, test the best-validation weights. Prints one JSON line per
model: test AUC / logloss (scikit-learn), epochs, training examples/s (wall time of the ``fit`` calls).
"""

from __future__ import annotations

import copy
import json
import sys
import time

import numpy as np
import torch
from deepctr_torch.inputs import DenseFeat, SparseFeat, VarLenSparseFeat
from deepctr_torch.models import DCN, WDL, AutoInt, DeepFM
from sklearn.metrics import log_loss, roc_auc_score


def build(name: str, cols: list, seed: int) -> torch.nn.Module:
    no_l2 = dict(l2_reg_embedding=0.0, l2_reg_dnn=0.0, seed=seed, task="binary", device="cpu")
    if name == "wide_deep":
        return WDL(cols, cols, dnn_hidden_units=(256, 128), l2_reg_linear=0.0, **no_l2)
    if name == "deepfm":
        return DeepFM(cols, cols, dnn_hidden_units=(256, 128), l2_reg_linear=0.0, **no_l2)
    if name == "dcn_v2":  # DCN with the matrix (DCN-V2 "DCN-M") cross parameterisation
        return DCN(cols, cols, cross_num=2, cross_parameterization="matrix", dnn_hidden_units=(128, 128),
                   l2_reg_linear=0.0, l2_reg_cross=0.0, **no_l2)
    if name == "autoint":
        return AutoInt(cols, cols, att_layer_num=3, att_head_num=2, att_res=True, dnn_hidden_units=(256, 128),
                       **no_l2)
    raise ValueError(name)


def main(job_path: str) -> None:
    job = json.load(open(job_path))
    torch.set_num_threads(job["threads"])
    data = np.load(job["npz"])
    cols: list = []
    for f in job["sparse"]:
        if f["maxlen"]:
            cols.append(VarLenSparseFeat(SparseFeat(f["name"], f["rows"] + 1, embedding_dim=job["dim"]),
                                         maxlen=f["maxlen"], combiner="mean"))
        else:
            cols.append(SparseFeat(f["name"], f["rows"], embedding_dim=job["dim"]))
    cols += [DenseFeat(d, 1) for d in job["dense"]]
    names = [f["name"] for f in job["sparse"]] + list(job["dense"])

    def x(part: str) -> dict:
        return {n: data[f"{part}:{n}"] for n in names}

    xtr, xva, xte = x("train"), x("valid"), x("test")
    ytr, yva, yte = data["train:label"], data["valid:label"], data["test:label"]
    for name in job["models"]:
        torch.manual_seed(job["seed"])
        np.random.seed(job["seed"])
        model = build(name, cols, job["seed"])
        model.compile("adam", "binary_crossentropy")  # torch.optim.Adam, lr 1e-3 (its default)
        best, best_state, bad, secs, seen, epochs = -1.0, None, 0, 0.0, 0, 0
        for _ in range(job["max_epochs"]):
            t = time.perf_counter()
            model.fit(xtr, ytr, batch_size=job["batch_size"], epochs=1, verbose=0, shuffle=True)
            secs += time.perf_counter() - t
            seen += len(ytr)
            epochs += 1
            auc = roc_auc_score(yva, model.predict(xva, 4 * job["batch_size"]).ravel())
            if auc > best:
                best, best_state, bad = auc, copy.deepcopy(model.state_dict()), 0
            else:
                bad += 1
                if bad >= job["patience"]:
                    break
        model.load_state_dict(best_state)
        p = model.predict(xte, 4 * job["batch_size"]).ravel().astype(np.float64)
        print(json.dumps({"model": name, "test_auc": round(float(roc_auc_score(yte, p)), 5),
                          "test_logloss": round(float(log_loss(yte, np.clip(p, 1e-7, 1 - 1e-7))), 5),
                          "val_auc": round(best, 5), "epochs": epochs,
                          "params": int(sum(q.numel() for q in model.parameters())),
                          "train_examples_per_s": round(seen / secs, 1)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
