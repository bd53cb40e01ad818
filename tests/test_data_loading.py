"""Loaders and schema validation: exact bad-row line numbers, strict mode, formats, TFDS fallbacks."""

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tfrec_lm.data.files import load_interactions_file
from tfrec_lm.data.movielens import (
    load_movielens_100k,
    load_movielens_100k_tfds,
    tfds_available,
    tfds_to_dataset,
)
from tfrec_lm.data.schema import BadRow, LoadReport, item_text
from tfrec_lm.errors import DataError

GOOD_ROWS = [
    ("u1", "a", 100, 4.0),
    ("u1", "b", 200, 3.0),
    ("u2", "a", 150, 5.0),
    ("u2", "c", 150, 1.0),
]


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def good_frame():
    return pd.DataFrame(GOOD_ROWS, columns=["user_id", "item_id", "timestamp", "rating"])


def test_item_text():
    assert item_text("Toy Story", "1995", ("Animation", "Children's", "Comedy")) == (
        "Toy Story (1995). Genres: Animation, Children's, Comedy"
    )
    assert item_text("Toy Story", "", ("Comedy",)) == "Toy Story. Genres: Comedy"
    assert item_text("Toy Story", "1995", ()) == "Toy Story (1995)"
    assert item_text("Heat") == "Heat"


def test_load_report_summary():
    report = LoadReport("x.csv", 10, [BadRow(line, "broken") for line in range(2, 9)])
    text = report.summary(max_rows=3)
    assert report.n_bad == 7
    assert "x.csv: 10 rows read, 7 bad rows left out" in text
    assert "line 2: broken" in text and "line 4: broken" in text and "line 5" not in text
    assert "and 4 more" in text


CSV_WITH_BAD_ROWS = (
    "user_id,item_id,timestamp,rating\n"  # line 1
    "u1,a,100,4\n"  # 2 ok
    ",a,101,4\n"  # 3 missing user_id
    "u1,b,abc,3\n"  # 4 non-integer timestamp
    "\n"  # 5 blank, skipped but counted
    "u2,a,-5,2\n"  # 6 negative timestamp
    "u2,c,150,great\n"  # 7 non-numeric rating
    "u2,d,160,\n"  # 8 ok, rating absent -> NaN
    "u3,e,170\n"  # 9 wrong number of fields
    "u3,,180,1\n"  # 10 missing item_id
    "u3,a,1.5,1\n"  # 11 non-integer timestamp
    "u3,b,200.0,1\n"  # 12 ok: integral float
)


def test_csv_bad_rows_have_exact_line_numbers(tmp_path, caplog):
    path = write(tmp_path / "inter.csv", CSV_WITH_BAD_ROWS)
    with caplog.at_level(logging.INFO, logger="tfrec_lm.data.schema"):
        ds = load_interactions_file(path)
    (report,) = ds.reports
    assert report.rows_read == 10
    lines = [b.line for b in report.bad_rows]
    assert lines == [3, 4, 6, 7, 9, 10, 11]
    reasons = {b.line: b.reason for b in report.bad_rows}
    assert "missing user_id" in reasons[3]
    assert "timestamp 'abc' is not an integer" in reasons[4]
    assert "negative" in reasons[6]
    assert "rating 'great' is not a number" in reasons[7]
    assert "expected 4 fields, found 3" in reasons[9]
    assert "missing item_id" in reasons[10]
    assert "'1.5' is not an integer" in reasons[11]
    frame = ds.interactions
    assert frame["user_id"].tolist() == ["u1", "u2", "u3"]
    assert frame["timestamp"].tolist() == [100, 160, 200]
    assert frame["timestamp"].dtype == np.int64 and frame["rating"].dtype == np.float64
    assert np.isnan(frame["rating"][1])
    assert "7 bad rows" in caplog.text and "line 3" in caplog.text


def test_strict_mode_raises_with_count_and_lines(tmp_path):
    path = write(tmp_path / "inter.csv", CSV_WITH_BAD_ROWS)
    with pytest.raises(DataError) as err:
        load_interactions_file(path, strict=True)
    message = str(err.value)
    assert "7 bad rows" in message and "strict" in message
    assert str(path) in message
    assert "line 3: missing user_id" in message
    assert "and 2 more" in message  # only the first five are listed


