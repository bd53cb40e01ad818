"""A user's own interaction data: CSV, TSV, Parquet or JSON Lines, chosen by extension.

Interactions need the columns ``user_id, item_id, timestamp`` and may have ``rating``
(SPEC section 1). A timestamp is Unix seconds (an integer) or an ISO-8601 date or
date-time (``1998-03-01``, ``1998-03-01T12:00:00+02:00``; UTC unless it has an offset),
or a Parquet timestamp. An optional items file (same formats) has ``item_id`` and either
``text``, or ``title`` with optional ``year`` and ``genres`` (names separated by ``|``,
or a list in Parquet/JSON); an empty title (or an empty text with no title) is a bad
row. Without an items file the catalog is every item seen in the interactions, with the
item id as its text. Column names are matched after stripping whitespace and
lower-casing. Extra columns are ignored. README.md, "Your own data files", has the table.
"""

from __future__ import annotations

import collections
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tfrec_lm.data.schema import (
    BadRow,
    Dataset,
    LoadReport,
    check_reports,
    items_from_interactions,
    normalize_genres,
    require_rows,
    validate_interactions,
    validate_items,
)
from tfrec_lm.errors import DataError

FORMATS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
INTERACTION_REQUIRED = ("user_id", "item_id", "timestamp")
ITEM_TEXT_COLUMNS = ("title", "text")  # free text: a quoted value may hold line breaks


@dataclass
class RawTable:
    """Rows of a file before validation.

    Attributes:
        frame: pd.DataFrame. raw values, one column per header field.
        lines: np.ndarray int64. [n] 1-based source line of each row of frame.
        bad_rows: list[BadRow]. rows the reader could not split into fields.
    """

    frame: pd.DataFrame
    lines: np.ndarray
    bad_rows: list[BadRow] = field(default_factory=list)


def _open_text(path: Path):
    """Opens a file as text.

    Args:
        path: Path. the file.

    Returns:
        a text file object.

    Raises:
        DataError: the file does not exist.
    """
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    return open(path, newline="", encoding="utf-8-sig")


