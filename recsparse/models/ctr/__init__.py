"""CTR models, one file each, one anatomy: embeddings (any id-mapper or unified embedding) -> interaction -> head.

=============  ===============================================================================================
``lr``         :class:`LogisticRegression` — first-order term only
``fm``         :class:`FM` — first order + pairwise factorised interactions
``wide_deep``  :class:`WideDeep` — first order (wide) + MLP (deep)
``deepfm``     :class:`DeepFM` — first order + FM + MLP over shared embeddings
``dcn_v2``     :class:`DCNv2` — cross network (full rank or low-rank mixture), stacked or parallel with an MLP
``dlrm``       :class:`DLRM` — bottom MLP for dense features, dot interaction, top MLP
``autoint``    :class:`AutoInt` — multi-head self-attention across fields (+ MLP: AutoInt+)
=============  ===============================================================================================

``build_ctr_model(name, fitted_spec, dim=16, **kwargs)``; every model: ``forward(kjt, dense) -> logits [B]``.
"""

from __future__ import annotations

from typing import Any

from recsparse.embeddings.features import FittedFeatureSpec
from recsparse.models.ctr.autoint import AutoInt
from recsparse.models.ctr.base import CTRModel, FeatureEmbeddings, LinearTerms
from recsparse.models.ctr.dcn_v2 import DCNv2
from recsparse.models.ctr.deepfm import DeepFM
from recsparse.models.ctr.dlrm import DLRM
from recsparse.models.ctr.fm import FM
from recsparse.models.ctr.lr import LogisticRegression
from recsparse.models.ctr.wide_deep import WideDeep

CTR_MODELS: dict[str, type[CTRModel]] = {"lr": LogisticRegression, "fm": FM, "wide_deep": WideDeep,
                                         "deepfm": DeepFM, "dcn_v2": DCNv2, "dlrm": DLRM, "autoint": AutoInt}


def build_ctr_model(name: str, fitted: FittedFeatureSpec, dim: int = 16, backend: str = "torch", seed: int = 0,
                    **kwargs: Any) -> CTRModel:
    """The model registered as ``name`` (:data:`CTR_MODELS`); ``kwargs`` go to its constructor."""
    if name not in CTR_MODELS:
        raise ValueError(f"CTR model must be one of {sorted(CTR_MODELS)}, got {name!r}")
    try:
        return CTR_MODELS[name](fitted, dim=dim, backend=backend, seed=seed, **kwargs)
    except TypeError as e:
        raise ValueError(f"model {name!r}: {e}") from None


__all__ = ["CTR_MODELS", "build_ctr_model", "CTRModel", "FeatureEmbeddings", "LinearTerms", "LogisticRegression",
           "FM", "WideDeep", "DeepFM", "DCNv2", "DLRM", "AutoInt"]
