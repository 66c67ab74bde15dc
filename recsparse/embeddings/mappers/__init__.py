"""Id-mappers: raw categorical id -> row(s) of an embedding table (the :class:`recsparse.types.IdMapper` seam).

One file per family: :mod:`.full` (vocabulary + OOV), :mod:`.modulo`, :mod:`.universal` (k-hash, double hashing),
:mod:`.frequency` (head ids exact, tail hashed), :mod:`.qr` (quotient–remainder), :mod:`.graphhash` (GraphHash and
DoubleGraphHash). Configs name mappers through :data:`MAPPERS` / :func:`build_mapper`::

    m = build_mapper("universal", num_ids=40_981, num_rows=10_000, num_hashes=2, seed=0)
    rows = m.transform(ids)            # [N] -> [N, 2], all in [0, 10_000)
    users, items = build_mapper("graphhash", num_ids=U).fit_bipartite(train, resolution=200, num_users=U, num_items=I)

``num_rows=None`` picks a sensible default per family: the full table for ``full`` (which rejects any other
``num_rows``), ``num_ids // 4`` (the 75 %
smaller regime of GraphHash) for the hashing family, ``2·ceil(√N)`` for ``qr``; GraphHash sizes itself from the
clustering (``resolution``).
"""

from __future__ import annotations

from typing import Any, Callable

from recsparse.embeddings.mappers.base import PRIME, MapperBase, MapperStateError
from recsparse.embeddings.mappers.frequency import FrequencyHashMapper
from recsparse.embeddings.mappers.full import FullMapper
from recsparse.embeddings.mappers.graphhash import (BipartiteClustering, DoubleGraphHashMapper, GraphHashMapper,
                                                    cluster_bipartite)
from recsparse.embeddings.mappers.modulo import ModuloMapper
from recsparse.embeddings.mappers.qr import QRMapper
from recsparse.embeddings.mappers.universal import UniversalHashMapper


def _hash_rows(num_ids: int, num_rows: int | None) -> int:
    return max(1, num_ids // 4) if num_rows is None else num_rows


def _graph(cls: type) -> Callable[..., MapperBase]:
    def make(num_ids: int, num_rows: int | None, **kw: Any) -> MapperBase:
        if cls is DoubleGraphHashMapper and num_rows is not None and "num_hash_rows" not in kw:
            raise ValueError("double_graphhash sizes its cluster part from the clustering; pass num_hash_rows= "
                             "(not num_rows) to size the hashed part")
        if cls is GraphHashMapper and num_rows is not None:
            raise ValueError("graphhash sizes itself from the clustering: set resolution=, not num_rows")
        return cls(num_ids, **kw)
    return make


def _full(num_ids: int, num_rows: int | None, **kw: Any) -> MapperBase:
    _no_kwargs("full", kw)
    if num_rows is not None and num_rows != num_ids + 1:
        raise ValueError(f"mapper 'full' has one row per id plus one OOV row ({num_ids + 1} rows for num_ids="
                         f"{num_ids}); num_rows={num_rows} cannot be honoured: drop num_rows (model.user_rows / "
                         "item_rows) or pick a hashing mapper (modulo, universal, frequency, qr)")
    return FullMapper(num_ids)


def _modulo(num_ids: int, num_rows: int | None, **kw: Any) -> MapperBase:
    _no_kwargs("modulo", kw)
    return ModuloMapper(_hash_rows(num_ids, num_rows))


def _no_kwargs(name: str, kw: dict[str, Any]) -> None:
    if kw:
        raise ValueError(f"mapper {name!r} takes no options, got {sorted(kw)} (mapper_kwargs)")


# name -> factory(num_ids, num_rows, **kw)
MAPPERS: dict[str, Callable[..., MapperBase]] = {
    "full": _full,
    "modulo": _modulo,
    "universal": lambda num_ids, num_rows, **kw: UniversalHashMapper(_hash_rows(num_ids, num_rows), **kw),
    "frequency": lambda num_ids, num_rows, **kw: FrequencyHashMapper(_hash_rows(num_ids, num_rows), **kw),
    "qr": lambda num_ids, num_rows, **kw: QRMapper(num_ids, num_rows, **kw),
    "graphhash": _graph(GraphHashMapper),
    "double_graphhash": _graph(DoubleGraphHashMapper),
}

_CLASSES: dict[str, type] = {"full": FullMapper, "modulo": ModuloMapper, "universal": UniversalHashMapper,
                             "frequency": FrequencyHashMapper, "qr": QRMapper, "graphhash": GraphHashMapper,
                             "double_graphhash": DoubleGraphHashMapper}


def build_mapper(name: str, num_ids: int, num_rows: int | None = None, **kw: Any) -> MapperBase:
    """Build the mapper registered as ``name`` (see :data:`MAPPERS`); ``kw`` go to its constructor."""
    if name not in MAPPERS:
        raise ValueError(f"mapper must be one of {sorted(MAPPERS)}, got {name!r}")
    try:
        return MAPPERS[name](num_ids, num_rows, **kw)
    except TypeError as e:  # an option the constructor does not take
        raise ValueError(f"mapper {name!r}: {e} (check mapper_kwargs)") from None


def mapper_from_state(state: dict[str, Any]) -> MapperBase:
    """Rebuild a mapper from its ``state_dict()`` (e.g. after ``torch.load(path, weights_only=True)``); the state is
    validated (:class:`MapperStateError` names the mapper and field)."""
    name = state.get("mapper")
    if name not in _CLASSES:
        raise MapperStateError(f"mapper state: 'mapper' must be one of {sorted(_CLASSES)}, got {name!r}")
    cls = _CLASSES[name]
    m = cls.__new__(cls)
    m.load_state_dict(state)
    return m


__all__ = ["MAPPERS", "build_mapper", "mapper_from_state", "MapperBase", "MapperStateError", "PRIME", "FullMapper", "ModuloMapper",
           "UniversalHashMapper", "FrequencyHashMapper", "QRMapper", "GraphHashMapper", "DoubleGraphHashMapper",
           "BipartiteClustering", "cluster_bipartite"]
