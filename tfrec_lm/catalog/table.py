"""The item catalog of a trained run: ids, texts, popularity, warm and retired items.

A training run writes `<output_dir>/catalog.parquet` beside its checkpoint; every export
carries its own in `assets.extra/tfrec_lm_catalog.parquet` (the names live in
`tfrec_lm.registry.layout`).
Row i is vocabulary index i + 1 (index 0 is the padding item), so the rows of the first
`C` items line up with the checkpoint's item tables; an update only appends rows.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from tfrec_lm.errors import DataError
from tfrec_lm.registry.layout import EXPORT_CATALOG_FILE, EXPORT_TEXT_VECTORS_FILE

COLUMNS = ("item_id", "title", "year", "genres", "text", "count", "warm", "retired")


@dataclasses.dataclass
class CatalogChanges:
    """What an items file and a retire list change in a catalog.

    Attributes:
        added: list of str. item ids new to the catalog (appended, cold: text only).
        changed: list of str. item ids whose text changed (re-encoded; their ID embedding kept).
        unchanged: list of str. item ids listed with the text they already had.
        retired: list of str. item ids retired by this update.
        restored: list of str. previously retired item ids that the items file lists again.
    """

    added: list = dataclasses.field(default_factory=list)
    changed: list = dataclasses.field(default_factory=list)
    unchanged: list = dataclasses.field(default_factory=list)
    retired: list = dataclasses.field(default_factory=list)
    restored: list = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        """Counts of each kind of change. dict of str -> int."""
        return {name: len(values) for name, values in dataclasses.asdict(self).items()}


def training_catalog(items: pd.DataFrame, counts: np.ndarray, warm_items) -> pd.DataFrame:
    """The catalog a run trained with.

    Args:
        items: pd.DataFrame. the data's items (SPEC §1 schema) in vocabulary order.
        counts: np.ndarray. [C+1] training interactions per vocabulary index.
        warm_items: np.ndarray bool or None. [C+1] items with a trained ID embedding (None: all).

    Returns:
        pd.DataFrame. the `COLUMNS`, one row per item, vocabulary order.
    """
    frame = items[["item_id", "title", "year", "genres", "text"]].copy().reset_index(drop=True)
    frame["genres"] = [list(g) for g in frame["genres"]]
    frame["count"] = np.asarray(counts[1:], dtype=np.int64)
    frame["warm"] = np.ones(len(frame), bool) if warm_items is None else np.asarray(warm_items[1:], bool)
    frame["retired"] = False
    return frame


def write_catalog(catalog: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Writes a catalog as Parquet, atomically (readers never see half a file).

    Args:
        catalog: pd.DataFrame. the `COLUMNS`.
        path: str | PathLike. the file to write.

    Returns:
        Path. `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".parquet.tmp", delete=False) as handle:
        catalog[list(COLUMNS)].to_parquet(handle.name, index=False)
    os.replace(handle.name, path)
    return path



def catalog_extras(catalog: Optional[pd.DataFrame], text_vectors: Optional[tuple] = None) -> dict:
    """The `extras` of `ModelVersions.save` that keep a version's catalog in its `assets.extra/`.

    Args:
        catalog: pd.DataFrame or None. the catalog behind the version.
        text_vectors: tuple or None. (item ids [N] str, texts [N] str, vectors [N, hidden] float32):
            the encoder vectors of the texts a catalog update encoded or carried over, so that
            the next update of the version encodes only what is new to it (`write_text_vectors`).

    Returns:
        dict. `{EXPORT_CATALOG_FILE: write(path)}`, and `EXPORT_TEXT_VECTORS_FILE` with `text_vectors`
            (empty for None).
    """
    if catalog is None:
        return {}
    extras = {EXPORT_CATALOG_FILE: functools.partial(write_catalog, catalog)}
    if text_vectors is not None and len(text_vectors[0]):
        extras[EXPORT_TEXT_VECTORS_FILE] = functools.partial(write_text_vectors, *text_vectors)
    return extras


def write_text_vectors(item_ids, texts, vectors: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes encoder text vectors with the item ids and texts they were encoded from (`.npz`, atomically).

    Args:
        item_ids: array-like of str. [N].
        texts: array-like of str. [N] the texts encoded.
        vectors: np.ndarray float32. [N, hidden] the run's frozen encoder's vectors of `texts`.
        path: str | PathLike. the file.

    Returns:
        Path. `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.npz")
    np.savez(temporary, item_ids=np.asarray(item_ids, dtype=str), texts=np.asarray(texts, dtype=str),
             vectors=np.asarray(vectors, np.float32))
    os.replace(temporary, path)
    return path


def read_text_vectors(path: str | os.PathLike) -> dict:
    """The vectors `write_text_vectors` wrote, by (item id, text); empty when there is no such file.

    Args:
        path: str | PathLike. the file.

    Returns:
        dict. (item_id, text) -> np.ndarray float32 [hidden].
    """
    path = Path(path)
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as stored:
        return {(item, text): vector for item, text, vector in
                zip(stored["item_ids"].tolist(), stored["texts"].tolist(), stored["vectors"])}

def read_catalog(path: str | os.PathLike) -> pd.DataFrame:
    """Reads a catalog written by `write_catalog`.

    Args:
        path: str | PathLike. the Parquet file.

    Returns:
        pd.DataFrame. the `COLUMNS`, vocabulary order.

    Raises:
        DataError: the file is missing or is not a catalog.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no catalog at {path}: it is written by `python -m tfrec_lm.train` (this version of "
                        "tfrec_lm) beside the checkpoint; retrain, or point --run at such a run")
    frame = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is not a tfrec_lm catalog (missing columns: {', '.join(missing)})")
    frame["genres"] = [tuple(g) for g in frame["genres"]]
    return frame[list(COLUMNS)].reset_index(drop=True)


