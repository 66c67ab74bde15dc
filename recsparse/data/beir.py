"""BEIR-format retrieval collections: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``.

Any folder in this layout loads, registered or not.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import polars as pl

from recsparse.data._lines import numbered_lines
from recsparse.data.errors import DataFormatError


# qrels grades go to trec_eval (pytrec_eval / ir_measures) as C ints
SCORE_MIN, SCORE_MAX = -(2**31), 2**31 - 1
_INT = re.compile(r"-?[0-9]+")
_WS = re.compile(r"\s")


def id_problem(v: str) -> str | None:
    """Why ``v`` cannot be a document / query id (run files and qrels are whitespace-separated), or ``None``."""
    if not v:
        return "is empty"
    if _WS.search(v):
        return "contains whitespace"
    return None


def read_jsonl(path: str | Path, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> pl.DataFrame:
    """Read a BEIR jsonl file into a frame with ``fields`` (required strings) and ``optional`` (default "").

    Errors (file:line): invalid JSON, a missing or non-string field, a null, empty or whitespace-containing or
    duplicate ``_id``, truncation. An integer ``_id`` is read as its decimal string.
    """
    path = Path(path)
    cols: dict[str, list[str]] = {f: [] for f in (*fields, *optional)}
    seen: dict[str, int] = {}
    for n, line in numbered_lines(path):
        if not line.strip():
            raise DataFormatError(path, n, "empty line")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, n, f"invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, n, "expected a JSON object")
        for f in fields:
            if f not in obj:
                raise DataFormatError(path, n, f"missing field {f!r}")
        for f in (*fields, *optional):
            v = obj.get(f, "")
            if f == "_id":
                if isinstance(v, int) and not isinstance(v, bool):
                    v = str(v)
                if v is None or not isinstance(v, str):
                    raise DataFormatError(path, n, f"_id must be a string, got {'null' if v is None else repr(v)}")
                bad = id_problem(v)
                if bad:
                    raise DataFormatError(path, n, f"_id {v!r} {bad}")
            elif v is None:
                v = ""
            if not isinstance(v, str):
                raise DataFormatError(path, n, f"field {f!r} must be a string, got {type(v).__name__}")
            cols[f].append(v)
        _id = cols["_id"][-1]
        if _id in seen:
            raise DataFormatError(path, n, f"duplicate _id {_id!r} (first on line {seen[_id]})")
        seen[_id] = n
    return pl.DataFrame(cols, schema={f: pl.Utf8 for f in cols})


def read_qrels(path: str | Path) -> pl.DataFrame:
    """Read a BEIR qrels tsv (header ``query-id corpus-id score``) into ``(query_id, doc_id, score: i64)``."""
    path = Path(path)
    q: list[str] = []
    d: list[str] = []
    s: list[int] = []
    seen: dict[tuple[str, str], int] = {}
    for n, line in numbered_lines(path):
        parts = line.split("\t")
        if n == 1:
            if parts != ["query-id", "corpus-id", "score"]:
                raise DataFormatError(path, 1, f"header must be 'query-id<TAB>corpus-id<TAB>score', got {line!r}")
            continue
        if len(parts) != 3:
            raise DataFormatError(path, n, f"expected 3 tab-separated columns, got {len(parts)}")
        for what, v in (("query-id", parts[0]), ("corpus-id", parts[1])):
            bad = id_problem(v)
            if bad:
                raise DataFormatError(path, n, f"{what} {v!r} {bad}")
        if not _INT.fullmatch(parts[2]):
            raise DataFormatError(path, n, f"score {parts[2]!r} is not an integer")
        score = int(parts[2])
        if not SCORE_MIN <= score <= SCORE_MAX:
            raise DataFormatError(path, n, f"score {score} is out of range [{SCORE_MIN}, {SCORE_MAX}] (a relevance "
                                           f"grade, e.g. 0, 1, 2)")
        key = (parts[0], parts[1])
        if key in seen:
            raise DataFormatError(path, n, f"duplicate judgment for query {key[0]!r}, doc {key[1]!r} "
                                           f"(first on line {seen[key]})")
        seen[key] = n
        q.append(parts[0])
        d.append(parts[1])
        s.append(score)
    return pl.DataFrame({"query_id": q, "doc_id": d, "score": s}, schema={"query_id": pl.Utf8, "doc_id": pl.Utf8,
                                                                           "score": pl.Int64})


def corpus_fingerprint(corpus: pl.DataFrame, columns: Sequence[str] = ("_id", "title", "text")) -> str:
    """sha256 (first 16 hex) of the corpus columns, row by row in order.

    Every index and embedding cache records the fingerprint of the corpus it was built from, so an index is never
    searched (or an embedding cache used) for another corpus.
    """
    h = hashlib.sha256()
    cols = [c for c in columns if c in corpus.columns]
    for row in corpus.select(cols).iter_rows():
        for v in row:
            h.update((v or "").encode("utf-8"))
            h.update(b"\x1f")
        h.update(b"\x1e")
    return h.hexdigest()[:16]


@dataclass
class BeirDataset:
    """A BEIR collection. ``corpus``: (_id, title, text); ``queries``: (_id, text); ``qrels``: split -> frame."""

    name: str
    folder: Path
    corpus: pl.DataFrame
    queries: pl.DataFrame
    qrels: dict[str, pl.DataFrame] = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        """:func:`corpus_fingerprint` of ``corpus`` (computed once)."""
        return corpus_fingerprint(self.corpus)

    def split_queries(self, split: str = "test") -> dict[str, str]:
        """Query id -> text for the queries judged in ``split``."""
        ids = set(self.qrels_for(split)["query_id"].to_list())
        return {i: t for i, t in zip(self.queries["_id"], self.queries["text"]) if i in ids}

    def qrels_for(self, split: str = "test") -> pl.DataFrame:
        if split not in self.qrels:
            raise KeyError(f"{self.folder}: no qrels split {split!r} (have {sorted(self.qrels)})")
        return self.qrels[split]

    def qrels_dict(self, split: str = "test") -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for q, d, s in self.qrels_for(split).iter_rows():
            out.setdefault(q, {})[d] = s
        return out

    def counts(self) -> dict[str, int]:
        c = {"documents": self.corpus.height, "queries": self.queries.height}
        if "test" in self.qrels:
            c["test_queries"] = self.qrels["test"]["query_id"].n_unique()
        return c


def load_beir(folder: str | Path, name: str | None = None) -> BeirDataset:
    """Load a BEIR folder. Besides each file's own checks (file:line), an empty corpus and a judged query missing
    from ``queries.jsonl`` are errors: either would otherwise give silently wrong metrics."""
    folder = Path(folder)
    corpus = read_jsonl(folder / "corpus.jsonl", ("_id",), ("title", "text"))
    if corpus.height == 0:
        raise DataFormatError(folder / "corpus.jsonl", None, "no documents: the corpus is empty")
    queries = read_jsonl(folder / "queries.jsonl", ("_id", "text"))
    qrels = {p.stem: read_qrels(p) for p in sorted((folder / "qrels").glob("*.tsv"))}
    known = set(queries["_id"].to_list())
    for split, frame in qrels.items():
        missing = set(frame["query_id"].unique().to_list()) - known
        if missing:
            raise _unknown_query(folder / "qrels" / f"{split}.tsv", missing, folder / "queries.jsonl")
    return BeirDataset(name or folder.name, folder, corpus, queries, qrels)


def _unknown_query(qrels_file: Path, missing: set[str], queries_file: Path) -> DataFormatError:
    """The error for the first qrels line that judges a query absent from queries.jsonl."""
    for n, line in numbered_lines(qrels_file):
        qid = line.split("\t", 1)[0]
        if n > 1 and qid in missing:
            more = f" ({len(missing) - 1} more such queries)" if len(missing) > 1 else ""
            return DataFormatError(qrels_file, n, f"query-id {qid!r} is judged but not in {queries_file}{more}")
    raise AssertionError("unreachable: a missing query id has a qrels line")
