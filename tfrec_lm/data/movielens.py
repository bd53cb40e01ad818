"""MovieLens-100K, from RecBole atomic files or from TensorFlow Datasets.

Both loaders give the same schema: every rating is an interaction, the catalog is the
1,682 movies with title, release year and genres. ML-100K's placeholder genre
"unknown" (and TFDS's "(no genres listed)") means "no genre information" and is dropped;
a release year that is not a number (item 267 has "unkonwn") becomes ''.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec_lm.data.files import RawTable, read_delimited
from tfrec_lm.data.schema import (
    Dataset,
    LoadReport,
    check_reports,
    normalize_genres,
    validate_interactions,
    validate_items,
)
from tfrec_lm.errors import DataError

logger = logging.getLogger(__name__)

INTER_FILE = "ml-100k.inter"
ITEM_FILE = "ml-100k.item"
RATINGS_TFDS = "movielens/100k-ratings"
MOVIES_TFDS = "movielens/100k-movies"
_NO_GENRE = {"unknown", "(no genres listed)"}
_ATOMIC_NAMES = {"movie_title": "title", "release_year": "year", "class": "genres"}
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def _clean_genres(genres: Iterable[str]) -> tuple[str, ...]:
    """Drops the no-genre placeholders.

    Args:
        genres: Iterable[str].

    Returns:
        tuple[str, ...]. the genres without the no-genre placeholders.
    """
    return tuple(g for g in genres if g.lower() not in _NO_GENRE)


def _clean_year(year: str) -> str:
    """Keeps a year only if it is a number.

    Args:
        year: str.

    Returns:
        str. the year if it is all digits, else ''.
    """
    year = year.strip()
    return year if year.isdigit() else ""


def _read_atomic(path: Path, required: tuple[str, ...]) -> RawTable:
    """Read a RecBole atomic file (tab-separated, header fields 'name:type').

    Args:
        path: Path. the file.
        required: tuple[str, ...]. field names (without ':type') that must be present.

    Returns:
        RawTable. columns renamed to the project's names.
    """
    table = read_delimited(path, "\t", csv.QUOTE_NONE)
    names = [name.split(":", 1)[0].strip() for name in table.frame.columns]
    table.frame.columns = [_ATOMIC_NAMES.get(n, n) for n in names]
    missing = [c for c in required if c not in table.frame.columns]
    if missing:
        raise DataError(
            f"{path}: malformed RecBole atomic file, missing field(s) {', '.join(missing)} "
            f"in the header (found: {', '.join(names)})"
        )
    return table


def load_movielens_100k(directory: str | Path, strict: bool = False) -> Dataset:
    """Load MovieLens-100K from RecBole atomic files ml-100k.inter and ml-100k.item.

    Args:
        directory: str | Path. folder holding the two files.
        strict: bool. raise DataError when any row breaks the schema.

    Returns:
        Dataset. interactions in file order (the order of u.data); items in file order.
    """
    directory = Path(directory)
    inter_path, item_path = directory / INTER_FILE, directory / ITEM_FILE
    for path in (inter_path, item_path):
        if not path.is_file():
            raise DataError(
                f"MovieLens-100K file not found: {path} (expected RecBole atomic files "
                f"{INTER_FILE} and {ITEM_FILE} in {directory})"
            )
    items_table = _read_atomic(item_path, ("item_id", "title"))
    raw_items = items_table.frame.copy()
    if "year" in raw_items.columns:
        raw_items["year"] = [_clean_year(y) for y in raw_items["year"]]
    if "genres" in raw_items.columns:
        raw_items["genres"] = [_clean_genres(normalize_genres(g, " ")) for g in raw_items["genres"]]
    items, items_report = validate_items(raw_items, items_table.lines, str(item_path), items_table.bad_rows)

    inter_table = _read_atomic(inter_path, ("user_id", "item_id", "timestamp"))
    columns = [c for c in ("user_id", "item_id", "timestamp", "rating") if c in inter_table.frame.columns]
    interactions, inter_report = validate_interactions(
        inter_table.frame[columns], inter_table.lines, str(inter_path), pd.Index(items["item_id"]), inter_table.bad_rows
    )
    reports = [items_report, inter_report]
    check_reports(reports, strict)
    logger.info("loaded ml-100k: %d interactions, %d items", len(interactions), len(items))
    return Dataset(name="ml-100k", interactions=interactions, items=items, reports=reports)


# --------------------------------------------------------------------------- TFDS


def _default_tfds_dir() -> Path:
    """TFDS's default data directory.

    Returns:
        Path. $TFDS_DATA_DIR or ~/tensorflow_datasets.
    """
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def tfds_available(data_dir: str | Path | None = None) -> bool:
    """Whether both TFDS MovieLens-100K datasets are already prepared locally; never downloads.

    Args:
        data_dir: str | Path | None. TFDS data directory (default: TFDS's own default).

    Returns:
        bool. False when tensorflow_datasets is missing or either dataset is not prepared.
    """
    local = _default_tfds_dir() if data_dir is None else data_dir
    if "://" not in str(local):
        for name in (RATINGS_TFDS, MOVIES_TFDS):
            folder = Path(local) / name
            if not folder.is_dir() or not any(folder.glob("*/dataset_info.json")):
                return False
    try:
        import tensorflow_datasets as tfds

        return all(
            tfds.builder(name, data_dir=None if data_dir is None else str(data_dir)).is_prepared()
            for name in (RATINGS_TFDS, MOVIES_TFDS)
        )
    except Exception as err:  # any failure means "not available"
        logger.info("TFDS MovieLens-100K not available: %s", err)
        return False


def _text(value: object) -> str:
    """Text of a TFDS value.

    Args:
        value: object. bytes or str.

    Returns:
        str.
    """
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_to_dataset(
    rating_batches: Iterable[dict[str, np.ndarray]],
    movie_examples: Iterable[dict[str, object]],
    genre_names: list[str],
    strict: bool = False,
) -> Dataset:
    """Build the Dataset from TFDS records (already converted to numpy).

    Args:
        rating_batches: Iterable[dict[str, np.ndarray]]. batches with user_id, movie_id
            (bytes [b]), user_rating (float [b]) and timestamp (int [b]).
        movie_examples: Iterable[dict[str, object]]. one per movie: movie_id (bytes),
            movie_title (bytes, "Toy Story (1995)"), movie_genres (int class ids [g]).
        genre_names: list[str]. class label names of movie_genres.
        strict: bool. raise DataError when any record breaks the schema.

    Returns:
        Dataset. interactions in TFDS record order (record k is "line" k); items
        sorted by numeric movie_id.
    """
    ids, titles, years, genres = [], [], [], []
    for movie in movie_examples:
        title = _text(movie["movie_title"]).strip()
        match = _TITLE_YEAR.match(title)
        titles.append(match.group(1) if match else title)
        years.append(match.group(2) if match else "")
        genres.append(_clean_genres(genre_names[int(g)] for g in np.asarray(movie["movie_genres"]).ravel()))
        ids.append(_text(movie["movie_id"]))
    raw_items = pd.DataFrame({"item_id": ids, "title": titles, "year": years, "genres": genres}, dtype=object)
    items, items_report = validate_items(raw_items, np.arange(1, len(ids) + 1), MOVIES_TFDS)
    key = pd.to_numeric(items["item_id"], errors="coerce")
    items = items.iloc[np.lexsort((items["item_id"].to_numpy(dtype=str), key.fillna(np.inf).to_numpy()))]
    items = items.reset_index(drop=True)

    parts = {"user_id": [], "item_id": [], "timestamp": [], "rating": []}
    for batch in rating_batches:
        parts["user_id"].extend(_text(v) for v in np.asarray(batch["user_id"]).ravel())
        parts["item_id"].extend(_text(v) for v in np.asarray(batch["movie_id"]).ravel())
        parts["timestamp"].append(np.asarray(batch["timestamp"]).ravel())
        parts["rating"].append(np.asarray(batch["user_rating"], dtype=np.float64).ravel())
    raw = pd.DataFrame(
        {
            "user_id": pd.Series(parts["user_id"], dtype=object),
            "item_id": pd.Series(parts["item_id"], dtype=object),
            "timestamp": np.concatenate(parts["timestamp"]) if parts["timestamp"] else np.zeros(0, np.int64),
            "rating": np.concatenate(parts["rating"]) if parts["rating"] else np.zeros(0),
        }
    )
    interactions, report = validate_interactions(raw, np.arange(1, len(raw) + 1), RATINGS_TFDS, pd.Index(items["item_id"]))
    reports: list[LoadReport] = [items_report, report]
    check_reports(reports, strict)
    return Dataset(name="ml-100k-tfds", interactions=interactions, items=items, reports=reports)


def load_movielens_100k_tfds(data_dir: str | Path | None = None, download: bool = True, strict: bool = False) -> Dataset:
    """Load MovieLens-100K through tensorflow_datasets (movielens/100k-ratings and -movies).

    Args:
        data_dir: str | Path | None. TFDS data directory (default: TFDS's own default).
        download: bool. let TFDS download and prepare the data when it is not there.
        strict: bool. raise DataError when any record breaks the schema.

    Returns:
        Dataset. interactions in TFDS record order, which need not be u.data's order.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError("tensorflow_datasets is not installed; use load_movielens_100k with RecBole files") from err
    where = "TFDS's default data_dir" if data_dir is None else str(data_dir)
    try:
        kwargs = {"split": "train", "download": download, "with_info": True}
        if data_dir is not None:
            kwargs["data_dir"] = str(data_dir)
        ratings, _ = tfds.load(RATINGS_TFDS, **kwargs)
        movies, movies_info = tfds.load(MOVIES_TFDS, **kwargs)
        genre_names = list(movies_info.features["movie_genres"].feature.names)
        keys = ("user_id", "movie_id", "user_rating", "timestamp")
        ratings = ratings.map(lambda x: {k: x[k] for k in keys}).batch(16384)
        rating_batches = list(tfds.as_numpy(ratings))
        movie_examples = list(tfds.as_numpy(movies))
    except Exception as err:  # TFDS raises many kinds: not found, download and network errors
        raise DataError(
            f"could not obtain TFDS {RATINGS_TFDS} / {MOVIES_TFDS} from {where} "
            f"(download={download}): {type(err).__name__}: {err}"
        ) from err
    return tfds_to_dataset(rating_batches, movie_examples, genre_names, strict)
