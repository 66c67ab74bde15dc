"""Dynamic sparse learning (DSL): train embedding tables under a fixed parameter budget from the first step.

Wang et al., "Dynamic Sparse Learning: A Novel Paradigm for Efficient Recommendation" (WSDM 2024), which applies
the prune-and-regrow recipe of RigL (Evci et al., "Rigging the Lottery", ICML 2020) to embedding tables:

* every table ``[rows, dim]`` carries an element-wise mask with exactly ``round(density · rows · dim)`` active
  weights (random at the start, per table);
* every ``interval`` optimizer steps a fraction ``ratio_t`` of each table's active weights is **pruned** (smallest
  ``|w|``) and the same number of inactive weights is **regrown** where the gradient ``|g|`` is largest (regrown
  weights start at 0; positions pruned in the same update are not regrown). ``g`` is the gradient *summed over the
  interval*, not one batch's: a batch touches only its own rows of an embedding table, so one batch's gradient could
  only regrow into the few thousand rows it happened to contain while pruning takes from every row (on Gowalla MF
  that starves tail rows to all-zero vectors); over an interval nearly every row has been seen;
* ``ratio_t`` decays on a cosine from ``ratio`` to ``ratio_final`` over the first ``end`` fraction of the run, after
  which the mask is frozen (RigL's ``T_end = 0.75``: the last quarter trains the final mask)
  (``ratio_t = r_f + ½ (r_0 - r_f)(1 + cos(π t / (end·T)))``; ``schedule='constant'`` keeps ``ratio``).

Masked weights stay **exactly zero** through every optimizer step: gradients are masked before the step, and the
optimizer's per-element state (Adam moments, Adagrad sums, momentum buffers — any state tensor shaped like the
weight) is zeroed where a weight is pruned, so any of torch's optimizers computes a zero update there.

Defaults are the official code's (density 0.5, ΔT = 3,000 steps, ratio 0.5 → 0.005, cosine). ΔT = 3,000 assumes
long runs; a run with fewer steps than ``interval`` never updates its mask (a warning says so) — short runs scale
``interval`` down, but not below the time a regrown weight needs to grow from 0: rows are visited every few
steps only, so an interval of a fraction of an epoch mostly prunes the weights the previous update regrew (the
history's ``pruned_fresh`` counts them). ``scope='row'`` keeps each row at its share of the budget; table scope (the
paper's) lets the budget drift to the rows with the largest summed gradients, the popular ones.

Backends: ``torch`` and ``torchrec`` (unsharded; table gradients are ordinary tensors). ``fbgemm`` is rejected:
its fused backward applies the optimizer inside the kernel and never materialises the gradient that regrowth
ranks, nor an element-wise optimizer state to mask.

Export: :func:`export_sparse` turns masked tables into :class:`~recsparse.embeddings.sparse.SparseEmbeddingTables`
(CSR, actual byte count) that serve lookups.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import torch
from torch import nn

from recsparse.config import Config
from recsparse.errors import ConfigError

SCHEDULES = ("cosine", "constant")
SCOPES = ("table", "row")


@dataclass
class DSLConfig(Config):
    """``model.dsl`` — ``density``: fraction of each table's weights that are active (0 < d ≤ 1). ``interval``:
    optimizer steps between mask updates (ΔT). ``ratio`` → ``ratio_final``: fraction of active weights
    pruned-and-regrown per update, decayed by ``schedule`` (``cosine`` | ``constant``) over the first ``end``
    fraction of the run's steps, after which the mask is frozen. ``seed``: the initial random mask. ``scope``:
    ``table`` ranks prune/regrow candidates over the whole table (the paper's); ``row`` keeps every row at its share
    of the budget (``density · dim`` weights, ±1) and prunes/regrows within each row — see :meth:`DynamicSparsity.update`."""

    density: float = 0.5
    interval: int = 3000
    ratio: float = 0.5
    ratio_final: float = 0.005
    schedule: Literal["cosine", "constant"] = "cosine"
    end: float = 0.75
    seed: int = 0
    scope: Literal["table", "row"] = "table"

    def validate(self) -> None:
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"model.dsl.density must be in (0, 1], got {self.density!r}")
        if self.interval <= 0:
            raise ConfigError(f"model.dsl.interval must be a positive number of optimizer steps, got {self.interval!r}")
        for name in ("ratio", "ratio_final"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"model.dsl.{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.scope not in SCOPES:
            raise ConfigError(f"model.dsl.scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        if not 0.0 < self.end <= 1.0:
            raise ConfigError(f"model.dsl.end must be in (0, 1] (fraction of the run with mask updates), got "
                              f"{self.end!r}")


def update_ratio(step: int, total_steps: int, ratio: float, ratio_final: float, schedule: str = "cosine") -> float:
    """Fraction of active weights to prune-and-regrow at optimizer step ``step`` of ``total_steps``."""
    if schedule == "constant":
        return float(ratio)
    t = min(max(step, 0), total_steps) / max(total_steps, 1)
    return float(ratio_final + 0.5 * (ratio - ratio_final) * (1.0 + math.cos(math.pi * t)))


def _table_params(tables: nn.Module) -> dict[str, nn.Parameter]:
    """``table name -> weight`` of a :class:`MappedEmbeddingBagCollection` (shared tables once)."""
    from recsparse.embeddings.tables import MappedEmbeddingBagCollection

    if not isinstance(tables, MappedEmbeddingBagCollection):
        raise TypeError(f"DSL masks the tables of a MappedEmbeddingBagCollection, got {type(tables).__name__}")
    if tables.backend == "fbgemm":
        raise ConfigError("dynamic sparse learning does not run on backend='fbgemm': its fused backward updates the "
                          "weights inside the kernel and never materialises the gradient DSL regrows by (nor an "
                          "element-wise optimizer state to mask); use model.backend=torch or torchrec")
    if tables.is_sharded:
        raise ConfigError("dynamic sparse learning needs unsharded tables (a sharded EBC's fused optimizer hides the "
                          "gradient); apply DSL before DistributedModelParallel is not supported")
    out: dict[str, nn.Parameter] = {}
    for f in tables.features:
        out.setdefault(f.table_name, tables.table_weight(f.name))
    return out


def _random_mask(shape: torch.Size, density: float, generator: torch.Generator, scope: str = "table") -> torch.Tensor:
    """``round(density · numel)`` active positions at random; ``scope='row'``: spread so that every row of a
    ``[rows, dim]`` table holds ``⌊k/rows⌋`` or one more of them."""
    n = int(torch.Size(shape).numel())
    k = int(round(density * n))
    if scope == "row":
        rows, dim = shape
        per_row = torch.full((rows,), k // rows, dtype=torch.long)
        per_row[torch.randperm(rows, generator=generator)[:k - (k // rows) * rows]] += 1
        rank = torch.rand(rows, dim, generator=generator).argsort(dim=1).argsort(dim=1)
        return rank < per_row.unsqueeze(1)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=generator)[:k]] = True
    return mask.view(shape)


@torch.no_grad()
def magnitude_masks(tables: nn.Module, density: float) -> dict[str, torch.Tensor]:
    """One-shot magnitude pruning: per table, keep the ``round(density · numel)`` largest ``|w|`` (the baseline DSL
    is compared with, applied to a trained dense model). Returns ``table name -> bool mask``; does not modify."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    masks = {}
    for name, w in _table_params(tables).items():
        flat = w.detach().reshape(-1).abs()
        k = int(round(density * flat.numel()))
        mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        mask[torch.topk(flat, k, sorted=False).indices] = True
        masks[name] = mask.view(w.shape)
    return masks


class DynamicSparsity:
    """Masks, prune/regrow schedule and optimizer hygiene for the tables of a model.

    Call :meth:`before_step` after ``backward`` and before ``optimizer.step()``: it updates the mask on schedule,
    zeroes the optimizer state of pruned weights and masks the gradients — after which any torch optimizer leaves the
    masked weights at exactly 0 (zero gradient, zero state, and weight decay of a zero weight is zero), so no
    re-masking pass is needed after the step. ``total_steps`` is the run's optimizer-step count.
    """

    def __init__(self, tables: nn.Module, config: DSLConfig, total_steps: int) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        self.config = config
        self.total_steps = int(total_steps)
        self.params = _table_params(tables)
        g = torch.Generator().manual_seed(config.seed)
        self.masks = {n: _random_mask(w.shape, config.density, g, config.scope).to(w.device)
                      for n, w in self.params.items()}
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.end_step = max(1, int(config.end * self.total_steps))  # mask frozen from here on
        # gradient summed since the last update (the regrowth score): allocated lazily, only while updates remain
        self.grad_sum: dict[str, torch.Tensor] = {}
        self.fresh: dict[str, torch.Tensor] = {}  # flat bool: regrown at the last update (diagnostics only)
        self._factors: dict[str, torch.Tensor] = {}  # masks as float multipliers (see _factor)
        self._pruned_fresh: dict[str, int] = {}
        if config.interval > total_steps and config.density < 1.0:
            warnings.warn(f"DSL: interval={config.interval} exceeds the run's {total_steps} optimizer steps, so the "
                          "mask never changes (static sparse training); lower model.dsl.interval", stacklevel=2)
        self.apply()

    # ---- invariants ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self) -> None:
        """Zero every masked weight."""
        for n, w in self.params.items():
            w.mul_(self._factor(n))

    @torch.no_grad()
    def mask_gradients(self) -> None:
        for n, w in self.params.items():
            g = w.grad
            if g is None:
                continue
            if g.is_sparse:  # nn.EmbeddingBag(sparse=True)
                g = g.coalesce()
                keep = self.masks[n][g.indices()[0]]
                w.grad = torch.sparse_coo_tensor(g.indices(), g.values() * keep, g.shape)
            else:
                g.mul_(self._factor(n))

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero every per-element optimizer state tensor (shaped like a table) at the masked positions."""
        if optimizer is None:
            return
        for n, w in self.params.items():
            for v in optimizer.state.get(w, {}).values():
                if isinstance(v, torch.Tensor) and v.shape == w.shape:
                    v.mul_(self._factor(n))

    def _factor(self, name: str) -> torch.Tensor:
        """The mask of table ``name`` in the weight's dtype: multiplying by a same-dtype tensor is ~4x faster than by
        the bool mask (every step masks the whole dense gradient). Rebuilt when the mask changes."""
        f = self._factors.get(name)
        if f is None:
            f = self._factors[name] = self.masks[name].to(self.params[name].dtype)
        return f

    def densities(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self.masks.items()}

    # ---- the schedule ----------------------------------------------------------------------------------------
    def ratio_at(self, step: int) -> float:
        c = self.config
        return update_ratio(step, self.end_step, c.ratio, c.ratio_final, c.schedule)

    @torch.no_grad()
    def accumulate(self) -> None:
        """Add the current gradients to the regrowth score (called every step while mask updates remain)."""
        for n, w in self.params.items():
            g = w.grad
            if g is None:
                continue
            acc = self.grad_sum.get(n)
            if acc is None:
                acc = self.grad_sum[n] = torch.zeros_like(w, memory_format=torch.contiguous_format)
            if g.is_sparse:
                g = g.coalesce()
                acc.index_add_(0, g.indices()[0], g.values())
            else:
                acc.add_(g)

    @torch.no_grad()
    def update(self) -> dict[str, Any]:
        """Prune the smallest-|w| active weights and regrow as many inactive ones with the largest gradient summed
        since the last update (:meth:`accumulate`), per table. Returns the history entry."""
        ratio = self.ratio_at(self.step)
        # pruned_fresh: how many of the pruned weights were regrown at the previous update (they had one interval to
        # grow from 0; a high share means the interval is too short for them to ever survive)
        entry: dict[str, Any] = {"step": self.step, "ratio": ratio, "pruned": {}, "grown": {}, "pruned_fresh": {}}
        for name, w in self.params.items():
            acc = self.grad_sum.get(name)
            n = 0 if acc is None else (self._update_rows(name, w, acc, ratio) if self.config.scope == "row"
                                       else self._update_table(name, w, acc, ratio))
            entry["pruned"][name] = entry["grown"][name] = n
            entry["pruned_fresh"][name] = self._pruned_fresh.pop(name, 0)
        for acc in self.grad_sum.values():
            acc.zero_()
        self.history.append(entry)
        return entry

    @staticmethod
    def _tie_break(gscore: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """``gscore`` (``≥ 0``) with its zeros (no gradient: rows no batch touched) replaced by uniform noise below
        the smallest positive candidate value: a random choice among them, ranked below every real gradient. Positive
        values are left as they are (noise added to them could swap two that differ by less than it)."""
        pos = gscore[candidates]
        tiny = 0.5 * float(pos[pos > 0].min()) if bool((pos > 0).any()) else 1.0
        return torch.where(gscore > 0, gscore, torch.rand(gscore.shape, device=gscore.device) * tiny)

    def _update_table(self, name: str, w: torch.Tensor, acc: torch.Tensor, ratio: float) -> int:
        """Table scope: ``round(ratio · active)`` smallest ``|w|`` of the table out, as many largest ``|g|`` in."""
        mask = self.masks[name].view(-1)
        active = int(mask.sum())
        n = min(int(round(ratio * active)), mask.numel() - active)  # can only regrow into free slots
        if n <= 0:
            return 0
        flat_w = w.detach().view(-1)
        score = flat_w.abs().masked_fill(~mask, float("inf"))
        drop = torch.topk(score, n, largest=False, sorted=False).indices
        candidates = ~mask  # (the dropped positions are active, so never regrown in the update that pruned them)
        gscore = self._tie_break(acc.reshape(-1).abs(), candidates)
        grow = torch.topk(gscore.masked_fill(~candidates, -1.0), n, sorted=False).indices
        fresh = self.fresh.get(name)
        self._pruned_fresh[name] = 0 if fresh is None else int(fresh.view(-1)[drop].sum())
        self.fresh[name] = torch.zeros_like(self.masks[name])
        self.fresh[name].view(-1)[grow] = True
        mask[drop] = False
        mask[grow] = True
        flat_w[drop] = 0.0
        flat_w[grow] = 0.0  # regrown weights start at zero (RigL)
        self._factors.pop(name, None)
        return n

    def _update_rows(self, name: str, w: torch.Tensor, acc: torch.Tensor, ratio: float) -> int:
        """Row scope: in every row the interval's batches touched (non-zero summed gradient), the same
        ``round(ratio · density · dim)`` smallest ``|w|`` out and largest ``|g|`` in, so each row keeps its share of the
        budget. Table scope lets the budget drift to popular rows (their summed gradients are the largest) while
        the rarely-seen rows' weights, slow to grow from 0, are pruned first."""
        mask = self.masks[name]
        counts = mask.sum(dim=1)
        n = min(int(round(ratio * float(counts.float().mean()))), int(counts.min()),
                mask.shape[1] - int(counts.max()))
        rows = (acc != 0).any(dim=1).nonzero().squeeze(1)
        if n <= 0 or rows.numel() == 0:
            return 0
        W, M = w.detach()[rows], mask[rows]
        drop = torch.topk(W.abs().masked_fill(~M, float("inf")), n, dim=1, largest=False, sorted=False).indices
        gscore = self._tie_break(acc[rows].abs(), ~M)
        grow = torch.topk(gscore.masked_fill(M, -1.0), n, dim=1, sorted=False).indices
        fresh = self.fresh.get(name)
        self._pruned_fresh[name] = 0 if fresh is None else int(fresh[rows].gather(1, drop).sum())
        self.fresh[name] = torch.zeros_like(mask)
        self.fresh[name][rows] = torch.zeros_like(M).scatter_(1, grow, True)
        mask[rows] = M.scatter_(1, drop, False).scatter_(1, grow, True)
        w.detach()[rows] = W.scatter_(1, drop, 0.0).scatter_(1, grow, 0.0)  # regrown weights start at zero
        self._factors.pop(name, None)
        return n * rows.numel()

    def before_step(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """Mask update on schedule (every ``interval`` steps), then gradient masking; zeroes the optimizer state of
        pruned weights. Returns the update's history entry, or None."""
        self.step += 1
        entry = None
        if self.config.density < 1.0 and self.step <= self.end_step:
            self.accumulate()
            if self.step % self.config.interval == 0 and self.step < self.total_steps:
                entry = self.update()
                self.mask_optimizer_state(optimizer)
        elif self.grad_sum:
            self.grad_sum, self.fresh = {}, {}  # no update left: free the score buffers
        self.mask_gradients()
        return entry

    # ---- state (resume) ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "total_steps": self.total_steps, "step": self.step,
                "masks": {n: m.clone() for n, m in self.masks.items()}, "history": list(self.history),
                "grad_sum": {n: a.clone() for n, a in self.grad_sum.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        masks = state["masks"]
        if set(masks) != set(self.masks):
            raise ConfigError(f"DSL state masks tables {sorted(masks)}, the model has {sorted(self.masks)}")
        for n, m in masks.items():
            if m.shape != self.masks[n].shape or m.dtype != torch.bool:
                raise ConfigError(f"DSL state mask of table {n!r} is {m.dtype} {tuple(m.shape)}, expected bool "
                                  f"{tuple(self.masks[n].shape)}")
            self.masks[n] = m.to(self.masks[n].device).clone()
        self._factors = {}
        self.step, self.history = int(state["step"]), list(state.get("history", []))
        self.grad_sum = {n: a.clone() for n, a in state.get("grad_sum", {}).items() if n in self.masks}
        self.apply()


def dsl_callback(config: DSLConfig, tables_of: Any = None) -> Any:
    """A Lightning callback running :class:`DynamicSparsity` over ``pl_module.model.tables`` (or
    ``tables_of(pl_module)``); the masks are saved in and restored from Lightning checkpoints."""
    from lightning.pytorch.callbacks import Callback

    class DSLCallback(Callback):
        def __init__(self) -> None:
            self.config = config
            self.dsl: DynamicSparsity | None = None
            self._pending: Mapping[str, Any] | None = None

        @property
        def state_key(self) -> str:
            return "DynamicSparsity"

        def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
            if stage != "fit" or self.dsl is not None:
                return
            tables = tables_of(pl_module) if tables_of is not None else pl_module.model.tables
            total = int(trainer.estimated_stepping_batches)
            self.dsl = DynamicSparsity(tables, self.config, total)
            if self._pending is not None:
                self.dsl.load_state_dict(self._pending)

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            assert self.dsl is not None
            entry = self.dsl.before_step(optimizer)
            if entry is not None:
                pl_module.log("dsl/ratio", entry["ratio"], on_step=True, on_epoch=False, batch_size=1)

        def state_dict(self) -> dict[str, Any]:
            return {} if self.dsl is None else self.dsl.state_dict()

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            if not state_dict:
                return
            if self.dsl is None:
                self._pending = state_dict
            else:
                self.dsl.load_state_dict(state_dict)

    return DSLCallback()
