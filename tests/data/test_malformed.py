"""Malformed input: every loader error names the file and the line, and loading writes nothing.

Each case starts from the first lines of a real shared file and corrupts one line, so the good lines around the bad
one are real data.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pytest

from recsparse.data import (DataFormatError, read_atomic, read_id_list, read_interactions, read_jsonl, read_qrels)
from tests.conftest import dataset_path


def head(path: Path, n: int) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [next(f) for _ in range(n)]


def corrupt(tmp_path: Path, src: Path, n: int, line: int, new: str | None, name: str | None = None) -> Path:
    """First ``n`` lines of ``src`` with 1-based ``line`` replaced by ``new`` (None: keep), written to tmp."""
    lines = head(src, n)
    if new is not None:
        lines[line - 1] = new
    out = tmp_path / (name or src.name)
    out.write_text("".join(lines), encoding="utf-8")
    return out


def truncate(tmp_path: Path, src: Path, n: int) -> Path:
    """First ``n`` lines, the last one cut in half without its newline (an interrupted copy)."""
    lines = head(src, n)
    lines[-1] = lines[-1][: len(lines[-1]) // 2]
    out = tmp_path / src.name
    out.write_text("".join(lines), encoding="utf-8")
    return out


GOW = lambda: dataset_path("gowalla")  # noqa: E731
ML = lambda: dataset_path("ml-100k")  # noqa: E731
SF = lambda: dataset_path("scifact")  # noqa: E731

# (case id, builder(tmp) -> path, reader, expected line, message fragment)
CASES: list[tuple[str, Callable[[Path], Path], Callable[[Path], object], int, str]] = [
    ("lightgcn-non-integer-item", lambda t: corrupt(t, GOW() / "train.txt", 20, 7, "6 12 x13 14\n"),
     read_interactions, 7, "item id 'x13' is not an integer"),
    ("lightgcn-non-integer-user", lambda t: corrupt(t, GOW() / "test.txt", 20, 3, "u2 5 6\n"),
     read_interactions, 3, "user id 'u2' is not an integer"),
    ("lightgcn-negative-id", lambda t: corrupt(t, GOW() / "train.txt", 20, 11, "10 -4 8\n"),
     read_interactions, 11, "item id -4 is negative"),
    ("lightgcn-duplicate-user", lambda t: corrupt(t, GOW() / "train.txt", 20, 15, "3 1 2\n"),
     read_interactions, 15, "duplicate user id 3 (first on line 4)"),
    ("lightgcn-duplicate-item", lambda t: corrupt(t, GOW() / "test.txt", 20, 5, "4 9 10 9\n"),
     read_interactions, 5, "item id 9 listed twice"),
    ("lightgcn-empty-line", lambda t: corrupt(t, GOW() / "train.txt", 20, 9, "\n"),
     read_interactions, 9, "empty line"),
    ("lightgcn-truncated", lambda t: truncate(t, GOW() / "train.txt", 30),
     read_interactions, 30, "looks truncated"),
    ("idlist-bad-header", lambda t: corrupt(t, GOW() / "user_list.txt", 10, 1, "org remap\n"),
     read_id_list, 1, "header must be 'org_id remap_id'"),
    ("idlist-wrong-columns", lambda t: corrupt(t, GOW() / "item_list.txt", 10, 6, "12 4 extra\n"),
     read_id_list, 6, "expected 2 columns"),
    ("idlist-duplicate-remap", lambda t: corrupt(t, GOW() / "item_list.txt", 10, 8, "99999 2\n"),
     read_id_list, 8, "duplicate remap_id 2 (first on line 4)"),
    ("atomic-wrong-column-count", lambda t: corrupt(t, ML() / "ml-100k.inter", 50, 23, "196\t242\t3\n"),
     read_atomic, 23, "expected 4 tab-separated columns, got 3"),
    ("atomic-bad-float", lambda t: corrupt(t, ML() / "ml-100k.inter", 50, 31, "196\t242\tthree\t881250949\n"),
     read_atomic, 31, "column 'rating': 'three' is not a float"),
    ("atomic-nan-rating", lambda t: corrupt(t, ML() / "ml-100k.inter", 50, 17, "196\t242\tnan\t881250949\n"),
     read_atomic, 17, "column 'rating': 'nan' is not a finite number"),
    ("atomic-inf-rating", lambda t: corrupt(t, ML() / "ml-100k.inter", 50, 18, "196\t242\t-inf\t881250949\n"),
     read_atomic, 18, "column 'rating': '-inf' is not a finite number"),
    ("lightgcn-int64-overflow", lambda t: corrupt(t, GOW() / "train.txt", 12, 5, "4 1 99999999999999999999999\n"),
     read_interactions, 5, "item id 99999999999999999999999 does not fit in a 64-bit integer"),
    ("id-list-gap", lambda t: corrupt(t, GOW() / "item_list.txt", 10, 6, "77777 42\n"),
     read_id_list, 6, "remap_id 42 but only 9 ids are listed"),
    ("atomic-bad-header-type", lambda t: corrupt(t, ML() / "ml-100k.inter", 5, 1,
                                                 "user_id:token\titem_id:token\trating:number\ttimestamp:float\n"),
     read_atomic, 1, "header column 'rating:number'"),
    ("atomic-duplicate-user", lambda t: corrupt(t, ML() / "ml-100k.user", 40, 12, "5\t33\tF\tother\t15213\n"),
     lambda p: read_atomic(p, unique="user_id"), 12, "duplicate user_id '5' (first on line 6)"),
    ("atomic-truncated", lambda t: truncate(t, ML() / "ml-100k.item", 25),
     lambda p: read_atomic(p, unique="item_id"), 25, "looks truncated"),
    ("jsonl-invalid-json", lambda t: corrupt(t, SF() / "corpus.jsonl", 12, 4, '{"_id": "x", "text": \n'),
     lambda p: read_jsonl(p, ("_id",), ("title", "text")), 4, "invalid JSON"),
    ("jsonl-missing-id", lambda t: corrupt(t, SF() / "queries.jsonl", 12, 9, '{"text": "a claim"}\n'),
     lambda p: read_jsonl(p, ("_id", "text")), 9, "missing field '_id'"),
    ("jsonl-duplicate-id", lambda t: corrupt(t, SF() / "queries.jsonl", 12, 10, '{"_id": "0", "text": "again"}\n'),
     lambda p: read_jsonl(p, ("_id", "text")), 10, "duplicate _id '0' (first on line 1)"),
    ("jsonl-non-string-text", lambda t: corrupt(t, SF() / "queries.jsonl", 12, 2, '{"_id": "q", "text": 17}\n'),
     lambda p: read_jsonl(p, ("_id", "text")), 2, "field 'text' must be a string"),
    ("jsonl-truncated", lambda t: truncate(t, SF() / "corpus.jsonl", 8),
     lambda p: read_jsonl(p, ("_id",), ("title", "text")), 8, "looks truncated"),
    ("jsonl-not-utf8", lambda t: _bytes(t, SF() / "queries.jsonl", 6, 5, b'{"_id": "z", "text": "\xff\xfe"}\n'),
     lambda p: read_jsonl(p, ("_id", "text")), 5, "not valid UTF-8"),
    ("qrels-bad-header", lambda t: corrupt(t, SF() / "qrels" / "test.tsv", 10, 1, "qid\tdocid\trel\n"),
     read_qrels, 1, "header must be"),
    ("qrels-wrong-columns", lambda t: corrupt(t, SF() / "qrels" / "test.tsv", 10, 6, "13 5 1\n"),
     read_qrels, 6, "expected 3 tab-separated columns, got 1"),
    ("qrels-non-integer-score", lambda t: corrupt(t, SF() / "qrels" / "train.tsv", 10, 3, "0\t31715818\thigh\n"),
     read_qrels, 3, "score 'high' is not an integer"),
    ("qrels-duplicate-judgment", lambda t: corrupt(t, SF() / "qrels" / "test.tsv", 10, 7, "1\t31715818\t1\n"),
     read_qrels, 7, "duplicate judgment for query '1'"),
    # ids that would break run files or count as different queries, grades trec_eval cannot hold
    ("qrels-score-out-of-range", lambda t: corrupt(t, SF() / "qrels" / "test.tsv", 10, 4,
                                                   "1\t31715818\t99999999999999999999\n"),
     read_qrels, 4, "score 99999999999999999999 is out of range"),
    ("qrels-score-padded", lambda t: corrupt(t, SF() / "qrels" / "test.tsv", 10, 5, "1\t31715818\t 1\n"),
     read_qrels, 5, "score ' 1' is not an integer"),
    ("qrels-score-underscored", lambda t: corrupt(t, SF() / "qrels" / "test.tsv", 10, 5, "1\t31715818\t1_0\n"),
     read_qrels, 5, "score '1_0' is not an integer"),
    ("qrels-empty-query-id", lambda t: corrupt(t, SF() / "qrels" / "train.tsv", 10, 8, "\t31715818\t1\n"),
     read_qrels, 8, "query-id '' is empty"),
    ("qrels-doc-id-with-space", lambda t: corrupt(t, SF() / "qrels" / "train.tsv", 10, 2, "0\t317 15818\t1\n"),
     read_qrels, 2, "corpus-id '317 15818' contains whitespace"),
    ("jsonl-null-id", lambda t: corrupt(t, SF() / "queries.jsonl", 12, 3, '{"_id": null, "text": "a claim"}\n'),
     lambda p: read_jsonl(p, ("_id", "text")), 3, "_id must be a string, got null"),
    ("jsonl-empty-id", lambda t: corrupt(t, SF() / "corpus.jsonl", 12, 5, '{"_id": "", "title": "", "text": "x"}\n'),
     lambda p: read_jsonl(p, ("_id",), ("title", "text")), 5, "_id '' is empty"),
    ("jsonl-whitespace-id", lambda t: corrupt(t, SF() / "corpus.jsonl", 12, 6,
                                              '{"_id": "a b", "title": "", "text": "x"}\n'),
     lambda p: read_jsonl(p, ("_id",), ("title", "text")), 6, "_id 'a b' contains whitespace"),
    ("jsonl-boolean-id", lambda t: corrupt(t, SF() / "queries.jsonl", 12, 7, '{"_id": true, "text": "a claim"}\n'),
     lambda p: read_jsonl(p, ("_id", "text")), 7, "_id must be a string, got True"),
]


def _bytes(tmp_path: Path, src: Path, n: int, line: int, new: bytes) -> Path:
    lines = [s.encode() for s in head(src, n)]
    lines[line - 1] = new
    out = tmp_path / src.name
    out.write_bytes(b"".join(lines))
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_error_names_file_and_line(case, tmp_path):
    _, build, reader, line, fragment = case
    path = build(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataFormatError) as e:
        reader(path)
    assert str(e.value).startswith(f"{path}:{line}: "), str(e.value)
    assert e.value.line == line and e.value.path == str(path)
    assert fragment in str(e.value), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # a failed load leaves nothing behind


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataFormatError, match=re.escape(str(tmp_path / "train.txt")) + ": file not found"):
        read_interactions(tmp_path / "train.txt")


def test_cli_verify_reports_corrupt_dataset(tmp_path, monkeypatch):
    """`recsparse data verify` exits 1 and names the failing file when a dataset copy is corrupt."""
    import shutil

    from typer.testing import CliRunner

    from recsparse.cli import app

    shutil.copytree(dataset_path("cranfield"), tmp_path / "cranfield")
    q = tmp_path / "cranfield" / "queries.jsonl"
    q.chmod(0o644)
    q.write_text(q.read_text()[:-300])
    monkeypatch.setenv("RECSPARSE_DATA", str(tmp_path))
    res = CliRunner().invoke(app, ["data", "verify", "cranfield", "--json"])
    assert res.exit_code == 1
    assert "queries.jsonl: sha256 mismatch" in res.output


def _gowalla_folder(tmp_path: Path, lists: bool, train_line: tuple[int, str] | None = None,
                    test_line: tuple[int, str] | None = None) -> Path:
    """The first 40 users of Gowalla (train and test lines as published) with the full id lists; one line replaced."""
    d = tmp_path / "gow"
    d.mkdir(parents=True)
    for name, repl in (("train.txt", train_line), ("test.txt", test_line)):
        corrupt(d, GOW() / name, 40, *(repl or (1, None)))
    if lists:
        for name in ("user_list.txt", "item_list.txt"):
            (d / name).write_text((GOW() / name).read_text())
    return d


def test_ids_beyond_the_declared_catalogue_name_file_and_line(tmp_path):
    """An item id 999999999999 used to be accepted (the catalogue grew to max id + 1: terabytes of rows later)."""
    from recsparse.data import load_lightgcn

    d = _gowalla_folder(tmp_path, True, train_line=(7, "6 11 999999999999 12\n"))
    with pytest.raises(DataFormatError, match=re.escape(f"{d / 'train.txt'}:7: item id 999999999999 is beyond the "
                                                        "catalogue (item_list.txt lists 40981 items: ids 0..40980)")):
        load_lightgcn(d)


def test_test_item_missing_from_the_item_list(tmp_path):
    from recsparse.data import load_lightgcn

    d = _gowalla_folder(tmp_path, True, test_line=(3, "2 40981\n"))
    with pytest.raises(DataFormatError, match=re.escape(f"{d / 'test.txt'}:3: item id 40981 is beyond the catalogue")):
        load_lightgcn(d)
    d2 = _gowalla_folder(tmp_path / "u", True, test_line=(3, "29858 5\n"))
    with pytest.raises(DataFormatError, match=re.escape(f"{d2 / 'test.txt'}:3: user id 29858 is beyond the")):
        load_lightgcn(d2)


def test_sparse_id_without_lists_is_rejected(tmp_path):
    from recsparse.data import load_lightgcn

    d = _gowalla_folder(tmp_path, False, train_line=(9, "8 999999999999 3\n"))
    with pytest.raises(DataFormatError, match=re.escape(f"{d / 'train.txt'}:9: item id 999999999999 would make a "
                                                        "catalogue of 1000000000000 items")):
        load_lightgcn(d)
    ok = load_lightgcn(_gowalla_folder(tmp_path / "ok", False))
    assert ok.num_users == 40


def test_interaction_with_an_unlisted_item(tmp_path):
    from recsparse.data import load_recbole

    d = tmp_path / "ml-100k"
    d.mkdir()
    corrupt(d, ML() / "ml-100k.inter", 60, 44, "196\t99999\t3\t881250949\n")
    for ext in ("user", "item"):
        (d / f"ml-100k.{ext}").write_text((ML() / f"ml-100k.{ext}").read_text())
    with pytest.raises(DataFormatError, match=re.escape(f"{d / 'ml-100k.inter'}:44: item_id '99999' is not listed in "
                                                        "ml-100k.item")):
        load_recbole(d)


def _beir_copy(tmp_path: Path, n_docs: int = 30) -> Path:
    """A real SciFact slice: its first documents, every query, the test qrels (folder layout of BEIR)."""
    src = SF()
    dst = tmp_path / "sf"
    (dst / "qrels").mkdir(parents=True)
    (dst / "corpus.jsonl").write_text("".join(head(src / "corpus.jsonl", n_docs)), encoding="utf-8")
    (dst / "queries.jsonl").write_text((src / "queries.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    (dst / "qrels" / "test.tsv").write_text("".join(head(src / "qrels" / "test.tsv", 20)), encoding="utf-8")
    return dst


def test_judged_query_missing_from_queries_names_the_qrels_line(tmp_path):
    """Before: the query was averaged in as 0 while the report counted fewer queries. Now: file:line of the first
    judgment of an unknown query."""
    from recsparse.data import load_beir

    d = _beir_copy(tmp_path)
    qrels = (d / "qrels" / "test.tsv").read_text().splitlines(keepends=True)
    gone = qrels[6].split("\t")[0]
    first = next(i for i, r in enumerate(qrels) if r.split("\t")[0] == gone) + 1
    lines = (d / "queries.jsonl").read_text().splitlines(keepends=True)
    (d / "queries.jsonl").write_text("".join(x for x in lines if f'"_id": "{gone}"' not in x), encoding="utf-8")
    with pytest.raises(DataFormatError) as e:
        load_beir(d)
    assert str(e.value).startswith(f"{d / 'qrels' / 'test.tsv'}:{first}: query-id {gone!r} is judged but not in")


def test_empty_corpus_is_an_error(tmp_path):
    from recsparse.data import load_beir

    d = _beir_copy(tmp_path)
    (d / "corpus.jsonl").write_text("")
    with pytest.raises(DataFormatError, match=re.escape(str(d / "corpus.jsonl")) + ": no documents"):
        load_beir(d)
