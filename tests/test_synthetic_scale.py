"""The MovieLens-20M-shaped synthetic generator (tfrec_lm.data.synthetic_scale), at a few thousand rows."""

import json

import numpy as np
import pandas as pd
import pytest

from tfrec_lm.data import synthetic_scale as scale
from tfrec_lm.data.files import load_interactions_file, load_items_file
from tfrec_lm.errors import ConfigError

SIZE = dict(interactions=20_000, users=200, items=1_000)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """One generated set: (directory, manifest, interactions of all shards with a `shard` column, items)."""
    directory = tmp_path_factory.mktemp("scale")
    manifest = scale.write_synthetic_scale(directory, shards=4, seed=3, **SIZE)
    frames = []
    for s, shard in enumerate(manifest["shards"]):
        frame = pd.read_parquet(directory / shard["path"])
        frame["shard"] = s
        frames.append(frame)
    items = pd.read_parquet(directory / "items.parquet")
    return directory, manifest, pd.concat(frames, ignore_index=True), items


def read_all(directory):
    """The interactions of every shard listed in a folder's manifest, in shard order.

    Args:
        directory: Path. a generated folder.

    Returns:
        pd.DataFrame.
    """
    manifest = json.loads((directory / "manifest.json").read_text())
    return pd.concat([pd.read_parquet(directory / s["path"]) for s in manifest["shards"]], ignore_index=True)


def test_counts_match_the_request(generated):
    directory, manifest, rows, items = generated
    assert len(rows) == SIZE["interactions"] == manifest["interactions"]
    assert rows["user_id"].nunique() == SIZE["users"] == manifest["users"]
    assert len(items) == SIZE["items"] == manifest["items"] and items["item_id"].is_unique
    assert sum(s["rows"] for s in manifest["shards"]) == len(rows)
    assert sorted(p.name for p in (directory / "interactions").iterdir()) == [f"part-{s:05d}.parquet" for s in range(4)]
    assert json.loads((directory / "manifest.json").read_text()) == manifest
    assert set(rows["item_id"]) <= set(items["item_id"])


def test_default_sizes_follow_movielens_20m():
    users, items = scale.default_sizes(20_000_263)
    assert (users, items) == (138_493, 27_278)
    users_1m, items_1m = scale.default_sizes(1_000_000)
    assert users_1m == pytest.approx(6_925, abs=1) and 3_000 < items_1m < 27_278 / 4  # items grow sublinearly
    assert scale.default_sizes(4_000) == (28, 3_000)  # at least 3,000 items
    assert scale.default_sizes(1_000, users=10, items=50) == (10, 50)
    with pytest.raises(ConfigError, match="at least"):
        scale.default_sizes(100, users=30)  # fewer than 5 interactions per user


def test_every_user_is_in_exactly_one_shard_by_contiguous_ranges(generated):
    _, manifest, rows, _ = generated
    shards_of_user = rows.groupby("user_id")["shard"].nunique()
    assert (shards_of_user == 1).all()
    for s, shard in enumerate(manifest["shards"]):
        ids = rows.loc[rows["shard"] == s, "user_id"].astype(int)
        assert ids.min() == int(shard["first_user_id"]) and ids.max() == int(shard["last_user_id"])
        assert ids.nunique() == shard["users"] == ids.max() - ids.min() + 1
        assert (rows["shard"] == s).sum() == shard["rows"]
    heaviest = rows.groupby("user_id").size().max()
    for shard in manifest["shards"]:  # cut to equal interactions, give or take one user
        assert abs(shard["rows"] - len(rows) / 4) <= heaviest


