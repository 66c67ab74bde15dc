"""Integer impacts for a Lucene impact index.

Anserini stores a learned weight as the term frequency of a pseudo-document, so weights must be integers. We use
the scale of Pyserini's SPLADE/uniCOIL encoders: ``impact = round(weight * scale)`` with ``scale = 100`` by default
(2 decimal digits; a SPLADE weight of 2.37 becomes 237), clipped to ``[0, max_impact]``; entries that round to 0 are
dropped (they would not be indexed anyway). Dequantisation is ``impact / scale``; the round-trip error of an
unclipped weight is at most ``0.5 / scale``. Query weights use the same scale, so a Lucene score is
``sum_t q_impact_t * d_impact_t = scale^2 * <q, d>`` up to rounding: the ranking of the float model is preserved.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from recsparse.types import check_positive

DEFAULT_SCALE = 100.0
# Lucene keeps term frequencies as int; a generous cap that no realistic weight * scale reaches.
DEFAULT_MAX_IMPACT = 2**16 - 1


def quantize(w: torch.Tensor, scale: float = DEFAULT_SCALE, max_impact: int = DEFAULT_MAX_IMPACT) -> torch.Tensor:
    """Float weights (any shape, >= 0 expected) -> int32 impacts ``clip(round(w * scale), 0, max_impact)``."""
    check_positive("scale", scale)
    check_positive("max_impact", max_impact)
    return torch.clamp(torch.round(w.float() * scale), 0, max_impact).to(torch.int32)


def dequantize(impacts: torch.Tensor, scale: float = DEFAULT_SCALE) -> torch.Tensor:
    check_positive("scale", scale)
    return impacts.float() / scale


def to_term_dicts(w: torch.Tensor, id_to_token: Sequence[str | None], scale: float = DEFAULT_SCALE,
                  max_impact: int = DEFAULT_MAX_IMPACT) -> list[dict[str, int]]:
    """``(B, V)`` float weights -> one ``{word piece: impact}`` dict per row (zero impacts and ids whose token is
    ``None`` -- special tokens -- dropped)."""
    imp = quantize(w, scale, max_impact)
    rows, cols = imp.nonzero(as_tuple=True)
    vals = imp[rows, cols]
    out: list[dict[str, int]] = [{} for _ in range(w.shape[0])]
    for r, c, v in zip(rows.tolist(), cols.tolist(), vals.tolist()):
        t = id_to_token[c]
        if t is not None:
            out[r][t] = v
    return out


def prune_threshold(impact_dicts: list[dict[str, int]], min_impact: int) -> list[dict[str, int]]:
    """Drop impacts below ``min_impact`` (post-hoc sparsification, used to match document sparsity across models)."""
    return [{t: v for t, v in d.items() if v >= min_impact} for d in impact_dicts]


def threshold_for_nnz(impact_dicts: list[dict[str, int]], target_avg_nnz: float) -> int:
    """Smallest integer threshold whose pruning brings the average non-zeros per vector to <= ``target_avg_nnz``."""
    vals = sorted((v for d in impact_dicts for v in d.values()), reverse=True)
    budget = int(target_avg_nnz * len(impact_dicts))
    if budget >= len(vals):
        return 1
    # keep every value strictly above the value at the budget position (ties are dropped so nnz <= target)
    return vals[budget] + 1


def fold_query_weights(impacts: Sequence[Mapping[str, int]], query_impacts: Mapping[str, int],
                       scale: float = DEFAULT_SCALE) -> list[dict[str, int]]:
    """Fold a fixed (inference-free) query table into document impacts: ``d'_t = round(q_t * d_t / scale)``, terms
    with no query weight or a zero product dropped. A query then weighs each of its terms 1, and its score is
    ``sum_t q_t d_t / scale`` up to the rounding of each product (relative error <= 0.5 / d'_t)."""
    check_positive("scale", scale)
    return [{t: p for t, v in d.items() if (w := query_impacts.get(t, 0)) > 0 and (p := round(v * w / scale)) > 0}
            for d in impacts]
