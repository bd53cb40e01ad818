"""The one interaction/item schema every data source is read into (SPEC section 1).

Loaders turn their source into raw columns plus the source line number of every
row, then call `validate_items` and `validate_interactions`. A row that
breaks the schema becomes a `BadRow` in a `LoadReport` and is left out
of the data; `check_reports` logs the reports and, in strict mode, raises
`DataError`. Nothing is dropped without appearing in a report: `write_bad_rows` lists
every bad row (line, column, reason, raw value) in a CSV file, and `data_report` is the
short text a command line prints once.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from tfrec_lm.errors import DataError

logger = logging.getLogger(__name__)

INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating")
ITEM_COLUMNS = ("item_id", "title", "year", "genres", "text")


@dataclass
class BadRow:
    """One rejected row.

    Attributes:
        line: int. 1-based line number in the source file (CSV/TSV: header is line 1;
            JSONL: first line is line 1; Parquet: row number + 1).
        reason: str. what was wrong with the row (every problem, joined by "; ").
        problems: tuple of (column, reason, raw value) str triples. one per value that
            broke the schema; empty when the row as a whole is broken (a wrong number of
            fields, not JSON), whose text is then in `raw`.
        raw: str. the row's own text where no column can be named (its first line for a
            record that spans lines), else "".
    """

    line: int
    reason: str
    problems: tuple = ()
    raw: str = ""


@dataclass
class LoadReport:
    """What happened when one source file was read.

    Attributes:
        source: str. the file (or dataset) that was read.
        rows_read: int. data rows seen in the source, good and bad.
        bad_rows: list[BadRow]. rows left out of the data, with their line numbers.
    """

    source: str
    rows_read: int
    bad_rows: list[BadRow] = field(default_factory=list)

    @property
    def n_bad(self) -> int:
        """Number of rejected rows.

        Returns:
            int.
        """
        return len(self.bad_rows)

    def summary(self, max_rows: int = 5) -> str:
        """Human summary of the report.

        Args:
            max_rows: int. at most this many bad rows are listed.

        Returns:
            str. one line for the totals, then one line per listed bad row.
        """
        head = f"{self.source}: {self.rows_read} rows read, {self.n_bad} bad rows left out"
        lines = [head]
        for bad in self.bad_rows[:max_rows]:
            lines.append(f"  line {bad.line}: {bad.reason}")
        if self.n_bad > max_rows:
            lines.append(f"  ... and {self.n_bad - max_rows} more")
        return "\n".join(lines)


@dataclass
class Dataset:
    """Interactions and item catalog in the project's schema.

    Attributes:
        name: str. where the data came from (e.g. "ml-100k").
        interactions: pd.DataFrame. columns user_id (str), item_id (str), timestamp
            (int64, Unix seconds), rating (float64, NaN when absent); file order, index reset.
            The ids are pandas categoricals of str when read from Parquet (bounded memory
            for large files), object str otherwise.
        items: pd.DataFrame. columns item_id (str, unique), title (str), year (str, ''
            if unknown), genres (tuple of str), text (str); catalog order, index reset.
        reports: list[LoadReport]. one per file read.
        bad_rows_path: Path or None. the CSV that lists every bad row of the reports
            (`write_bad_rows`), once the data stage has written it.
    """

    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    reports: list[LoadReport] = field(default_factory=list)
    bad_rows_path: Optional[Path] = None


def item_text(title: str, year: str = "", genres: tuple[str, ...] | list[str] = ()) -> str:
    """The text that describes an item, e.g. "Toy Story (1995). Genres: Animation, Comedy".

    Args:
        title: str. item title.
        year: str. release year; the "(year)" part is omitted when empty.
        genres: tuple[str, ...]. genre names; the "Genres: ..." part is omitted when empty.

    Returns:
        str. the item text.
    """
    title = (title or "").strip()
    year = (year or "").strip()
    text = f"{title} ({year})" if year else title
    genres = [g for g in genres if g]
    if genres:
        genre_part = "Genres: " + ", ".join(genres)
        text = f"{text}. {genre_part}" if text else genre_part
    return text


# --------------------------------------------------------------------------- column parsing


def _missing(values: pd.Series) -> np.ndarray:
    """Where a raw column is missing.

    Args:
        values: pd.Series. raw column.

    Returns:
        np.ndarray bool. [n] True where None/NaN.
    """
    return values.isna().to_numpy()


def parse_string_column(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Turn a raw id/text column into stripped strings.

    Args:
        values: pd.Series. raw values (str, int, integral float, None/NaN).

    Returns:
        tuple (strings: np.ndarray object [n], missing: np.ndarray bool [n]). integral
        floats become "5", not "5.0"; missing values become "".
    """
    values = values.reset_index(drop=True)
    missing = _missing(values)
    if pd.api.types.is_float_dtype(values.dtype):
        raw = values.to_numpy(dtype=float, na_value=np.nan)
        strings = np.array(
            ["" if m else (str(int(v)) if np.isfinite(v) and v == int(v) else str(v)) for v, m in zip(raw, missing)],
            dtype=object,
        )
    else:
        strings = values.astype(object).where(~missing, "").astype(str).str.strip().to_numpy(dtype=object, copy=True)
    strings[missing] = ""
    return strings, missing | (strings == "")