def apply_changes(catalog: pd.DataFrame, items: pd.DataFrame | None, retire) -> tuple[pd.DataFrame, CatalogChanges]:
    """A new catalog with the items file's new and changed items and the retired ones.

    Existing rows keep their position (they line up with the trained tables); new items
    are appended, cold (no ID embedding trained) with no interactions. An item listed in
    the items file is live: a retired one comes back (`restored`).

    Args:
        catalog: pd.DataFrame. the current catalog (`COLUMNS`).
        items: pd.DataFrame or None. new or changed items in the SPEC §1 items schema.
        retire: iterable of str. item ids to retire.

    Returns:
        tuple (pd.DataFrame, CatalogChanges). the new catalog and what changed.

    Raises:
        DataError: a retired id is not in the catalog, or is also in the items file, or the
            update leaves nothing to recommend.
    """
    rows = catalog.to_dict("records")
    changes = CatalogChanges()
    position = {row["item_id"]: index for index, row in enumerate(rows)}
    retire = list(dict.fromkeys(str(r) for r in retire))
    listed = set() if items is None else set(items["item_id"])
    both = [r for r in retire if r in listed]
    if both:
        raise DataError(f"item(s) both retired and listed in the items file: {', '.join(map(repr, both[:10]))}")
    unknown = [r for r in retire if r not in position]
    if unknown:
        raise DataError(f"cannot retire {len(unknown)} item(s) the catalog does not have: "
                        f"{', '.join(map(repr, unknown[:10]))}{' ...' if len(unknown) > 10 else ''}")
    for record in ([] if items is None else items.to_dict("records")):
        described = {column: record[column] for column in ("title", "year", "genres", "text")}
        index = position.get(record["item_id"])
        if index is None:
            position[record["item_id"]] = len(rows)
            rows.append({"item_id": record["item_id"], **described, "count": 0, "warm": False, "retired": False})
            changes.added.append(record["item_id"])
            continue
        row = rows[index]
        if row["retired"]:
            row["retired"] = False
            changes.restored.append(record["item_id"])
        if row["text"] != record["text"]:
            row.update(described)
            changes.changed.append(record["item_id"])
        else:
            changes.unchanged.append(record["item_id"])
    for item_id in retire:
        row = rows[position[item_id]]
        if not row["retired"]:
            row["retired"] = True
            changes.retired.append(item_id)
    if all(row["retired"] for row in rows):
        raise DataError("the update retires every item: nothing would be left to recommend")
    updated = pd.DataFrame(rows, columns=list(COLUMNS))
    updated["genres"] = [tuple(g) for g in updated["genres"]]
    updated["count"] = updated["count"].astype(np.int64)
    updated[["warm", "retired"]] = updated[["warm", "retired"]].astype(bool)
    return updated, changes


def carried_catalog(trained: pd.DataFrame, served: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """A retrained run's catalog with what catalog updates did to the version it replaces.

    The served version's items the run did not train on are appended (cold, with their
    text), and every item retired there is retired here too.

    Args:
        trained: pd.DataFrame. the run's own catalog (`training_catalog`).
        served: pd.DataFrame. the catalog of the version it replaces.

    Returns:
        tuple (pd.DataFrame, int). the catalog, and how many items were appended.
    """
    known = set(trained["item_id"])
    extra = served[~served["item_id"].isin(known)].copy()
    extra["count"], extra["warm"] = 0, False
    carried = pd.concat([trained, extra[list(COLUMNS)]], ignore_index=True)
    retired = set(served.loc[served["retired"].astype(bool), "item_id"])
    carried["retired"] = carried["item_id"].isin(retired) | carried["retired"].astype(bool)
    carried["count"] = carried["count"].astype(np.int64)
    carried[["warm", "retired"]] = carried[["warm", "retired"]].astype(bool)
    if carried["retired"].all():
        raise DataError("every item is retired in the served version: nothing would be left to recommend")
    return carried, int(len(extra))