def test_shards_load_with_the_project_loaders(generated):
    directory, manifest, _, _ = generated
    items, report = load_items_file(directory / "items.parquet")
    assert report.n_bad == 0 and len(items) == SIZE["items"]
    first = items.iloc[0]
    assert first["text"] == f"{first['title']} ({first['year']}). Genres: {', '.join(first['genres'])}"
    assert all(1 <= len(g) <= 4 and set(g) <= set(scale.GENRES) for g in items["genres"])
    shard = manifest["shards"][1]
    data = load_interactions_file(directory / shard["path"], directory / "items.parquet", strict=True)
    assert len(data.interactions) == shard["rows"] and all(r.n_bad == 0 for r in data.reports)
    assert data.interactions["timestamp"].dtype == np.int64
    assert set(data.interactions["rating"].unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_same_seed_same_files_whatever_the_shards(generated, tmp_path):
    directory, _, rows, _ = generated
    scale.write_synthetic_scale(tmp_path / "again", shards=4, seed=3, **SIZE)
    for name in ["items.parquet"] + [f"interactions/part-{s:05d}.parquet" for s in range(4)]:
        assert (tmp_path / "again" / name).read_bytes() == (directory / name).read_bytes(), name
    scale.write_synthetic_scale(tmp_path / "two", shards=2, seed=3, **SIZE)
    pd.testing.assert_frame_equal(read_all(tmp_path / "two"), rows.drop(columns="shard"))
    scale.write_synthetic_scale(tmp_path / "other", shards=4, seed=4, **SIZE)
    assert not read_all(tmp_path / "other").equals(rows.drop(columns="shard"))


def test_items_are_consumed_only_after_release_and_arrive_over_time(generated):
    _, _, rows, items = generated
    release = items.set_index("item_id")["release_timestamp"]
    assert (rows["timestamp"].to_numpy() >= release.loc[rows["item_id"]].to_numpy()).all()
    years = pd.to_datetime(items["release_timestamp"], unit="s").dt.year.astype(str)
    assert (years == items["year"]).all()
    first_seen = rows.groupby("item_id")["timestamp"].min()
    late = first_seen > rows["timestamp"].quantile(0.7)
    assert late.sum() >= 0.1 * len(first_seen)  # new items keep appearing
    assert rows["timestamp"].min() >= scale.FIRST_TIME and rows["timestamp"].max() <= scale.LAST_TIME


def test_popularity_is_heavy_tailed(generated):
    _, _, rows, items = generated
    counts = rows["item_id"].value_counts()
    top = counts.iloc[: len(items) // 100].sum() / len(rows)
    assert top > 0.06  # the top 1 % of items hold over 6 times their share (uniform would give about 1 %)


def test_users_have_at_least_five_heavy_tailed_interactions_in_sessions(generated):
    _, _, rows, _ = generated
    per_user = rows.groupby("user_id").size()
    assert per_user.min() >= 5
    assert per_user.max() > 4 * per_user.median()
    assert per_user.max() <= scale.user_cap(SIZE["interactions"], SIZE["users"], SIZE["items"])
    gaps = rows.groupby("user_id")["timestamp"].diff().dropna()
    assert (gaps > 0).all()  # rows are in time order within a user
    assert gaps.median() < 15 * 60  # most interactions are minutes apart, inside a session
    assert ((gaps >= 86_400) & (gaps <= 181 * 86_400)).mean() > 0.03  # sessions are days to months apart
    spans = rows.groupby("user_id")["timestamp"].agg(lambda t: t.max() - t.min())
    assert (spans > 365 * 86_400).any()  # some users come back over years
    assert rows.duplicated(["user_id", "item_id"]).mean() < 0.01


def genre_spread(items):
    """Each item's genres as weights 1 / |genres| (SPEC section 2).

    Args:
        items: pd.DataFrame. the items file.

    Returns:
        np.ndarray float64. [items, genres]
    """
    genre_index = {g: i for i, g in enumerate(scale.GENRES)}
    spread = np.zeros((len(items), len(scale.GENRES)))
    for i, genres in enumerate(items["genres"]):
        for g in genres:
            spread[i, genre_index[g]] = 1 / len(genres)
    return spread


def kl_bits(p, q):
    """KL divergence in bits, row by row.

    Args:
        p: np.ndarray. [n, g] distributions.
        q: np.ndarray. [n, g] or [g] distributions.

    Returns:
        np.ndarray. [n]
    """
    q = np.broadcast_to(q, p.shape)
    return np.sum(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1) / np.where(q > 0, q, 1)), 0), axis=1)


def genre_distributions(rows, spread, item_index, mask):
    """Each user's genre distribution over the rows where mask is True.

    Args:
        rows: pd.DataFrame. interactions.
        spread: np.ndarray. [items, genres] from genre_spread.
        item_index: np.ndarray int. [len(rows)] item index of each row.
        mask: np.ndarray bool. [len(rows)] rows to count.

    Returns:
        np.ndarray. [users, genres] rows sum to 1.
    """
    counts = pd.DataFrame(spread[item_index] * mask[:, None]).groupby(rows["user_id"].to_numpy()).sum().to_numpy()
    return counts / counts.sum(axis=1, keepdims=True)


def test_users_have_genre_interests_that_migrate(generated):
    _, _, rows, items = generated
    spread = genre_spread(items)
    item_index = rows["item_id"].astype(int).to_numpy() - 1  # item ids are "1", "2", ...
    everything = np.ones(len(rows), dtype=bool)
    # a user's genres differ from everyone's far more than with the items shuffled among users
    overall = spread[item_index].mean(axis=0)
    own = kl_bits(genre_distributions(rows, spread, item_index, everything), overall).mean()
    shuffled = np.random.default_rng(0).permutation(item_index)
    baseline = kl_bits(genre_distributions(rows, spread, shuffled, everything), overall).mean()
    assert own > 1.5 * baseline
    # the early and late halves of a history differ more than two random halves of it (same sizes)
    def halves_js(first):
        a = genre_distributions(rows, spread, item_index, first)
        b = genre_distributions(rows, spread, item_index, ~first)
        middle = (a + b) / 2
        return float(np.mean(0.5 * kl_bits(a, middle) + 0.5 * kl_bits(b, middle)))
    by_user = rows.groupby("user_id")
    early = (by_user.cumcount() < by_user["user_id"].transform("size") / 2).to_numpy()
    random_half = np.random.default_rng(1).random(len(rows)) < 0.5
    assert halves_js(early) > halves_js(random_half) + 0.025


def test_interaction_counts_add_up_under_the_cap():
    rng = np.random.default_rng(0)
    counts = scale.interactions_per_user(10_000, 300, 100, rng)
    assert counts.sum() == 10_000 and counts.min() >= 5 and counts.max() == 100
    bounds = scale.shard_bounds(np.array([1000, 5, 5, 5, 5]), 4)  # one heavy user
    assert list(bounds) == [0, 1, 2, 3, 5]


def test_command_line_and_refusal_to_mix_runs(tmp_path, capsys):
    out = tmp_path / "cli"
    assert scale.main(["--interactions", "3000", "--output", str(out), "--shards", "3", "--users", "50",
                       "--items", "200", "--seed", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote 3,000 interactions (50 users, 200 items") and "3 shards" in line
    assert len(read_all(out)) == 3000
    assert scale.main(["--interactions", "3000", "--output", str(out), "--shards", "2", "--users", "50",
                       "--items", "200"]) == 2  # an earlier run's files are there
    assert "already holds" in capsys.readouterr().err
    assert scale.main(["--interactions", "3000", "--output", str(out), "--shards", "2", "--users", "50",
                       "--items", "200", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "interactions").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    with pytest.raises(ConfigError, match="shards"):
        scale.write_synthetic_scale(tmp_path / "bad", 100, users=3, shards=4)