def parse_int_column(values: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse a non-negative integer column (timestamps).

    Args:
        values: pd.Series. raw values (int, integral float, digit strings).
        name: str. column name used in the reasons.

    Returns:
        tuple (ints: np.ndarray int64 [n], reasons: np.ndarray object [n]). reasons[i]
        is "" for a good value, else why the value was rejected.
    """
    values = values.reset_index(drop=True)
    n = len(values)
    reasons = np.full(n, "", dtype=object)
    ints = np.zeros(n, dtype=np.int64)
    if pd.api.types.is_bool_dtype(values.dtype):
        reasons[:] = f"{name} is not an integer"
        return ints, reasons
    if pd.api.types.is_integer_dtype(values.dtype) and not values.isna().any():
        ints = values.to_numpy(dtype=np.int64)
    else:
        text, missing = parse_string_column(values)
        digits = pd.Series(text, dtype=object).str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
        number = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(dtype=float)
        integral = np.isfinite(number) & (np.mod(np.nan_to_num(number), 1) == 0) & (np.abs(number) < 2.0**63)
        ints[integral] = number[integral].astype(np.int64)
        exact = digits & integral & (np.abs(number) >= 2.0**53)
        for i in np.flatnonzero(exact):  # beyond float precision: parse the digits exactly
            value = int(text[i])
            integral[i] = -(2**63) <= value < 2**63
            ints[i] = value if integral[i] else 0
        good = integral & ~missing
        reasons[missing] = f"missing {name}"
        bad = ~good & ~missing
        reasons[bad] = [f"{name} {text[i]!r} is not an integer" for i in np.flatnonzero(bad)]
    negative = (reasons == "") & (ints < 0)
    reasons[negative] = [f"{name} {ints[i]} is negative" for i in np.flatnonzero(negative)]
    return ints, reasons


TIMESTAMP_FORMS = "Unix seconds or an ISO-8601 date/time such as 1998-03-01 or 1998-03-01T12:00:00+02:00"


def _unix_seconds(moments: pd.Series) -> np.ndarray:
    """Unix seconds (rounded down) of tz-aware UTC datetimes.

    Args:
        moments: pd.Series. datetime64 with tz UTC; NaT allowed.

    Returns:
        np.ndarray float64. [n] seconds, NaN where NaT.
    """
    return ((moments - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(dtype=float, na_value=np.nan)


def parse_timestamp_column(values: pd.Series, name: str = "timestamp") -> tuple[np.ndarray, np.ndarray]:
    """Parse a timestamp column: Unix seconds, or ISO-8601 dates and date-times.

    Integers (and integral floats, digit strings) are Unix seconds, as `parse_int_column`
    reads them. Any other text is read as ISO-8601 (`1998-03-01`, `1998-03-01 12:00`,
    `1998-03-01T12:00:00+02:00`, `...Z`), vectorised by pandas: UTC unless the value
    carries an offset, fractions of a second dropped. A datetime column (Parquet
    timestamps) is read the same way, naive values as UTC.

    Args:
        values: pd.Series. raw values.
        name: str. column name used in the reasons.

    Returns:
        tuple (seconds: np.ndarray int64 [n], reasons: np.ndarray object [n]). reasons[i]
        is "" for a good value, else why it was rejected: missing, negative (before
        1970), or neither Unix seconds nor an ISO-8601 date.
    """
    values = values.reset_index(drop=True)
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        seconds = _unix_seconds(pd.to_datetime(values, utc=True))
        reasons = np.full(len(values), "", dtype=object)
        reasons[np.isnan(seconds)] = f"missing {name}"
        ints = np.where(np.isnan(seconds), 0, seconds).astype(np.int64)
    else:
        ints, reasons = parse_int_column(values, name)
        # Only the values that are not integers are tried as dates ("is not an integer").
        tried = np.flatnonzero([r.endswith("is not an integer") for r in reasons]) if (reasons != "").any() else []
        if len(tried):
            text = parse_string_column(values.iloc[tried])[0]
            seconds = _unix_seconds(pd.to_datetime(pd.Series(text, dtype=object), format="ISO8601", utc=True,
                                                   errors="coerce"))
            parsed = ~np.isnan(seconds)
            ints[tried[parsed]] = seconds[parsed].astype(np.int64)
            reasons[tried[parsed]] = ""
            reasons[tried[~parsed]] = [f"{name} {text[j]!r} is not an integer: expected {TIMESTAMP_FORMS}"
                                       for j in np.flatnonzero(~parsed)]
    negative = (reasons == "") & (ints < 0)
    reasons[negative] = [f"{name} {ints[i]} is negative (before 1970)" for i in np.flatnonzero(negative)]
    return ints, reasons


def parse_float_column(values: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Parse an optional numeric column (ratings); missing values become NaN.

    Args:
        values: pd.Series. raw values.
        name: str. column name used in the reasons.

    Returns:
        tuple (floats: np.ndarray float64 [n], reasons: np.ndarray object [n]).
    """
    values = values.reset_index(drop=True)
    n = len(values)
    reasons = np.full(n, "", dtype=object)
    if pd.api.types.is_bool_dtype(values.dtype):
        reasons[:] = f"{name} is not a number"
        return np.full(n, np.nan), reasons
    if pd.api.types.is_numeric_dtype(values.dtype):
        floats = values.to_numpy(dtype=float, na_value=np.nan, copy=True)
        text = floats.astype(str).astype(object)
        missing = np.isnan(floats)
    else:
        text, missing = parse_string_column(values)
        floats = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(dtype=float, copy=True)
        floats[missing] = np.nan
    bad = ~missing & ~np.isfinite(floats)
    reasons[bad] = [f"{name} {text[i]!r} is not a number" for i in np.flatnonzero(bad)]
    return floats, reasons


def normalize_genres(value: object, sep: str = "|") -> tuple[str, ...]:
    """Genres of one item as a tuple of names.

    Args:
        value: object. None/NaN (no genres), a string of names separated by sep, or a
            list/tuple/array of names.
        sep: str. separator used when value is a string.

    Returns:
        tuple[str, ...]. stripped, non-empty names in their given order.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ()
    if isinstance(value, (str, bytes)):
        value = value.decode("utf-8") if isinstance(value, bytes) else value
        parts = value.split(sep) if sep != " " else value.split()
    else:
        parts = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in value]
    return tuple(p.strip() for p in parts if p is not None and p.strip())


def _join_reasons(*columns: np.ndarray) -> np.ndarray:
    """Joins the reasons of several columns, row by row.

    Args:
        columns: np.ndarray object. [n] each.

    Returns:
        np.ndarray object. [n] non-empty reasons joined by "; ".
    """
    out = np.full(len(columns[0]), "", dtype=object)
    for col in columns:
        has = col != ""
        both = has & (out != "")
        out[both] = out[both] + "; " + col[both]
        only = has & ~both
        out[only] = col[only]
    return out


def _nul_reasons(strings: np.ndarray, name: str) -> np.ndarray:
    """A NUL character in a value: the mark of a binary or damaged file, and a different id than without it.

    Args:
        strings: np.ndarray object. [n] parsed values (str).
        name: str. column name used in the reasons.

    Returns:
        np.ndarray object. [n] "" for a good value, else the reason.
    """
    reasons = np.full(len(strings), "", dtype=object)
    has_nul = np.zeros(len(strings), dtype=bool)
    block = 1 << 20
    for start in range(0, len(strings), block):  # one search per block, then per value where one was found
        values = strings[start:start + block]
        if "\x00" in "".join(values):
            has_nul[start:start + len(values)] = ["\x00" in v for v in values]
    reasons[has_nul] = [f"{name} {strings[i]!r} contains a NUL character" for i in np.flatnonzero(has_nul)]
    return reasons


def raw_text(value: object) -> str:
    """A raw value as the text a bad-rows report shows ("" for a missing one).

    Args:
        value: object. a cell as read (str, number, bytes, None/NaN, a list).

    Returns:
        str.
    """
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _bad_rows(lines: np.ndarray, checks: list[tuple[str, np.ndarray, Optional[pd.Series]]]) -> list[BadRow]:
    """The bad rows of some checked columns.

    Args:
        lines: np.ndarray int. [n] source line of each row.
        checks: list of (column, reasons, raw). reasons: np.ndarray object [n] ("" for a
            good value); raw: the column's raw values (pd.Series [n]) or None.

    Returns:
        list[BadRow]. one per row with a reason, in row order; each names its problems.
    """
    reasons = _join_reasons(*(r for _, r, _ in checks))
    out = []
    for i in np.flatnonzero(reasons != ""):
        problems = tuple((column, str(r[i]), raw_text(raw.iloc[i]) if raw is not None else "")
                         for column, r, raw in checks if r[i] != "")
        out.append(BadRow(int(lines[i]), str(reasons[i]), problems))
    return out


# --------------------------------------------------------------------------- validation


def validate_interactions(
    raw: pd.DataFrame,
    lines: np.ndarray,
    source: str,
    known_items: pd.Index | None = None,
    pre_bad: list[BadRow] | None = None,
) -> tuple[pd.DataFrame, LoadReport]:
    """Check raw interaction rows against the schema.

    Args:
        raw: pd.DataFrame. columns user_id, item_id, timestamp and optionally rating, raw values.
        lines: np.ndarray int. [n] source line number of each row of raw.
        source: str. file name for the report.
        known_items: pd.Index | None. catalog item ids; rows with other items are bad.
        pre_bad: list[BadRow] | None. rows the reader already rejected (e.g. wrong field count).

    Returns:
        tuple (interactions: pd.DataFrame in the schema, report: LoadReport).
    """
    lines = np.asarray(lines, dtype=np.int64)
    users, user_missing = parse_string_column(raw["user_id"])
    items, item_missing = parse_string_column(raw["item_id"])
    timestamps, ts_reasons = parse_timestamp_column(raw["timestamp"], "timestamp")
    if "rating" in raw.columns:
        ratings, rating_reasons = parse_float_column(raw["rating"], "rating")
    else:
        ratings, rating_reasons = np.full(len(raw), np.nan), np.full(len(raw), "", dtype=object)
    id_reasons = _nul_reasons(users, "user_id")
    id_reasons[user_missing] = "missing user_id"
    item_reasons = _nul_reasons(items, "item_id")
    item_reasons[item_missing] = "missing item_id"
    if known_items is not None:
        unknown = (item_reasons == "") & ~pd.Index(items).isin(known_items)
        item_reasons[unknown] = [f"item_id {items[i]!r} is not in the items table" for i in np.flatnonzero(unknown)]
    raw = raw.reset_index(drop=True)
    checks = [("user_id", id_reasons, raw["user_id"]), ("item_id", item_reasons, raw["item_id"]),
              ("timestamp", ts_reasons, raw["timestamp"]),
              ("rating", rating_reasons, raw["rating"] if "rating" in raw.columns else None)]
    reasons = _join_reasons(id_reasons, item_reasons, ts_reasons, rating_reasons)
    good = reasons == ""
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(users[good], dtype=object),
            "item_id": pd.Series(items[good], dtype=object),
            "timestamp": timestamps[good].astype(np.int64),
            "rating": ratings[good].astype(np.float64),
        }
    )
    bad = sorted(list(pre_bad or []) + _bad_rows(lines, checks), key=lambda b: b.line)
    report = LoadReport(source=source, rows_read=len(raw) + len(pre_bad or []), bad_rows=bad)
    return frame, report


def validate_items(
    raw: pd.DataFrame,
    lines: np.ndarray,
    source: str,
    pre_bad: list[BadRow] | None = None,
) -> tuple[pd.DataFrame, LoadReport]:
    """Check raw item rows and build the items table.

    Args:
        raw: pd.DataFrame. column item_id, and text, or title with optional year and genres
            (genres: tuple/list of str per row).
        lines: np.ndarray int. [n] source line number of each row of raw.
        source: str. file name for the report.
        pre_bad: list[BadRow] | None. rows the reader already rejected.

    Returns:
        tuple (items: pd.DataFrame in the schema, report: LoadReport). a repeated
        item_id is a bad row (the first occurrence is kept).
    """
    lines = np.asarray(lines, dtype=np.int64)
    n = len(raw)
    ids, missing = parse_string_column(raw["item_id"])
    reasons = _nul_reasons(ids, "item_id")
    reasons[missing] = "missing item_id"
    dup = pd.Series(ids).duplicated().to_numpy() & ~missing & (reasons == "")
    if dup.any():
        first_line = {}
        for i in np.flatnonzero(~missing & ~dup & (reasons == "")):
            first_line[ids[i]] = int(lines[i])
        reasons[dup] = [f"duplicate item_id {ids[i]!r} (first on line {first_line[ids[i]]})" for i in np.flatnonzero(dup)]

    def text_col(name: str) -> np.ndarray:
        if name not in raw.columns:
            return np.full(n, "", dtype=object)
        return parse_string_column(raw[name])[0]

    titles = text_col("title")
    years = text_col("year")
    checks = [("item_id", reasons, raw["item_id"])]
    checks += [(name, _nul_reasons(text_col(name), name), raw[name]) for name in ("title", "year", "text")
               if name in raw.columns]
    genres = [normalize_genres(x) for x in raw["genres"]] if "genres" in raw.columns else [()] * n
    composed = np.array([item_text(t, y, g) for t, y, g in zip(titles, years, genres)], dtype=object)
    # An item needs words to be encoded: an empty (or whitespace-only) title, or text
    # where the file has a text column and no title to fall back on, is a bad row.
    if "text" in raw.columns:
        texts = text_col("text")
        empty = (texts == "") & (titles == "")
        texts = np.where(texts == "", composed, texts)
        titles = np.where(titles == "", texts, titles)
        empty_column = "text"
    else:
        texts = composed
        empty = titles == ""
        empty_column = "title"
    empty_reasons = np.full(n, "", dtype=object)
    empty_reasons[empty] = (f"empty {empty_column}" if empty_column == "title" or "title" not in raw.columns
                            else "empty text and title")
    checks.append((empty_column, empty_reasons, raw[empty_column] if empty_column in raw.columns else None))
    reasons = _join_reasons(*(r for _, r, _ in checks))
    good = reasons == ""
    keep = np.flatnonzero(good)
    frame = pd.DataFrame(
        {
            "item_id": pd.Series(ids[keep], dtype=object),
            "title": pd.Series(titles[keep], dtype=object),
            "year": pd.Series(years[keep], dtype=object),
            "genres": pd.Series([genres[i] for i in keep], dtype=object),
            "text": pd.Series(texts[keep], dtype=object),
        }
    )
    bad = sorted(list(pre_bad or []) + _bad_rows(lines, checks), key=lambda b: b.line)
    return frame, LoadReport(source=source, rows_read=n + len(pre_bad or []), bad_rows=bad)


def items_from_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """Catalog derived from interactions when no items file is given.

    Args:
        interactions: pd.DataFrame. schema interactions.

    Returns:
        pd.DataFrame. one item per distinct item_id in order of first appearance,
        title = text = item_id, year '', genres ().
    """
    ids = pd.unique(interactions["item_id"].to_numpy(dtype=object))
    return pd.DataFrame(
        {
            "item_id": pd.Series(ids, dtype=object),
            "title": pd.Series(ids, dtype=object),
            "year": pd.Series([""] * len(ids), dtype=object),
            "genres": pd.Series([()] * len(ids), dtype=object),
            "text": pd.Series(ids, dtype=object),
        }
    )


def require_rows(report: LoadReport, kept: int, what: str) -> None:
    """Raise DataError when a file gave no usable row (the run has nothing to work on).

    Args:
        report: LoadReport. the file's report.
        kept: int. rows that passed validation.
        what: str. what the rows are, e.g. "interactions".

    Raises:
        DataError: no row of the file passed validation.
    """
    if kept:
        return
    if not report.rows_read:
        raise DataError(f"{report.source}: no {what} to use: the file has no data rows, only a header")
    first = report.bad_rows[0]
    raise DataError(f"{report.source}: no {what} to use: all {report.rows_read} rows break the schema "
                    f"(the first, line {first.line}: {first.reason})")


def check_reports(reports: list[LoadReport], strict: bool, max_rows: int = 5) -> None:
    """In strict mode, raise when a report has bad rows; else log them (at INFO: a CLI prints its data report once).

    Args:
        reports: list[LoadReport]. reports of the files just read.
        strict: bool. raise DataError when any row was rejected.
        max_rows: int. bad rows listed per report.

    Raises:
        DataError: in strict mode, when any row was rejected.
    """
    flawed = [r for r in reports if r.n_bad]
    if not flawed:
        return
    if strict:
        total = sum(r.n_bad for r in flawed)
        body = "\n".join(r.summary(max_rows) for r in flawed)
        raise DataError(f"{total} bad rows (strict mode, nothing loaded):\n{body}")
    for report in flawed:
        logger.info("bad rows left out of the data:\n%s", report.summary(max_rows))


BAD_ROWS_COLUMNS = ("source", "line", "column", "reason", "value")


def write_bad_rows(reports: list[LoadReport], path: str | Path) -> Optional[Path]:
    """Writes every bad row of the reports to a CSV file: one line per problem.

    Columns `source, line, column, reason, value`: the file, its 1-based line, the column
    at fault and its raw value; a row broken as a whole (a wrong number of fields, not
    JSON) has an empty column and its own text as the value. A row with several bad
    values has one line per value. The file is written whole (to a temporary name, then
    renamed); without bad rows a file left by an earlier run is removed.

    Args:
        reports: list[LoadReport]. the data's reports.
        path: str | Path. the CSV file.

    Returns:
        Path or None. the file, or None when no report has a bad row.
    """
    path = Path(path)
    if not any(r.n_bad for r in reports):
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(BAD_ROWS_COLUMNS)
        for report in reports:
            for bad in report.bad_rows:
                for column, reason, value in bad.problems or (("", bad.reason, bad.raw),):
                    writer.writerow((report.source, bad.line, column, reason, value))
    os.replace(temporary, path)
    logger.info("%d bad rows written to %s", sum(r.n_bad for r in reports), path)
    return path


def data_report(dataset: Dataset, max_rows: int = 5) -> str:
    """The data report a CLI prints: each file with bad rows, its first few, and where all of them are.

    Args:
        dataset: Dataset. its reports, and `bad_rows_path` when the bad rows were written.
        max_rows: int. bad rows listed per file.

    Returns:
        str. "" when no row was left out.
    """
    flawed = [r for r in dataset.reports if r.n_bad]
    if not flawed:
        return ""
    lines = [r.summary(max_rows) for r in flawed]
    if dataset.bad_rows_path is not None:
        lines.append(f"every bad row (line, column, reason, value): {dataset.bad_rows_path}")
    return "\n".join(lines)