def test_missing_file_and_columns_and_extension(tmp_path):
    with pytest.raises(DataError, match="not found.*nope.csv"):
        load_interactions_file(tmp_path / "nope.csv")
    path = write(tmp_path / "inter.csv", "user_id,item,rating\nu1,a,3\n")
    with pytest.raises(DataError) as err:
        load_interactions_file(path)
    assert "item_id, timestamp" in str(err.value) and "missing required column" in str(err.value)
    with pytest.raises(DataError, match="unsupported file extension '.xlsx'"):
        load_interactions_file(write(tmp_path / "inter.xlsx", "x"))
    with pytest.raises(DataError, match="empty"):
        load_interactions_file(write(tmp_path / "empty.csv", ""))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_all_formats_give_the_same_dataset(tmp_path, fmt):
    frame = good_frame()
    path = tmp_path / f"inter.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    ds = load_interactions_file(path)
    assert ds.reports[0].n_bad == 0
    interactions = ds.interactions
    if fmt == "parquet":  # read in batches, ids kept as categoricals (each distinct id once)
        assert all(isinstance(interactions[c].dtype, pd.CategoricalDtype) for c in ("user_id", "item_id"))
        interactions = interactions.astype({"user_id": object, "item_id": object})
    pd.testing.assert_frame_equal(interactions, frame.astype({"user_id": object, "item_id": object}))
    # no items file: catalog in order of first appearance, text = item id
    assert ds.items["item_id"].tolist() == ["a", "b", "c"]
    assert ds.items["text"].tolist() == ["a", "b", "c"]
    assert ds.items["genres"].tolist() == [(), (), ()]


def test_jsonl_line_numbers_start_at_one(tmp_path):
    lines = [json.dumps({"user_id": "u1", "item_id": "a", "timestamp": 1}), "{not json", "[1, 2]", ""]
    lines.append(json.dumps({"user_id": "u1", "item_id": "b", "timestamp": -1}))
    path = write(tmp_path / "inter.jsonl", "\n".join(lines) + "\n")
    ds = load_interactions_file(path)
    assert [(b.line, b.reason.split(" (")[0]) for b in ds.reports[0].bad_rows] == [
        (2, "not valid JSON"),
        (3, "expected a JSON object, found list"),
        (5, "timestamp -1 is negative"),
    ]
    assert ds.interactions["item_id"].tolist() == ["a"]
    assert np.isnan(ds.interactions["rating"][0])  # no rating column -> NaN


def test_parquet_line_is_row_number_plus_one(tmp_path):
    frame = good_frame()
    frame.loc[2, "timestamp"] = -7
    path = tmp_path / "inter.parquet"
    frame.to_parquet(path)
    ds = load_interactions_file(path)
    assert [b.line for b in ds.reports[0].bad_rows] == [3]


def test_items_file_validation_and_text(tmp_path):
    items = write(
        tmp_path / "items.csv",
        "item_id,title,year,genres\n"
        "a,Toy Story,1995,Animation|Children's|Comedy\n"
        "b,Heat,,\n"
        "a,Duplicate,2000,Drama\n"  # line 4: duplicate
        "c,Casino,1995,Crime|Drama\n",
    )
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,zz,2\nu2,c,3\n")
    ds = load_interactions_file(inter, items_path=items)
    items_report, inter_report = ds.reports
    assert [(b.line, b.reason) for b in items_report.bad_rows] == [(4, "duplicate item_id 'a' (first on line 2)")]
    assert [b.line for b in inter_report.bad_rows] == [3]
    assert "'zz' is not in the items table" in inter_report.bad_rows[0].reason
    assert ds.items["item_id"].tolist() == ["a", "b", "c"]
    assert ds.items["text"].tolist() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy",
        "Heat",
        "Casino (1995). Genres: Crime, Drama",
    ]
    assert ds.items["genres"][0] == ("Animation", "Children's", "Comedy")
    assert ds.items["year"].tolist() == ["1995", "", "1995"]
    with pytest.raises(DataError, match="'text' or a 'title'"):
        load_interactions_file(inter, items_path=write(tmp_path / "bad_items.csv", "item_id,name\na,x\n"))


