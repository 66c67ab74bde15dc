"""Datasets: a registry described as data, checksum verification, and Polars loaders for three formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recsparse.data.beir import BeirDataset, load_beir, read_jsonl, read_qrels
from recsparse.data.errors import ChecksumError, DataError, DataFormatError, DatasetNotFoundError
from recsparse.data.lightgcn import ImplicitFeedback, load_lightgcn, read_id_list, read_interactions
from recsparse.data.recbole import AtomicDataset, load_recbole, read_atomic
from recsparse.data.registry import (REGISTRY, DatasetSpec, data_root, dataset_dir, get_spec, sha256_file,
                                     verify_checksums)



def _load_ctr(folder: Path, name: str | None = None) -> Any:
    from recsparse.data.ctr import load_ctr

    return load_ctr(name or folder.name)


_LOADERS = {"lightgcn": load_lightgcn, "recbole": load_recbole, "beir": load_beir, "ctr": _load_ctr}


def load(name_or_path: str | Path, verify: bool = True) -> Any:
    """Load a registered dataset by name, or a folder (format detected from its files).

    A registered dataset's files are checked against the registry's sha256 first (``verify``): a mismatch is a
    :class:`ChecksumError` naming the file, never silently different data under a registered name.

    Returns :class:`ImplicitFeedback`, :class:`AtomicDataset` or :class:`BeirDataset`.
    """
    if isinstance(name_or_path, str) and name_or_path in REGISTRY:
        spec = get_spec(name_or_path)
        folder = dataset_dir(spec.name, verify=verify)
        return _LOADERS[spec.format](folder, name=spec.name)
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"{name_or_path!r} is neither a registered dataset ({', '.join(sorted(REGISTRY))}) "
                                   f"nor a folder")
    return _LOADERS[detect_format(folder)](folder)


def detect_format(folder: Path) -> str:
    if (folder / "corpus.jsonl").is_file():
        return "beir"
    if (folder / "train.txt").is_file():
        return "lightgcn"
    if any(folder.glob("*.inter")):
        return "recbole"
    raise DataFormatError(folder, None, "cannot tell the format: expected corpus.jsonl (BEIR), train.txt "
                                        "(LightGCN) or NAME.inter (RecBole)")


__all__ = ["REGISTRY", "DatasetSpec", "data_root", "dataset_dir", "get_spec", "sha256_file", "verify_checksums",
           "load", "detect_format", "load_beir", "load_lightgcn", "load_recbole", "read_jsonl", "read_qrels",
           "read_interactions", "read_id_list", "read_atomic", "BeirDataset", "ImplicitFeedback", "AtomicDataset",
           "DataError", "DataFormatError", "ChecksumError", "DatasetNotFoundError"]