def not_utf8_error(path: str | Path, error: UnicodeDecodeError) -> DataError:
    """The DataError for a file that is not UTF-8, naming the first undecodable line and byte.

    A text reader decodes in blocks, so the decoder's position is an offset into a block,
    not into the file; the file is scanned again as bytes to find the line.

    Args:
        path: str | Path. the file.
        error: UnicodeDecodeError. what the text reader raised.

    Returns:
        DataError. "<path>, line N, byte B: not UTF-8 text (byte 0x.., <reason>)";
        byte B counts from 1 at the start of the line.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):  # a UTF-8 sequence never contains b"\n"
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as found:
                return DataError(f"{path}, line {number}, byte {found.start + 1}: not UTF-8 text "
                                 f"(byte 0x{raw[found.start]:02x}: {found.reason}); save the file as UTF-8")
    return DataError(f"{path}: not UTF-8 text ({error})")


class _LineSource:
    """The lines of a text file for csv.reader, with lines that can be handed out again.

    Lines are handed out in file order, so they are numbered by a counter.

    Attributes:
        number: int. 1-based number of the last line handed out (0 before the first).
        consumed: list[str]. lines handed out since the caller last emptied it: the
            physical lines of the record being read, the last one numbered `number`.
    """

    def __init__(self, handle):
        self._handle = handle
        self._pending: collections.deque = collections.deque()
        self.number = 0
        self.consumed: list[str] = []

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self._pending.popleft() if self._pending else next(self._handle)
        self.number += 1
        self.consumed.append(line)
        return line

    def read_again(self, lines: list[str]) -> None:
        """Hands lines out again.

        Args:
            lines: list[str]. the last lines handed out; they are handed out again next, in order.
        """
        self._pending.extendleft(reversed(lines))
        self.number -= len(lines)


def read_delimited(path: str | Path, delimiter: str, quoting: int = csv.QUOTE_MINIMAL,
                   multiline: tuple[str, ...] = ()) -> RawTable:
    """Read a delimited text file whose first line is the header.

    A quoted field may hold line breaks, so a record can span lines. A record that spans
    lines and is broken (wrong number of fields, a line break in a column not named in
    multiline, or malformed text) is most likely an unclosed quote that swallowed the
    lines after it: it is one bad row, reported at its first line with its last, and
    the lines after its first are read again as rows.

    Args:
        path: str | Path. the file.
        delimiter: str. field separator ("," or "\\t").
        quoting: int. csv module quoting mode (csv.QUOTE_NONE for RecBole atomic files).
        multiline: tuple[str, ...]. lower-case column names whose values may hold line
            breaks (free text); in any other column a line break makes the record bad.

    Returns:
        RawTable. all values as str; rows with the wrong number of fields are
        bad rows; blank lines are skipped (line numbers still count them).
    """
    path = Path(path)
    kind = "tab" if delimiter == "\t" else repr(delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    bad: list[BadRow] = []
    with _open_text(path) as handle:
        source = _LineSource(handle)
        reader = csv.reader(source, delimiter=delimiter, quoting=quoting)
        try:
            try:
                header = next(reader, None)
            except csv.Error as err:
                raise DataError(f"{path}, line 1: malformed {kind}-separated header: {err}") from err
            if header is None:
                raise DataError(f"{path}: the file is empty (a header line was expected)")
            header = [name.strip() for name in header]
            if len(set(header)) != len(header):
                raise DataError(f"{path}: repeated column names in the header: {header}")
            single_line = [i for i, name in enumerate(header) if name.lower() not in multiline]
            while True:
                source.consumed = []
                try:
                    record = next(reader)
                    reason = ""
                except StopIteration:
                    break
                except csv.Error as err:  # the reader starts afresh on the next call
                    record, reason = None, f"malformed {kind}-separated text ({err})"
                start, end = source.number - len(source.consumed) + 1, source.number
                if record is not None:
                    if not record or (len(record) == 1 and not record[0].strip()):
                        continue  # blank line
                    if len(record) != len(header):
                        reason = f"expected {len(header)} fields, found {len(record)}"
                    elif end > start:
                        broken = [header[i] for i in single_line if "\n" in record[i] or "\r" in record[i]]
                        if broken:
                            reason = f"a line break inside the {broken[0]!r} field"
                if not reason:
                    rows.append(record)
                    lines.append(start)
                elif end == start:
                    bad.append(BadRow(start, reason, raw="".join(source.consumed).rstrip("\r\n")))
                else:
                    bad.append(BadRow(start, f"{reason}: the record runs from line {start} to line {end} "
                                             f"(an unclosed quote?); lines {start + 1}-{end} are read again as rows",
                                      raw=source.consumed[0].rstrip("\r\n")))
                    source.read_again(source.consumed[1:])
        except UnicodeDecodeError as err:
            raise not_utf8_error(path, err) from err
    frame = pd.DataFrame(rows, columns=header, dtype=object) if rows else pd.DataFrame(columns=header, dtype=object)
    return RawTable(frame, np.asarray(lines, dtype=np.int64), bad)


def read_jsonl(path: str | Path) -> RawTable:
    """Read JSON Lines: one JSON object per line, the first line is line 1.

    Args:
        path: str | Path. the file.

    Returns:
        RawTable. columns are the union of the objects' keys; lines that are not a
        JSON object are bad rows; blank lines are skipped.
    """
    path = Path(path)
    records: list[dict] = []
    lines: list[int] = []
    bad: list[BadRow] = []
    try:
        with _open_text(path) as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if not records and not bad and line.lstrip().startswith("["):
                    raise DataError(f"{path}: expected JSON Lines (one object per line), found a JSON array")
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    bad.append(BadRow(number, f"not valid JSON ({err.msg})", raw=line.rstrip("\r\n")))
                    continue
                if not isinstance(record, dict):
                    bad.append(BadRow(number, f"expected a JSON object, found {type(record).__name__}",
                                      raw=line.rstrip("\r\n")))
                    continue
                records.append(record)
                lines.append(number)
    except UnicodeDecodeError as err:
        raise not_utf8_error(path, err) from err
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    frame.columns = [str(c).strip() for c in frame.columns]
    return RawTable(frame.astype(object), np.asarray(lines, dtype=np.int64), bad)


def read_parquet(path: str | Path) -> RawTable:
    """Read a Parquet file; row i (0-based) is reported as line i + 1.

    Args:
        path: str | Path. the file.

    Returns:
        RawTable. values keep their Parquet types.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file not found: {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read as Parquet ({err})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return RawTable(frame.reset_index(drop=True), np.arange(1, len(frame) + 1, dtype=np.int64), [])


def read_table(path: str | Path, multiline: tuple[str, ...] = ()) -> RawTable:
    """Read a file in the format named by its extension, with column names lower-cased.

    Args:
        path: str | Path. a .csv, .tsv, .parquet, .jsonl or .json (JSON Lines) file.
        multiline: tuple[str, ...]. CSV/TSV: lower-case columns whose quoted values may
            hold line breaks (see read_delimited).

    Returns:
        RawTable.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        supported = ", ".join(sorted(FORMATS))
        raise DataError(f"{path}: unsupported file extension {path.suffix!r} (supported: {supported})")
    if kind == "csv":
        table = read_delimited(path, ",", multiline=multiline)
    elif kind == "tsv":
        table = read_delimited(path, "\t", multiline=multiline)
    elif kind == "parquet":
        table = read_parquet(path)
    else:
        table = read_jsonl(path)
    names = [c.lower() for c in table.frame.columns]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: column names repeat when case is ignored: {list(table.frame.columns)}")
    table.frame.columns = names
    return table


def require_columns(table: RawTable, required: tuple[str, ...], path: str | Path) -> None:
    """Raise DataError naming every required column the table lacks.

    A JSON Lines table with no usable line gets the required columns, empty, so that
    its bad rows are reported instead.

    Args:
        table: RawTable. a table read by read_table.
        required: tuple[str, ...]. column names that must be present.
        path: str | Path. file name for the message.

    Raises:
        DataError: a required column is missing (the message names every one).
    """
    if len(table.frame.columns) == 0 and table.bad_rows:  # JSON Lines where no line was usable
        table.frame = pd.DataFrame({c: pd.Series([], dtype=object) for c in required})
        return
    missing = [c for c in required if c not in table.frame.columns]
    if missing:
        found = ", ".join(table.frame.columns) or "none"
        raise DataError(f"{path}: missing required column(s): {', '.join(missing)} (found: {found})")


def load_items_file(path: str | Path):
    """Read and validate an items file.

    Args:
        path: str | Path. file with item_id and text, or title [+ year] [+ genres].

    Returns:
        tuple (items: pd.DataFrame, report: LoadReport).
    """
    table = read_table(path, multiline=ITEM_TEXT_COLUMNS)
    require_columns(table, ("item_id",), path)
    if "text" not in table.frame.columns and "title" not in table.frame.columns:
        raise DataError(f"{path}: an items file needs a 'text' or a 'title' column (found: {', '.join(table.frame.columns)})")
    frame = table.frame.copy()
    if "genres" in frame.columns:
        frame["genres"] = [normalize_genres(g, "|") for g in frame["genres"]]
    return validate_items(frame, table.lines, str(path), table.bad_rows)


PARQUET_BATCH_ROWS = 1 << 20  # rows of a Parquet file validated at once (bounded memory for large files)


def interaction_files(path: str | Path) -> list[Path]:
    """The files an `--interactions` value names: one file, a folder of Parquet shards, or a glob.

    Args:
        path: str | Path. a file; a folder (its `*.parquet` files); or a glob pattern such
            as `data/part-*.parquet`.

    Returns:
        list[Path]. sorted by name; one element for a file.

    Raises:
        DataError: nothing matches, or a folder has no Parquet file.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.glob("*.parquet") if p.is_file())
        if not files:
            raise DataError(f"{path}: a folder of interactions must hold *.parquet shards; found none")
        return files
    if any(ch in str(path) for ch in "*?["):
        anchor = Path(path.anchor) if path.is_absolute() else Path(".")
        pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else str(path)
        files = sorted(p for p in anchor.glob(pattern) if p.is_file())
        if not files:
            raise DataError(f"no file matches {path}")
        unsupported = sorted({p.suffix for p in files if p.suffix.lower() != ".parquet"})
        if len(files) > 1 and unsupported:
            raise DataError(f"{path}: shards must be Parquet files; the pattern also matches {unsupported}")
        return files
    raise DataError(f"file not found: {path}")