def test_items_text_column_is_used_as_is(tmp_path):
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "a", "text": "A film about toys"}\n{"item_id": 7, "text": "Seven"}\n')
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,7,1\nu1,a,2\n")
    ds = load_interactions_file(inter, items_path=items)
    assert ds.items["item_id"].tolist() == ["a", "7"]
    assert ds.items["text"].tolist() == ["A film about toys", "Seven"]
    assert ds.interactions["item_id"].tolist() == ["7", "a"]


def write_recbole(directory, inter_rows, item_rows):
    directory.mkdir(parents=True, exist_ok=True)
    write(
        directory / "ml-100k.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + "".join(r + "\n" for r in inter_rows),
    )
    write(
        directory / "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        + "".join(r + "\n" for r in item_rows),
    )
    return directory


ITEM_ROWS = [
    "1\tToy Story\t1995\tAnimation Children's Comedy",
    "2\tGoldenEye\t1995\tAction Adventure Thriller",
    "267\tunkonwn\tunkonwn\tunknown",
    "4\tNo Year\t\tDrama",
]


def test_movielens_recbole_loader(tmp_path):
    directory = write_recbole(
        tmp_path / "ml",
        ["196\t1\t3\t881250949", "186\t2\t3\t891717742", "22\t267\t1\t878887116", "5\t4\t2\t878887117"],
        ITEM_ROWS,
    )
    ds = load_movielens_100k(directory)
    assert [r.n_bad for r in ds.reports] == [0, 0]
    assert ds.interactions["user_id"].tolist() == ["196", "186", "22", "5"]
    assert ds.interactions["rating"].tolist() == [3.0, 3.0, 1.0, 2.0]
    assert ds.interactions["timestamp"].tolist() == [881250949, 891717742, 878887116, 878887117]
    items = ds.items.set_index("item_id")
    assert items.loc["1", "text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert items.loc["1", "genres"] == ("Animation", "Children's", "Comedy")
    assert items.loc["267", "year"] == "" and items.loc["267", "genres"] == ()
    assert items.loc["4", "text"] == "No Year. Genres: Drama"


def test_movielens_bad_rows_and_errors(tmp_path):
    directory = write_recbole(
        tmp_path / "ml",
        ["196\t1\t3\t881250949", "186\t99\t3\t891717742", "22\t2\t1", "5\t4\tx\t878887117"],
        ITEM_ROWS,
    )
    ds = load_movielens_100k(directory)
    assert [(b.line, b.reason.split(" ")[0]) for b in ds.reports[1].bad_rows] == [(3, "item_id"), (4, "expected"), (5, "rating")]
    assert len(ds.interactions) == 1
    with pytest.raises(DataError, match="3 bad rows"):
        load_movielens_100k(directory, strict=True)
    (directory / "ml-100k.item").unlink()
    with pytest.raises(DataError) as err:
        load_movielens_100k(directory)
    assert "not found" in str(err.value) and str(directory / "ml-100k.item") in str(err.value)
    write(directory / "ml-100k.item", "id:token\tname:token_seq\n1\tx\n")
    with pytest.raises(DataError, match="malformed.*item_id"):
        load_movielens_100k(directory)


def test_tfds_absent_is_fast_and_clean(tmp_path):
    start = time.perf_counter()
    assert tfds_available(tmp_path) is False
    assert time.perf_counter() - start < 2.0
    with pytest.raises(DataError, match="could not obtain TFDS|not installed"):
        load_movielens_100k_tfds(data_dir=tmp_path, download=False)


def test_tfds_records_convert_to_schema():
    genre_names = ["Action", "Animation", "Children", "Comedy", "Unknown"]
    movies = [
        {"movie_id": b"10", "movie_title": b"Heat (1995)", "movie_genres": np.array([0])},
        {"movie_id": b"2", "movie_title": b"Toy Story (1995)", "movie_genres": np.array([1, 2, 3])},
        {"movie_id": b"3", "movie_title": b"unknown", "movie_genres": np.array([4])},
    ]
    batches = [
        {
            "user_id": np.array([b"7", b"8"]),
            "movie_id": np.array([b"2", b"10"]),
            "user_rating": np.array([4.0, 5.0], np.float32),
            "timestamp": np.array([5, 6]),
        },
        {"user_id": np.array([b"7"]), "movie_id": np.array([b"99"]), "user_rating": np.array([1.0]), "timestamp": np.array([7])},
    ]
    ds = tfds_to_dataset(batches, movies, genre_names)
    assert ds.items["item_id"].tolist() == ["2", "3", "10"]
    assert ds.items["text"].tolist() == ["Toy Story (1995). Genres: Animation, Children, Comedy", "unknown", "Heat (1995). Genres: Action"]
    assert ds.interactions["item_id"].tolist() == ["2", "10"]
    assert [b.line for b in ds.reports[1].bad_rows] == [3]


def test_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import tfrec_lm.data.schema, tfrec_lm.data.files, tfrec_lm.data.movielens, tfrec_lm.data.split\n"
        "import tfrec_lm.evaluation.metrics, tfrec_lm.evaluation.migration, tfrec_lm.evaluation.popularity\n"
        "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1]
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------- damaged files (issue 11, section 3)


def interaction_lines(count, first=0):
    """count: int. Returns list[str] of good CSV interaction rows u<k>,i<k>,<1000+k>."""
    return [f"u{k % 3},i{k},{1000 + k}" for k in range(first, first + count)]


def test_unclosed_quote_is_one_bad_row_and_the_lines_after_it_load(tmp_path):
    rows = interaction_lines(17)
    rows[1] = 'u1,"i1,1001'  # line 3: the quote is never closed and swallows lines 4-18
    path = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    ds = load_interactions_file(path)
    (report,) = ds.reports
    assert report.rows_read == 17 and [b.line for b in report.bad_rows] == [3]
    reason = report.bad_rows[0].reason
    assert "line 3 to line 18" in reason and "read again" in reason
    assert ds.interactions["item_id"].tolist() == ["i0"] + [f"i{k}" for k in range(2, 17)]


def test_quote_closed_lines_later_does_not_swallow_rows(tmp_path):
    # The quote opened on line 3 closes on line 6, giving a record with the right number of
    # fields whose item_id holds line breaks: still a bad row, and lines 4-6 are read again.
    rows = interaction_lines(8)
    rows[1] = 'u1,"i1,1001'
    rows[4] = 'u1,i4",1004'
    path = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    ds = load_interactions_file(path)
    (report,) = ds.reports
    assert [b.line for b in report.bad_rows] == [3]
    assert "line break inside the 'item_id' field" in report.bad_rows[0].reason
    assert "line 3 to line 6" in report.bad_rows[0].reason
    assert ds.interactions["item_id"].tolist() == ["i0", "i2", "i3", 'i4"', "i5", "i6", "i7"]
    assert report.rows_read == 8


def test_quoted_line_break_in_item_text_is_legal(tmp_path):
    items = write(tmp_path / "items.csv", 'item_id,title\na,"Toy\nStory"\nb,Heat\n')
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,b,2\n")
    ds = load_interactions_file(inter, items)
    assert [r.n_bad for r in ds.reports] == [0, 0]
    assert ds.items["title"].tolist() == ["Toy\nStory", "Heat"]


@pytest.mark.parametrize("suffix", ["csv", "jsonl"])
def test_non_utf8_byte_names_the_line_and_byte(tmp_path, suffix):
    # Far beyond the text reader's first decoding block, whose offset the old message gave.
    if suffix == "csv":
        head = "user_id,item_id,timestamp\n" + "\n".join(interaction_lines(3000)) + "\n"
        bad = b"u1,caf\xe9,5\n"
    else:
        head = "".join(json.dumps({"user_id": "u", "item_id": f"i{k}", "timestamp": k}) + "\n" for k in range(3001))
        bad = b'{"user_id": "u1", "item_id": "caf\xe9", "timestamp": 5}\n'
    path = tmp_path / f"inter.{suffix}"
    path.write_bytes(head.encode() + bad)
    with pytest.raises(DataError) as err:
        load_interactions_file(path)
    message = str(err.value)
    column = bad.index(b"\xe9") + 1
    assert f"line 3002, byte {column}: not UTF-8" in message and "0xe9" in message


def test_nul_in_a_field_is_a_bad_row(tmp_path):
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,a\x00,2\nu\x002,b,3\nu1,b,4\n")
    ds = load_interactions_file(inter)
    (report,) = ds.reports
    assert [(b.line, b.reason) for b in report.bad_rows] == [
        (3, "item_id 'a\\x00' contains a NUL character"),
        (4, "user_id 'u\\x002' contains a NUL character"),
    ]
    assert ds.interactions["item_id"].tolist() == ["a", "b"]
    assert ds.items["item_id"].tolist() == ["a", "b"]
    # JSON Lines ("\u0000" is valid JSON) and items files alike
    lines = [json.dumps({"user_id": "u1", "item_id": i, "timestamp": 1}) for i in ("a", "a\x00")]
    ds = load_interactions_file(write(tmp_path / "inter.jsonl", "\n".join(lines) + "\n"))
    assert [b.line for b in ds.reports[0].bad_rows] == [2]
    items = write(tmp_path / "items.csv", "item_id,title\na,Heat\nb\x00,Up\nc,Up\x00\n")
    ds = load_interactions_file(write(tmp_path / "inter2.csv", "user_id,item_id,timestamp\nu1,a,1\n"), items)
    assert [(b.line, b.reason.split(" ")[0]) for b in ds.reports[0].bad_rows] == [(3, "item_id"), (4, "title")]
    assert ds.items["item_id"].tolist() == ["a"]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_file_without_usable_rows_is_a_data_error(tmp_path, fmt):
    if fmt == "csv":
        empty = write(tmp_path / "empty.csv", "user_id,item_id,timestamp\n\n")
        all_bad = write(tmp_path / "bad.csv", "user_id,item_id,timestamp\nu1,a,x\nu1,b\n")
    else:
        empty = None
        all_bad = write(tmp_path / "bad.jsonl", '{"user_id": "u1", "item_id": "a", "timestamp": "x"}\n{oops\n')
    if empty is not None:
        with pytest.raises(DataError, match="no interactions to use: the file has no data rows"):
            load_interactions_file(empty)
    with pytest.raises(DataError) as err:
        load_interactions_file(all_bad)
    first = 2 if fmt == "csv" else 1  # JSON Lines has no header line
    assert f"no interactions to use: all 2 rows break the schema (the first, line {first}: timestamp 'x'" in str(err.value)
    good = write(tmp_path / "good.csv", "user_id,item_id,timestamp\nu1,a,1\n")
    items = write(tmp_path / "items.csv", "item_id,title\n,Heat\n")
    with pytest.raises(DataError, match="items.csv: no items to use: all 1 rows break the schema"):
        load_interactions_file(good, items)


def test_tokenize_items_rejects_an_empty_catalog(tokenizer):
    from tfrec_lm.text import tokenize_items

    with pytest.raises(ValueError, match="no item texts to tokenize: the catalog is empty"):
        tokenize_items([], tokenizer, 8)
    assert tokenize_items(["alpha"], tokenizer, 8).token_ids.shape == (2, 8)


def shards(tmp_path, count=3, users=9, per_user=4):
    """`count` Parquet shards of `users` users, each user's rows in one shard; and all rows."""
    rows = [(f"u{u}", f"i{(u * 7 + k) % 11}", 100 * u + k, float(k % 5 + 1))
            for u in range(users) for k in range(per_user)]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    folder = tmp_path / "interactions"
    folder.mkdir()
    for s in range(count):
        part = frame[frame["user_id"].str[1:].astype(int) % count == s]
        part.to_parquet(folder / f"part-{s:05d}.parquet", index=False)
    return folder, frame


def as_objects(frame):
    return frame.astype({"user_id": object, "item_id": object}).reset_index(drop=True)


def test_a_folder_or_glob_of_parquet_shards_reads_every_shard_in_name_order(tmp_path):
    folder, frame = shards(tmp_path)
    expected = pd.concat([frame[frame["user_id"].str[1:].astype(int) % 3 == s] for s in range(3)])
    for path in (folder, folder / "part-*.parquet"):
        ds = load_interactions_file(path)
        pd.testing.assert_frame_equal(as_objects(ds.interactions), as_objects(expected))
        assert [r.source for r in ds.reports] == [str(folder / f"part-{s:05d}.parquet") for s in range(3)]
    assert load_interactions_file(folder).name == "interactions"


def test_a_worker_reads_only_its_own_shards(tmp_path):
    folder, frame = shards(tmp_path, count=4, users=12)
    seen = []
    for index in range(2):
        ds = load_interactions_file(folder, shard=(index, 2))
        assert [Path(r.source).name for r in ds.reports] == [f"part-{s:05d}.parquet" for s in (index, index + 2)]
        users = set(ds.interactions["user_id"].astype(str))
        assert users == {f"u{u}" for u in range(12) if u % 4 in (index, index + 2)}
        seen.append(users)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12
    with pytest.raises(DataError, match="5 workers need at least 5 interaction shards"):
        load_interactions_file(folder, shard=(0, 5))


def test_large_parquet_is_validated_in_batches_with_bad_rows_at_their_row_numbers(tmp_path, monkeypatch):
    import tfrec_lm.data.files as files

    monkeypatch.setattr(files, "PARQUET_BATCH_ROWS", 4)
    frame = good_frame()
    frame = pd.concat([frame] * 3, ignore_index=True)
    frame.loc[5, "timestamp"] = -1  # line 6 (row number + 1), in the second batch of 4
    path = tmp_path / "inter.parquet"
    frame.to_parquet(path)
    ds = load_interactions_file(path)
    assert [b.line for b in ds.reports[0].bad_rows] == [6] and ds.reports[0].rows_read == len(frame)
    pd.testing.assert_frame_equal(as_objects(ds.interactions), as_objects(frame.drop(index=5)))


def test_shard_paths_that_match_nothing_say_so(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="must hold \\*.parquet shards"):
        load_interactions_file(tmp_path / "empty")
    with pytest.raises(DataError, match="no file matches"):
        load_interactions_file(tmp_path / "none-*.parquet")


# ---------------------------------------------------------------- timestamps as dates, empty titles, the bad-rows file


def test_timestamps_as_iso_dates_and_unix_seconds(tmp_path):
    from tfrec_lm.config import parse_time

    inter = write(tmp_path / "inter.csv", (
        "user_id,item_id,timestamp\n"            # line 1
        "u1,a,1998-03-01\n"                       # 2 a date: midnight UTC
        "u1,b,1998-03-01T12:00:00+02:00\n"        # 3 an offset: 10:00 UTC
        "u1,c,1998-03-01 12:00:00\n"              # 4 no offset: UTC
        "u1,d,1998-03-01T10:00:00.9Z\n"           # 5 Z, the fraction dropped
        "u2,a,881250949\n"                        # 6 an integer stays Unix seconds
        "u2,b,yesterday\n"                        # 7 neither
        "u2,c,1998-02-30\n"                       # 8 no such day
        "u2,d,1969-12-31\n"                       # 9 before 1970
    ))
    ds = load_interactions_file(inter)
    assert ds.interactions["timestamp"].tolist() == [
        parse_time("1998-03-01"), parse_time("1998-03-01T12:00:00+02:00"), parse_time("1998-03-01T12:00:00"),
        parse_time("1998-03-01T10:00:00Z"), 881250949]
    assert ds.interactions["timestamp"].tolist()[:2] == [888710400, 888746400]
    reasons = {b.line: b.reason for b in ds.reports[0].bad_rows}
    assert sorted(reasons) == [7, 8, 9]
    assert "timestamp 'yesterday' is not an integer" in reasons[7] and "ISO-8601" in reasons[7]
    assert "'1998-02-30'" in reasons[8]
    assert "negative" in reasons[9]
    # JSON Lines strings and Parquet datetime columns (naive = UTC, or with a zone) alike
    lines = [json.dumps({"user_id": "u1", "item_id": "a", "timestamp": "1998-03-01T12:00:00+02:00"}),
             json.dumps({"user_id": "u1", "item_id": "b", "timestamp": 888710400})]
    ds = load_interactions_file(write(tmp_path / "inter.jsonl", "\n".join(lines) + "\n"))
    assert ds.interactions["timestamp"].tolist() == [888746400, 888710400]
    for stamps in (pd.to_datetime(["1998-03-01 00:00", "1998-03-01 10:00"]),
                   pd.to_datetime(["1998-03-01T02:00", "1998-03-01T12:00"]).tz_localize("Europe/Athens")):
        frame = pd.DataFrame({"user_id": ["u1", "u1"], "item_id": ["a", "b"], "timestamp": stamps})
        frame.to_parquet(tmp_path / "inter.parquet")
        ds = load_interactions_file(tmp_path / "inter.parquet")
        assert ds.interactions["timestamp"].tolist() == [888710400, 888746400] and ds.reports[0].n_bad == 0


def test_empty_titles_are_bad_rows(tmp_path):
    items = write(tmp_path / "items.csv", (
        "item_id,title,year,genres\n"
        "a,Heat,1995,Crime\n"
        "b,,1995,Drama\n"          # line 3: empty
        'c,"   ",,Comedy\n'         # line 4: whitespace only
        "d,Up,,\n"
    ))
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\nu1,a,1\nu1,d,2\n")
    ds = load_interactions_file(inter, items_path=items)
    assert [(b.line, b.reason) for b in ds.reports[0].bad_rows] == [(3, "empty title"), (4, "empty title")]
    assert ds.items["item_id"].tolist() == ["a", "d"]
    # A text column: an empty text falls back on the title; with neither, a bad row.
    items = write(tmp_path / "items.jsonl", "\n".join(json.dumps(r) for r in [
        {"item_id": "a", "text": "A film about toys"}, {"item_id": "d", "text": " ", "title": "Up"},
        {"item_id": "e", "text": "", "title": ""}]) + "\n")
    ds = load_interactions_file(inter, items_path=items)
    assert [(b.line, b.reason) for b in ds.reports[0].bad_rows] == [(3, "empty text and title")]
    assert ds.items["text"].tolist() == ["A film about toys", "Up"]
    items = write(tmp_path / "text_only.csv", "item_id,text\na,Toys\nd,\n")
    ds = load_interactions_file(write(tmp_path / "inter_a.csv", "user_id,item_id,timestamp\nu1,a,1\n"), items)
    assert [(b.line, b.reason) for b in ds.reports[0].bad_rows] == [(3, "empty text")]


def test_every_bad_row_is_written_with_line_column_reason_and_value(tmp_path):
    from tfrec_lm.config import TrainConfig
    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.data.schema import data_report

    items = write(tmp_path / "items.csv", "item_id,title\na,Heat\nb,\nc,Up\nd,Big\n")
    good = [f"u{u},{i},{10 * u + k}" for u in range(3) for k, i in enumerate("acdacd")]
    bad = ["u9,a,yesterday", "u9,zz,5", ",c,abc", "u9,a,1,2,3"] + [f"u9,a,-{k}" for k in range(1, 6)]
    inter = write(tmp_path / "inter.csv", "user_id,item_id,timestamp\n" + "\n".join(good + bad) + "\n")
    config = TrainConfig(data="files", interactions=str(inter), items=str(items), max_history=5)
    report_path = tmp_path / "run" / "bad_rows.csv"
    data = prepare_data(config, bad_rows_path=report_path)
    assert data.dataset.bad_rows_path == report_path
    table = pd.read_csv(report_path, dtype=str, keep_default_na=False)
    assert list(table.columns) == ["source", "line", "column", "reason", "value"]
    first = len(good) + 2  # the first bad interaction's line
    rows = [tuple(r) for r in table[["line", "column", "value"]].itertuples(index=False)]
    assert rows[0] == ("3", "title", "")  # the items file's empty title
    assert table["source"].tolist()[:2] == [str(items), str(inter)]
    assert rows[1:6] == [(str(first), "timestamp", "yesterday"), (str(first + 1), "item_id", "zz"),
                         (str(first + 2), "user_id", ""), (str(first + 2), "timestamp", "abc"),
                         (str(first + 3), "", "u9,a,1,2,3")]
    assert table["reason"][4] == "timestamp 'abc' is not an integer: expected " + \
        "Unix seconds or an ISO-8601 date/time such as 1998-03-01 or 1998-03-01T12:00:00+02:00"
    assert table["reason"][5] == "expected 3 fields, found 5"
    # every bad row is there (9 interactions, one row with two problems, one item), not just 5
    assert len(table) == 1 + 9 + 1 and sum(r.n_bad for r in data.dataset.reports) == 10
    text = data_report(data.dataset)
    assert text.count("bad rows left out") == 2 and "and 4 more" in text and str(report_path) in text
    # the caller's dataset is not changed; without bad rows a stale file goes
    clean = load_interactions_file(write(tmp_path / "clean.csv", "user_id,item_id,timestamp\n" + "\n".join(good)))
    data = prepare_data(config, dataset=clean, bad_rows_path=report_path)
    assert data.dataset.bad_rows_path is None and not report_path.exists() and data_report(data.dataset) == ""
