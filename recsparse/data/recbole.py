"""RecBole atomic files (``.inter``, ``.user``, ``.item``): tab-separated, header of ``name:type`` columns.

Types: ``token`` -> str, ``token_seq`` -> list[str] (space-separated), ``float`` -> f64, ``float_seq`` -> list[f64].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recsparse.data._lines import numbered_lines, parse_float
from recsparse.data.errors import DataFormatError

_TYPES = {"token": pl.Utf8, "token_seq": pl.List(pl.Utf8), "float": pl.Float64, "float_seq": pl.List(pl.Float64)}


def read_atomic(path: str | Path, unique: str | None = None) -> pl.DataFrame:
    """Read one atomic file. ``unique`` names a column whose values must not repeat (the id of a .user/.item file).

    Errors (file:line): bad header or type, wrong column count, a float that does not parse, a duplicate id,
    truncation.
    """
    path = Path(path)
    lines = numbered_lines(path)
    try:
        _, header = next(lines)
    except StopIteration:
        raise DataFormatError(path, 1, "empty file (expected a 'name:type' header)") from None
    names: list[str] = []
    types: list[str] = []
    for col in header.split("\t"):
        name, sep, typ = col.partition(":")
        if not sep or typ not in _TYPES:
            raise DataFormatError(path, 1, f"header column {col!r} is not 'name:type' with type in {sorted(_TYPES)}")
        names.append(name)
        types.append(typ)
    if unique is not None and unique not in names:
        raise DataFormatError(path, 1, f"header has no column {unique!r}")
    cols: list[list] = [[] for _ in names]
    seen: dict[str, int] = {}
    uidx = names.index(unique) if unique else -1
    for n, line in lines:
        fields = line.split("\t")
        if len(fields) != len(names):
            raise DataFormatError(path, n, f"expected {len(names)} tab-separated columns, got {len(fields)}")
        for j, (v, typ) in enumerate(zip(fields, types)):
            if typ == "token":
                cols[j].append(v)
            elif typ == "token_seq":
                cols[j].append(v.split())
            elif typ == "float":
                cols[j].append(parse_float(path, n, v, f"column {names[j]!r}"))
            else:
                cols[j].append([parse_float(path, n, x, f"column {names[j]!r}") for x in v.split()])
        if uidx >= 0:
            key = fields[uidx]
            if key in seen:
                raise DataFormatError(path, n, f"duplicate {unique} {key!r} (first on line {seen[key]})")
            seen[key] = n
    return pl.DataFrame({nm: pl.Series(nm, c, dtype=_TYPES[t]) for nm, c, t in zip(names, cols, types)})


@dataclass(frozen=True)
class AtomicDataset:
    """A RecBole dataset: interactions plus optional user and item feature frames."""

    name: str
    inter: pl.DataFrame
    user: pl.DataFrame | None
    item: pl.DataFrame | None

    def counts(self) -> dict[str, int]:
        return {"ratings": self.inter.height, "users": self.inter["user_id"].n_unique(),
                "items": self.inter["item_id"].n_unique()}


def load_recbole(folder: str | Path, name: str | None = None) -> AtomicDataset:
    """Read ``NAME.inter`` (+ ``NAME.user`` / ``NAME.item`` when present). With a ``.user`` / ``.item`` file, every
    user / item of the interactions must be listed in it (file:line of the first one that is not)."""
    folder = Path(folder)
    name = name or folder.name
    inter_path = folder / f"{name}.inter"
    inter = read_atomic(inter_path)
    for col in ("user_id", "item_id"):
        if col not in inter.columns:
            raise DataFormatError(inter_path, 1, f"header has no column '{col}'")
    feats = {}
    for side in ("user", "item"):
        p = folder / f"{name}.{side}"
        feats[side] = read_atomic(p, unique=f"{side}_id") if p.is_file() else None
        if feats[side] is not None:
            _check_listed(inter, inter_path, f"{side}_id", feats[side], p)
    return AtomicDataset(name, inter, feats["user"], feats["item"])


def _check_listed(inter: pl.DataFrame, inter_path: Path, col: str, table: pl.DataFrame, table_path: Path) -> None:
    missing = ~inter[col].is_in(table[col].implode())
    if bool(missing.any()):
        row = int(missing.arg_true()[0])
        # row k of the frame is line k + 2 of the file (header on line 1, every line is a row)
        raise DataFormatError(inter_path, row + 2, f"{col} {inter[col][row]!r} is not listed in {table_path.name} "
                                                   f"({int(missing.sum())} interaction(s) with unlisted ids)")