def shard_files(files: list[Path], shard: tuple[int, int] | None) -> list[Path]:
    """The shards one worker reads: every `count`-th file from `index` (all of them without `shard`).

    Args:
        files: list[Path]. every shard, sorted.
        shard: (index, count) or None. this worker and the number of workers.

    Returns:
        list[Path].

    Raises:
        DataError: fewer files than workers (a worker would have no data).
    """
    if shard is None:
        return files
    index, count = shard
    if len(files) < count:
        raise DataError(f"{count} workers need at least {count} interaction shards, found {len(files)} "
                        f"({', '.join(p.name for p in files[:5])}); write one shard per worker or more, "
                        "each user's interactions in one shard")
    return files[index::count]


def _parquet_columns(path: Path) -> dict:
    """Lower-cased, stripped column name -> the file's own name, for a Parquet file."""
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read as Parquet ({err})") from err
    columns = {}
    for name in names:
        key = str(name).strip().lower()
        if key in columns:
            raise DataError(f"{path}: column names repeat when case is ignored: {names}")
        columns[key] = name
    return columns


def _as_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """The id columns as pandas categoricals: a code per row and each distinct id once."""
    for name in ("user_id", "item_id"):
        frame[name] = frame[name].astype("category")
    return frame


def _validated_parquet(path: Path, known: pd.Index | None) -> tuple[pd.DataFrame, LoadReport]:
    """Reads and validates a Parquet interactions file in batches of `PARQUET_BATCH_ROWS` rows.

    Only one batch is ever held as Python strings: each validated batch keeps its ids as
    categoricals, and the batches are joined at the end.

    Args:
        path: Path. the file.
        known: pd.Index or None. catalog item ids (rows with other items are bad).

    Returns:
        tuple (interactions: pd.DataFrame with categorical ids, report: LoadReport).
    """
    import pyarrow.parquet as pq

    columns = _parquet_columns(path)
    missing = [c for c in INTERACTION_REQUIRED if c not in columns]
    if missing:
        raise DataError(f"{path}: missing required column(s): {', '.join(missing)} "
                        f"(found: {', '.join(columns) or 'none'})")
    wanted = [c for c in (*INTERACTION_REQUIRED, "rating") if c in columns]
    frames, bad, rows = [], [], 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[columns[c] for c in wanted])
        for batch in batches:
            raw = batch.to_pandas()
            raw.columns = wanted
            lines = np.arange(rows + 1, rows + len(raw) + 1, dtype=np.int64)
            frame, report = validate_interactions(raw, lines, str(path), known)
            frames.append(_as_categories(frame))
            bad.extend(report.bad_rows)
            rows += len(raw)
            del raw
    except DataError:
        raise
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: cannot read as Parquet ({err})") from err
    report = LoadReport(source=str(path), rows_read=rows, bad_rows=bad)
    if not frames:
        empty = pd.DataFrame({"user_id": pd.Series([], dtype=object), "item_id": pd.Series([], dtype=object),
                              "timestamp": np.zeros(0, np.int64), "rating": np.zeros(0)})
        return _as_categories(empty), report
    return _concat_interactions(frames), report


