"""The trainer's optimizer settings, applied to every parameter of a model — dense ones by a torch optimizer, table
weights updated inside FBGEMM's fused TBE backward (``model.backend=fbgemm``, and every table sharded by TorchRec)
by the SAME rule, learning rate and schedule.

Fused TBE updates happen in ``backward``; a torch optimizer never sees those weights (their ``.grad`` stays empty).
So the trainer's ``optimizer`` / ``lr`` / ``lr_schedule`` are mapped onto FBGEMM's ``EmbOptimType`` here, once:

==================  ==============================  =====================================================
trainer.optimizer   fused TBE optimizer             equal to the torch optimizer on the same batch?
==================  ==============================  =====================================================
``sgd``             ``EXACT_SGD``                   yes: ``w -= lr · g`` (duplicate ids summed first)
``adagrad``         ``EXACT_ADAGRAD``, eps 1e-10    yes: ``s += g²; w -= lr · g / (sqrt(s) + eps)``, torch's eps
``adam``            ``ADAM`` (CUDA builds only)     no: FBGEMM's Adam is lazy (rows outside the batch keep their
                                                    moments still); fbgemm-gpu-cpu has no fused Adam -> error
==================  ==============================  =====================================================

``trainer.weight_decay > 0`` is rejected for fused tables: torch decays every row every step, FBGEMM only the rows of
the batch — a silent difference (use ``loss.reg_weight``, the L2 on the batch's embeddings, instead).
The fused learning rate follows ``trainer.lr_schedule`` per epoch (:func:`lr_at_epoch`, set at each epoch start).
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import torch
from torch import nn

from recsparse.errors import ConfigError
from recsparse.kernels.tbe import TBEConfig
from recsparse.pipelines.config import TrainerConfig

# torch.optim.Adagrad's default eps: the fused update then equals the torch one
TORCH_ADAGRAD_EPS = 1e-10


def fused_optimizer(t: TrainerConfig, device: torch.device | str = "cpu") -> tuple[str, float, float]:
    """``(recsparse TBE optimizer name, learning rate, eps)`` for ``t``; :class:`ConfigError` if FBGEMM cannot follow.

    ``device``: where the tables train ("cuda" makes FBGEMM's fused Adam available)."""
    if t.weight_decay > 0:
        raise ConfigError(f"trainer.weight_decay={t.weight_decay} cannot apply to fused FBGEMM tables (FBGEMM decays "
                          "only the batch's rows, torch every row): set trainer.weight_decay=0 and use "
                          "loss.reg_weight, or model.backend=torch")
    if t.optimizer == "sgd":
        return "sgd", t.lr, 1e-8
    if t.optimizer == "adagrad":
        return "adagrad", t.lr, TORCH_ADAGRAD_EPS
    if torch.device(device).type == "cuda":
        return "adam", t.lr, 1e-8
    raise ConfigError(f"trainer.optimizer={t.optimizer} has no fused FBGEMM version on CPU (fbgemm-gpu-cpu offers "
                      "exact SGD and Adagrad): use trainer.optimizer=adagrad or sgd, or model.backend=torch")


def tbe_config(t: TrainerConfig) -> TBEConfig:
    """The :class:`~recsparse.kernels.tbe.TBEConfig` of ``model.backend=fbgemm`` tables trained under ``t`` (CPU)."""
    name, lr, eps = fused_optimizer(t, "cpu")
    return TBEConfig(optimizer=name, learning_rate=lr, eps=eps)


def sharder_fused_params(t: TrainerConfig, device: torch.device | str) -> dict[str, Any]:
    """TorchRec sharder ``fused_params`` (FBGEMM kwargs) of tables sharded under ``t``."""
    from fbgemm_gpu.split_embedding_configs import EmbOptimType

    name, lr, eps = fused_optimizer(t, device)
    opt = {"sgd": EmbOptimType.EXACT_SGD, "adagrad": EmbOptimType.EXACT_ADAGRAD, "adam": EmbOptimType.ADAM}[name]
    return {"optimizer": opt, "learning_rate": lr, "eps": eps}


def lr_at_epoch(t: TrainerConfig, epoch: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) under ``t.lr_schedule`` — the closed form of the
    ``CosineAnnealingLR(T_max=max(1, max_epochs - 1), eta_min=lr * lr_final_ratio)`` the dense optimizer steps."""
    if t.lr_schedule == "constant":
        return t.lr
    T = max(1, t.max_epochs - 1)
    e = min(epoch, T)
    low = t.lr * t.lr_final_ratio
    return low + (t.lr - low) * (1 + math.cos(math.pi * e / T)) / 2


def _fused_modules(module: nn.Module) -> Iterator[nn.Module]:
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import SplitTableBatchedEmbeddingBagsCodegen

    return (m for m in module.modules() if isinstance(m, SplitTableBatchedEmbeddingBagsCodegen))


def set_fused_learning_rate(module: nn.Module, lr: float) -> int:
    """Set ``lr`` on every FBGEMM TBE kernel inside ``module`` (our ``FusedTBE`` and TorchRec's sharded lookups
    alike). Returns how many kernels were set (0: nothing fused)."""
    try:
        kernels = list(_fused_modules(module))
    except ImportError:  # no FBGEMM installed: nothing can be fused
        return 0
    for k in kernels:
        k.set_learning_rate(lr)
    return len(kernels)


def fused_learning_rates(module: nn.Module) -> list[float]:
    """The learning rate each FBGEMM TBE kernel inside ``module`` will apply (for checks and logs)."""
    try:
        return [float(k.get_learning_rate()) for k in _fused_modules(module)]
    except ImportError:
        return []


def dense_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters a torch optimizer must update: all but those updated inside a fused TBE backward
    (FBGEMM kernel weights, and TorchRec's in-backward-optimizer parameters of sharded tables)."""
    try:
        fused = {id(p) for k in _fused_modules(module) for p in k.parameters()}
    except ImportError:
        fused = set()
    named: Iterator[tuple[str, nn.Parameter]] = module.named_parameters()
    try:  # TorchRec's own test for parameters of a sharded table's in-backward optimizer
        from torchrec.optim.optimizers import in_backward_optimizer_filter

        named = in_backward_optimizer_filter(named)
    except ImportError:
        pass
    return [p for _, p in named if p.requires_grad and id(p) not in fused]