def _concat_interactions(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Joins validated interaction frames whose ids are categoricals (their categories united)."""
    from pandas.api.types import union_categoricals

    if len(frames) == 1:
        return frames[0].reset_index(drop=True)
    joined = {name: union_categoricals([f[name] for f in frames]) for name in ("user_id", "item_id")}
    return pd.DataFrame({
        "user_id": pd.Series(joined["user_id"]),
        "item_id": pd.Series(joined["item_id"]),
        "timestamp": np.concatenate([f["timestamp"].to_numpy() for f in frames]),
        "rating": np.concatenate([f["rating"].to_numpy() for f in frames]),
    })


def load_interactions_file(path: str | Path, items_path: str | Path | None = None, strict: bool = False,
                           shard: tuple[int, int] | None = None) -> Dataset:
    """Load a user's interactions (and optionally items) into the project's schema.

    Args:
        path: str | Path. interactions: a file (.csv, .tsv, .parquet, .jsonl/.json), or
            Parquet shards (a folder of them, or a glob), read in file-name order. Parquet
            is read and validated in batches, its ids kept as categoricals.
        items_path: str | Path | None. items file; when given, interactions with items not
            in it are bad rows.
        strict: bool. raise DataError when any row breaks the schema (else report and skip it).
        shard: (index, count) or None. read only every `count`-th shard from `index` (a
            multi-worker run's worker `index` of `count`; each user's interactions must
            lie in one shard). None: every file.

    Returns:
        Dataset. named after the interactions file's stem (or the folder's name).
    """
    reports = []
    items = None
    known = None
    if items_path is not None:
        items, items_report = load_items_file(items_path)
        reports.append(items_report)
        known = pd.Index(items["item_id"])
    files = shard_files(interaction_files(path), shard)
    parts = []
    for file in files:
        if file.suffix.lower() == ".parquet":
            interactions, report = _validated_parquet(file, known)
        else:
            table = read_table(file)
            require_columns(table, INTERACTION_REQUIRED, file)
            columns = [c for c in (*INTERACTION_REQUIRED, "rating") if c in table.frame.columns]
            interactions, report = validate_interactions(table.frame[columns], table.lines, str(file), known,
                                                         table.bad_rows)
        parts.append(interactions)
        reports.append(report)
    check_reports(reports, strict)
    if items is not None:
        require_rows(reports[0], len(items), "items")
    interaction_reports = reports[1:] if items is not None else reports
    total = LoadReport(source=str(path), rows_read=sum(r.rows_read for r in interaction_reports),
                       bad_rows=[b for r in interaction_reports for b in r.bad_rows])
    interactions = parts[0] if len(parts) == 1 else _concat_interactions(parts)
    require_rows(total, len(interactions), "interactions")
    if items is None:
        items = items_from_interactions(interactions)
    name = Path(path).stem if Path(path).is_file() else Path(str(path).rstrip("/*")).name or "interactions"
    return Dataset(name=name, interactions=interactions, items=items, reports=reports)
