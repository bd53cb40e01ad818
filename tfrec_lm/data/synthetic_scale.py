"""Synthetic interactions shaped like MovieLens-20M, written as sharded Parquet (SPEC sections 1 and 2, "Scale").

For benchmarks of memory and time at 1 M to 20 M interactions. The defaults follow
MovieLens-20M: 20 M interactions from about 138 k users on about 27 k items; users grow
in proportion to the interactions, items sublinearly (at least 3,000).

How the data is made:

- Items. Each has 1-4 of MovieLens' 18 genres (drawn by their MovieLens-20M frequency),
  a title made of words that go with its first genre ("The Silent Haunting", "Outlaw of
  Texas"), a release time and its year. About 30 % are a back catalog released before
  the first interaction; the rest are released evenly over the 20 years of data, so new
  items appear all the time. Item ids are "1", "2", ... in release order. Popularity is
  Zipf-Mandelbrot, weight 1 / (rank + q) ** 1.6 with q = items / 130, ranks in a random
  order, so a few items take a large share of the interactions.
- Users. Each makes at least 5 interactions; the rest of the total is shared out in
  proportion to log-normal weights (sigma 1.2), a heavy tail like MovieLens', with no
  user above 30 % of the items (MovieLens-20M's heaviest user rated 35 %). A user's
  interactions come in sessions (about sqrt(n) sessions for n interactions) a few
  minutes apart inside a session, 1 to 180 days (log-uniform) between sessions, from a
  start time uniform over the data's 20 years.
- Interests. A user has an early and a late mix of up to three genres each (Dirichlet
  weights; no genre in both). 60 % of users migrate: they move from the early to the
  late mix around a random point of their history (a logistic switch); the others keep
  the early mix. Each
  interaction picks a genre from the current mix (or, 10 % of the time, any genre) and
  then an item of that genre already released at that time, by popularity. A repeated
  (user, item) pair is drawn again: three times from the same genre, twice from any
  genre, then up to ten times evenly from every released item (heavy users reach into
  the long tail); the few that remain are counted in the manifest.
- Ratings are whole stars 1.0-5.0 from a user bias, an item quality and noise.

Output of `write_synthetic_scale(directory, ...)`:

- ``directory/interactions/part-00000.parquet`` ... one file per shard, columns
  ``user_id`` (string), ``item_id`` (string), ``timestamp`` (int64, Unix seconds),
  ``rating`` (float64), rows ordered by user and then time. Shards are partitioned by
  user: shard s holds a contiguous range of user indices (user_id = str(index + 1)), the
  ranges cut so that shards hold about equal numbers of interactions; every user is in
  exactly one shard.
- ``directory/items.parquet``: ``item_id, title, year`` (strings), ``genres``
  (list of strings) and ``release_timestamp`` (int64; an extra column the loaders ignore).
- ``directory/manifest.json``: counts, seed, the parameters, the shard list with each
  shard's rows and user range. Written last: a folder without it is incomplete.

Everything is generated in blocks of BLOCK_USERS users, each from its own random stream
(seeded by the seed and the block's index), and written as it is made, so memory stays
small (a few hundred MB at 20 M interactions) and the rows depend only on the seed and
the counts, never on the number of shards.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tfrec_lm.errors import ConfigError

logger = logging.getLogger(__name__)

# MovieLens-20M: 20,000,263 ratings, 138,493 users, 27,278 movies.
ML20M_INTERACTIONS = 20_000_263
ML20M_USERS = 138_493
ML20M_ITEMS = 27_278
MIN_ITEMS = 3_000
ITEMS_EXPONENT = 0.6  # items grow as interactions ** 0.6 (MovieLens-1M has 3.7 k items for 1 M ratings)
MIN_PER_USER = 5

FIRST_TIME = 789_652_009  # 1995-01-09, MovieLens-20M's first rating
LAST_TIME = 1_427_784_002  # 2015-03-31, its last
BLOCK_USERS = 4_096
FORMAT = "tfrec_lm.synthetic_scale/1"

# MovieLens-20M's genres and the number of movies that have each.
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
GENRE_COUNTS = (3520, 2329, 1027, 1139, 8374, 2939, 2471, 13344, 1412, 330, 2611, 1036, 1514, 4127,
                1743, 4178, 1194, 676)
GENRE_NOUNS = {
    "Action": ("Strike", "Fury", "Mission", "Vengeance", "Bullet", "Chase", "Showdown"),
    "Adventure": ("Quest", "Journey", "Island", "Treasure", "Expedition", "Voyage"),
    "Animation": ("Toons", "Critters", "Puppets", "Doodles", "Paintbox", "Bunnies"),
    "Children": ("Puppy", "Playground", "Pony", "Birthday", "Treehouse", "Kids"),
    "Comedy": ("Wedding", "Party", "Roommates", "Vacation", "Blunder", "Prank"),
    "Crime": ("Heist", "Mob", "Detective", "Gangster", "Alibi", "Verdict"),
    "Documentary": ("Story", "Truth", "Portrait", "Chronicle", "Record", "Voices"),
    "Drama": ("Heart", "Family", "Promise", "Letter", "Silence", "Memory", "Home"),
    "Fantasy": ("Wizard", "Kingdom", "Spell", "Sword", "Realm", "Enchantress"),
    "Film-Noir": ("Shadows", "Dame", "Alley", "Smoke", "Nightfall", "Dragnet"),
    "Horror": ("Curse", "Blood", "Haunting", "Nightmare", "Ghoul", "Crypt"),
    "Musical": ("Song", "Dance", "Melody", "Stage", "Rhythm", "Chorus"),
    "Mystery": ("Secret", "Clue", "Riddle", "Enigma", "Disappearance", "Key"),
    "Romance": ("Love", "Kiss", "Sweetheart", "Affair", "Valentine", "Romance"),
    "Sci-Fi": ("Planet", "Robot", "Galaxy", "Android", "Starship", "Future"),
    "Thriller": ("Conspiracy", "Hostage", "Witness", "Trap", "Stranger", "Panic"),
    "War": ("Battle", "Front", "Soldier", "Regiment", "Trenches", "Siege"),
    "Western": ("Outlaw", "Frontier", "Sheriff", "Saloon", "Ranch", "Gunslinger"),
}
ADJECTIVES = ("Silent", "Last", "Dark", "Golden", "Broken", "Lost", "Hidden", "Wild", "Little", "Big",
              "Final", "Red", "Endless", "Crimson", "Midnight", "Eternal", "Lonely", "Burning", "Frozen",
              "Savage", "Distant", "Hollow", "Bright", "Fallen", "Forgotten", "Restless", "Sweet", "Iron")
PLACES = ("Paris", "Texas", "Brooklyn", "the River", "the North", "Tokyo", "the Desert", "the Valley",
          "Rome", "the Sea", "Chicago", "the Mountain", "Berlin", "the City", "Mars", "the Bayou")

CATALOG_SHARE = 0.3  # items released before the first interaction
ZIPF_EXPONENT = 1.6
ZIPF_OFFSET_PER_ITEM = 1 / 130
USER_SIGMA = 1.2  # log-normal spread of interactions per user
WITHIN_SESSION_SECONDS = (30.0, 150.0)  # gap = 30 s + exponential with mean 150 s
BETWEEN_SESSIONS_DAYS = (1.0, 180.0)  # log-uniform
INTEREST_SLOTS = 3
MIGRATING_SHARE = 0.6
EXPLORE_SHARE = 0.1
RESAMPLE_ROUNDS = (3, 2, 10)  # a repeated pair is drawn again: same genre, any genre, any item evenly
MAX_USER_SHARE = 0.3  # no user interacts with more than this share of the items (MovieLens-20M: 0.35)

INTERACTIONS_SCHEMA = pa.schema([("user_id", pa.string()), ("item_id", pa.string()),
                                 ("timestamp", pa.int64()), ("rating", pa.float64())])


def default_sizes(interactions: int, users: int | None = None, items: int | None = None) -> tuple[int, int]:
    """The numbers of users and items for a number of interactions, shaped like MovieLens-20M.

    Args:
        interactions: int. total interactions.
        users: int | None. users; None for interactions * 138,493 / 20,000,263 (at least 1,
            at most interactions / 5).
        items: int | None. items; None for 27,278 * (interactions / 20,000,263) ** 0.6, at
            least 3,000.

    Returns:
        (users, items): tuple[int, int].

    Raises:
        ConfigError: a count is too small, or there are fewer than 5 interactions per user.
    """
    if interactions < MIN_PER_USER:
        raise ConfigError(f"interactions must be at least {MIN_PER_USER}, got {interactions}")
    if users is None:
        users = min(max(1, round(interactions * ML20M_USERS / ML20M_INTERACTIONS)), interactions // MIN_PER_USER)
    if items is None:
        items = max(MIN_ITEMS, round(ML20M_ITEMS * (interactions / ML20M_INTERACTIONS) ** ITEMS_EXPONENT))
    if users < 1:
        raise ConfigError(f"users must be at least 1, got {users}")
    if users * MIN_PER_USER > interactions:
        raise ConfigError(f"{users} users need at least {users * MIN_PER_USER} interactions "
                          f"({MIN_PER_USER} each), got {interactions}")
    if items < 10:
        raise ConfigError(f"items must be at least 10, got {items}")
    return int(users), int(items)


def user_cap(interactions: int, users: int, items: int) -> int:
    """The most interactions one user gets.

    Args:
        interactions: int. the total.
        users: int. number of users.
        items: int. number of items.

    Returns:
        int. 30 % of the items (MovieLens-20M's heaviest user rated 35 %), raised where needed
        so that the users can hold all the interactions.
    """
    return max(MIN_PER_USER, int(MAX_USER_SHARE * items), -(-interactions // users))


def interactions_per_user(interactions: int, users: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Heavy-tailed interaction counts that add up exactly.

    Args:
        interactions: int. the total.
        users: int. number of users.
        cap: int. the most for one user (users * cap >= interactions).
        rng: np.random.Generator. random stream.

    Returns:
        np.ndarray int64. [users] between 5 and cap each, summing to interactions; beyond the 5,
        in proportion to log-normal weights, what a capped user cannot take going to the others.
    """
    weights = rng.lognormal(0.0, USER_SIGMA, users)
    extra = np.zeros(users, dtype=np.float64)
    room = float(cap - MIN_PER_USER)
    capped = np.zeros(users, dtype=bool)
    while True:  # water-filling: each pass caps at least one more user, or ends
        left = interactions - MIN_PER_USER * users - room * capped.sum()
        free = ~capped
        extra = np.where(capped, room, weights / weights[free].sum() * left)
        over = free & (extra > room)
        if not over.any():
            break
        capped |= over
    counts = np.floor(extra).astype(np.int64)
    left = interactions - MIN_PER_USER * users - int(counts.sum())
    if left:
        fraction = np.where(counts < room, extra - counts, -1.0)
        counts[np.argsort(-fraction, kind="stable")[:left]] += 1
    return counts + MIN_PER_USER


def shard_bounds(counts: np.ndarray, shards: int) -> np.ndarray:
    """Where contiguous user ranges start so that shards hold about equal interactions.

    Args:
        counts: np.ndarray int64. [users] interactions of each user.
        shards: int. number of shards (at most the number of users).

    Returns:
        np.ndarray int64. [shards + 1] shard s holds user indices bounds[s] <= u < bounds[s + 1];
        every shard has at least one user.
    """
    users = len(counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = int(counts.sum())
    bounds = np.searchsorted(starts, np.arange(shards + 1) * total / shards, side="left").astype(np.int64)
    bounds[0], bounds[-1] = 0, users
    for s in range(1, shards):  # at least one user per shard
        bounds[s] = max(bounds[s], bounds[s - 1] + 1)
    for s in range(shards - 1, 0, -1):
        bounds[s] = min(bounds[s], bounds[s + 1] - 1)
    return bounds


def _year_start(years: np.ndarray) -> np.ndarray:
    """Unix seconds of 1 January of each year.

    Args:
        years: np.ndarray int. [n] calendar years.

    Returns:
        np.ndarray int64. [n]
    """
    return (np.asarray(years, dtype=np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)


def _year_of(seconds: np.ndarray) -> np.ndarray:
    """Calendar year of Unix times.

    Args:
        seconds: np.ndarray int64. [n] Unix seconds.

    Returns:
        np.ndarray int64. [n]
    """
    return np.asarray(seconds, dtype=np.int64).astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970


class Catalog:
    """The items and the tables to draw them from by genre, release time and popularity.

    Attributes:
        size: int. number of items; item index i has item_id str(i + 1), indices in release order.
        release: np.ndarray int64. [size] release time (Unix seconds), non-decreasing.
        year: np.ndarray int64. [size] release year.
        genres: list[tuple[str, ...]]. genre names of each item, in GENRES order.
        titles: list[str]. title of each item.
        weight: np.ndarray float64. [size] popularity weight.
        quality: np.ndarray float64. [size] rating offset of each item.
    """

    def __init__(self, size: int, rng: np.random.Generator):
        """Draws a catalog.

        Args:
            size: int. number of items.
            rng: np.random.Generator. random stream.
        """
        self.size = size
        n_genres = len(GENRES)
        frequency = np.asarray(GENRE_COUNTS, dtype=np.float64)
        # release: a back catalog (years 1915-1994, more of them recent), then evenly over the data's years
        catalog = max(1, round(CATALOG_SHARE * size))
        back_years = np.clip(1994 - np.floor(rng.exponential(12.0, catalog)), 1915, 1994).astype(np.int64)
        back = _year_start(back_years) + rng.integers(0, 365 * 86_400, catalog)
        back = np.minimum(back, FIRST_TIME - 1)
        new = rng.integers(FIRST_TIME, LAST_TIME - 30 * 86_400, size - catalog)
        self.release = np.sort(np.concatenate([back, new])).astype(np.int64)
        self.year = _year_of(self.release)
        # genres: 1-4, weighted by MovieLens frequency (Gumbel top-k); the first drawn names the title
        k = rng.choice(4, size=size, p=(0.4, 0.35, 0.2, 0.05)) + 1
        keys = np.log(frequency)[None, :] + rng.gumbel(size=(size, n_genres))
        order = np.argsort(-keys, axis=1)
        self.member = np.zeros((size, n_genres), dtype=bool)
        rows = np.arange(size)
        for j in range(4):
            has = k > j
            self.member[rows[has], order[has, j]] = True
        self.genres = [tuple(GENRES[g] for g in np.flatnonzero(m)) for m in self.member]
        # titles
        primary = order[:, 0]
        second = order[:, 1]
        pattern = rng.integers(0, 5, size)
        noun_pick = rng.integers(0, 1 << 30, size)
        other_pick = rng.integers(0, 1 << 30, size)
        adjective = rng.integers(0, len(ADJECTIVES), size)
        place = rng.integers(0, len(PLACES), size)
        sequel = rng.integers(2, 5, size)
        titles = []
        for i in range(size):
            nouns = GENRE_NOUNS[GENRES[primary[i]]]
            noun = nouns[noun_pick[i] % len(nouns)]
            p = pattern[i]
            if p == 0:
                title = f"The {ADJECTIVES[adjective[i]]} {noun}"
            elif p == 1:
                title = f"{noun} of {PLACES[place[i]]}"
            elif p == 2:
                title = f"{ADJECTIVES[adjective[i]]} {noun} {sequel[i]}"
            elif p == 3:
                others = GENRE_NOUNS[GENRES[second[i]]]
                title = f"The {noun} and the {others[other_pick[i] % len(others)]}"
            else:
                title = f"{ADJECTIVES[adjective[i]]} {noun} in {PLACES[place[i]]}"
            titles.append(title)
        self.titles = titles
        # popularity: Zipf-Mandelbrot over a random order of the items
        rank = rng.permutation(size)
        self.weight = 1.0 / (rank + 1 + size * ZIPF_OFFSET_PER_ITEM) ** ZIPF_EXPONENT
        self.quality = rng.normal(0.0, 0.45, size) + 0.3 * (1.0 - rank / size) - 0.15
        # draw tables: one segment per genre and a last one with every item, each in release order
        segments = [np.flatnonzero(self.member[:, g]) for g in range(n_genres)] + [np.arange(size)]
        self.any_segment = n_genres
        self.flat = np.concatenate(segments).astype(np.int64)
        lengths = np.asarray([len(s) for s in segments], dtype=np.int64)
        self.seg_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        seg_of = np.repeat(np.arange(len(segments), dtype=np.int64), lengths)
        self._time_base = int(min(int(self.release[0]), FIRST_TIME))
        self._seg_key = seg_of * (1 << 33) + (self.release[self.flat] - self._time_base)
        self.cumulative = np.concatenate([[0.0], np.cumsum(self.weight[self.flat])])

    def draw(self, segment: np.ndarray, times: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """Items by popularity among those of a segment released at or before a time.

        Args:
            segment: np.ndarray int64. [n] genre index, or any_segment for any item.
            times: np.ndarray int64. [n] Unix seconds.
            uniform: np.ndarray float64. [n] uniform numbers in [0, 1).

        Returns:
            np.ndarray int64. [n] item indices; a genre with no item released yet draws from
            every item.
        """
        segment = np.array(segment, dtype=np.int64)
        offset = np.asarray(times, dtype=np.int64) - self._time_base
        end = np.searchsorted(self._seg_key, segment * (1 << 33) + offset, side="right")
        empty = end <= self.seg_start[segment]
        if empty.any():
            segment[empty] = self.any_segment
            end[empty] = np.searchsorted(self._seg_key, segment[empty] * (1 << 33) + offset[empty], side="right")
        start = self.seg_start[segment]
        low, high = self.cumulative[start], self.cumulative[end]
        index = np.searchsorted(self.cumulative, low + uniform * (high - low), side="right") - 1
        return self.flat[np.clip(index, start, end - 1)]

    def draw_uniform(self, times: np.ndarray, uniform: np.ndarray) -> np.ndarray:
        """Items drawn evenly (popularity aside) among those released at or before a time.

        Args:
            times: np.ndarray int64. [n] Unix seconds.
            uniform: np.ndarray float64. [n] uniform numbers in [0, 1).

        Returns:
            np.ndarray int64. [n] item indices.
        """
        released = np.searchsorted(self.release, np.asarray(times, dtype=np.int64), side="right")
        return np.minimum((uniform * released).astype(np.int64), released - 1)

    def table(self) -> pa.Table:
        """The items as an Arrow table.

        Returns:
            pa.Table. item_id, title, year (strings), genres (list of strings), release_timestamp (int64).
        """
        ids = pc.cast(pa.array(np.arange(1, self.size + 1, dtype=np.int64)), pa.string())
        return pa.table({
            "item_id": ids,
            "title": pa.array(self.titles, pa.string()),
            "year": pc.cast(pa.array(self.year), pa.string()),
            "genres": pa.array([list(g) for g in self.genres], pa.list_(pa.string())),
            "release_timestamp": pa.array(self.release, pa.int64()),
        })


def _segment_first(values: np.ndarray, starts: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """For each row, the value at its group's first row.

    Args:
        values: np.ndarray. [n] per-row values.
        starts: np.ndarray int64. [groups] first row of each group.
        owner: np.ndarray int64. [n] group of each row.

    Returns:
        np.ndarray. [n]
    """
    return values[starts][owner]


def generate_block(catalog: Catalog, counts: np.ndarray, rng: np.random.Generator) -> dict:
    """The interactions of a block of users.

    Args:
        catalog: Catalog. the items.
        counts: np.ndarray int64. [B] interactions of each user of the block.
        rng: np.random.Generator. the block's random stream.

    Returns:
        dict with np.ndarray values, rows ordered by user then time: `user` int64 [R]
        (index within the block), `item` int64 [R] (item index), `timestamp` int64 [R],
        `rating` float64 [R]; and `repeats`: int, (user, item) pairs left repeated.
    """
    n_users = len(counts)
    n_genres = len(GENRES)
    rows = int(counts.sum())
    # ---- per user
    genre_logits = 0.5 * np.log(np.asarray(GENRE_COUNTS, dtype=np.float64))
    early = np.argsort(-(genre_logits + rng.gumbel(size=(n_users, n_genres))), axis=1)[:, :INTEREST_SLOTS]
    late_logits = genre_logits + rng.gumbel(size=(n_users, n_genres))
    late_logits[np.arange(n_users)[:, None], early] = -np.inf  # a migration moves to new genres
    late = np.argsort(-late_logits, axis=1)[:, :INTEREST_SLOTS]
    early_mix = np.cumsum(rng.dirichlet(np.full(INTEREST_SLOTS, 0.8), n_users), axis=1)
    late_mix = np.cumsum(rng.dirichlet(np.full(INTEREST_SLOTS, 0.8), n_users), axis=1)
    migrates = rng.random(n_users) < MIGRATING_SHARE
    switch_at = rng.uniform(0.25, 0.85, n_users)
    switch_width = rng.uniform(0.03, 0.12, n_users)
    start_draw = rng.random(n_users)
    user_bias = rng.normal(0.0, 0.35, n_users)
    sessions = np.ceil(np.sqrt(counts))
    new_session_p = (sessions - 1) / np.maximum(counts - 1, 1)
    # ---- per row
    user = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    position = np.arange(rows, dtype=np.int64) - first[user]
    fraction = position / np.maximum(counts[user] - 1, 1)
    # times
    new_session = rng.random(rows) < new_session_p[user]
    within = WITHIN_SESSION_SECONDS[0] + rng.exponential(WITHIN_SESSION_SECONDS[1], rows)
    low, high = (math.log(d * 86_400.0) for d in BETWEEN_SESSIONS_DAYS)
    between = np.exp(rng.uniform(low, high, rows))
    gap = np.where(new_session, between, within)
    gap[position == 0] = 0.0
    elapsed = np.cumsum(gap)
    elapsed -= _segment_first(elapsed, first, user)
    span = elapsed[first + counts - 1]
    window = float(LAST_TIME - FIRST_TIME)
    scale = np.minimum(1.0, 0.9 * window / np.maximum(span, 1.0))
    start = FIRST_TIME + start_draw * (window - span * scale)
    timestamp = np.floor(start[user] + elapsed * scale[user]).astype(np.int64)
    # genres: the early or the late mix (logistic switch for migrating users), sometimes any genre
    late_p = np.where(migrates[user], 1.0 / (1.0 + np.exp(-(fraction - switch_at[user]) / switch_width[user])), 0.0)
    use_late = rng.random(rows) < late_p
    pick = rng.random(rows)
    slot = np.minimum(
        (pick[:, None] > np.where(use_late[:, None], late_mix[user], early_mix[user])[:, :INTEREST_SLOTS - 1]).sum(axis=1),
        INTEREST_SLOTS - 1)
    genre = np.where(use_late, late[user, slot], early[user, slot]).astype(np.int64)
    genre[rng.random(rows) < EXPLORE_SHARE] = catalog.any_segment
    item = catalog.draw(genre, timestamp, rng.random(rows))
    # a repeated (user, item) pair is drawn again: from the same genre, then any genre, then any item evenly
    repeats = 0
    rounds = sum(RESAMPLE_ROUNDS)
    for r in range(rounds + 1):
        key = user * catalog.size + item
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        again = order[1:][ordered[1:] == ordered[:-1]]
        repeats = len(again)
        if repeats == 0 or r == rounds:
            break
        if r < RESAMPLE_ROUNDS[0]:
            item[again] = catalog.draw(genre[again], timestamp[again], rng.random(repeats))
        elif r < RESAMPLE_ROUNDS[0] + RESAMPLE_ROUNDS[1]:
            item[again] = catalog.draw(np.full(repeats, catalog.any_segment), timestamp[again], rng.random(repeats))
        else:
            item[again] = catalog.draw_uniform(timestamp[again], rng.random(repeats))
    rating = np.clip(np.rint(3.45 + user_bias[user] + catalog.quality[item] + rng.normal(0.0, 0.85, rows)), 1.0, 5.0)
    return {"user": user, "item": item, "timestamp": timestamp, "rating": rating, "repeats": repeats}


def _prepare_directory(directory: Path, overwrite: bool) -> Path:
    """Makes the output folder, refusing to mix with an earlier run's files.

    Args:
        directory: Path. the output folder.
        overwrite: bool. remove an earlier run's manifest.json, items.parquet and
            interactions/part-*.parquet (and nothing else).

    Returns:
        Path. the interactions folder, empty of part files.

    Raises:
        ConfigError: the folder holds an earlier run's files and overwrite is False.
    """
    parts_dir = directory / "interactions"
    earlier = [p for p in (directory / "manifest.json", directory / "items.parquet") if p.exists()]
    earlier += sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []
    if earlier and not overwrite:
        raise ConfigError(f"{directory} already holds generated files ({earlier[0].name}, ...); "
                          f"choose another folder or pass overwrite")
    for path in earlier:
        path.unlink()
    parts_dir.mkdir(parents=True, exist_ok=True)
    return parts_dir


def write_synthetic_scale(directory: str | Path, interactions: int, users: int | None = None,
                          items: int | None = None, shards: int = 8, seed: int = 0,
                          overwrite: bool = False) -> dict:
    """Writes a MovieLens-20M-shaped synthetic data set as sharded Parquet (see the module docstring).

    Args:
        directory: str | Path. output folder (made if missing).
        interactions: int. total interactions.
        users: int | None. users; None scales MovieLens-20M's 138,493 users per 20 M interactions.
        items: int | None. items; None for 27,278 * (interactions / 20 M) ** 0.6, at least 3,000.
        shards: int. interaction files, each a contiguous range of users (at most the users).
        seed: int. random seed; the same arguments (shards aside) give the same rows.
        overwrite: bool. replace an earlier run's files in directory.

    Returns:
        dict. the manifest also written to directory/manifest.json: `interactions`,
        `users`, `items`, `seed`, `shards` (list of dicts: `path` relative to directory,
        `rows`, `users`, `first_user_id`, `last_user_id`), `items_path`, `partitioning`,
        `first_timestamp`, `last_timestamp`, `repeated_pairs`, `parameters`, `seconds`.

    Raises:
        ConfigError: counts that cannot be met, shards < 1 or more shards than users, or a
            folder with an earlier run's files.
    """
    began = time.perf_counter()
    users, items = default_sizes(interactions, users, items)
    if not 1 <= shards <= users:
        raise ConfigError(f"shards must be between 1 and the number of users ({users}), got {shards}")
    directory = Path(directory)
    parts_dir = _prepare_directory(directory, overwrite)
    master = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    catalog = Catalog(items, master)
    counts = interactions_per_user(interactions, users, user_cap(interactions, users, items), master)
    bounds = shard_bounds(counts, shards)
    pq.write_table(catalog.table(), directory / "items.parquet", compression="zstd")
    logger.info("synthetic scale: %d items written to %s", items, directory / "items.parquet")

    shard_info = [{"path": f"interactions/part-{s:05d}.parquet", "rows": 0,
                   "users": int(bounds[s + 1] - bounds[s]), "first_user_id": str(int(bounds[s]) + 1),
                   "last_user_id": str(int(bounds[s + 1]))} for s in range(shards)]
    writers: dict[int, pq.ParquetWriter] = {}
    repeated = 0
    first_time, last_time = None, None
    try:
        for block, block_start in enumerate(range(0, users, BLOCK_USERS)):
            block_end = min(users, block_start + BLOCK_USERS)
            rng = np.random.default_rng(np.random.SeedSequence([seed, 1, block]))
            rows = generate_block(catalog, counts[block_start:block_end], rng)
            repeated += rows["repeats"]
            first_time = int(rows["timestamp"].min()) if first_time is None else min(first_time, int(rows["timestamp"].min()))
            last_time = int(rows["timestamp"].max()) if last_time is None else max(last_time, int(rows["timestamp"].max()))
            table = pa.table({
                "user_id": pc.cast(pa.array(rows["user"] + (block_start + 1)), pa.string()),
                "item_id": pc.cast(pa.array(rows["item"] + 1), pa.string()),
                "timestamp": pa.array(rows["timestamp"], pa.int64()),
                "rating": pa.array(rows["rating"], pa.float64()),
            }, schema=INTERACTIONS_SCHEMA)
            row_bounds = np.concatenate([[0], np.cumsum(counts[block_start:block_end])])
            first_shard = int(np.searchsorted(bounds, block_start, side="right") - 1)
            last_shard = int(np.searchsorted(bounds, block_end - 1, side="right") - 1)
            for s in range(first_shard, last_shard + 1):
                lo = int(row_bounds[max(bounds[s], block_start) - block_start])
                hi = int(row_bounds[min(bounds[s + 1], block_end) - block_start])
                if s not in writers:
                    writers[s] = pq.ParquetWriter(directory / shard_info[s]["path"], INTERACTIONS_SCHEMA,
                                                  compression="zstd")
                writers[s].write_table(table.slice(lo, hi - lo))
                shard_info[s]["rows"] += hi - lo
                if bounds[s + 1] <= block_end:
                    writers.pop(s).close()
                    logger.info("synthetic scale: wrote %s (%d rows, %d users)", shard_info[s]["path"],
                                shard_info[s]["rows"], shard_info[s]["users"])
    finally:
        for writer in writers.values():
            writer.close()
    manifest = {
        "format": FORMAT,
        "interactions": int(interactions),
        "users": users,
        "items": items,
        "seed": int(seed),
        "items_path": "items.parquet",
        "shards": shard_info,
        "partitioning": ("by user: shard s holds the contiguous user indices bounds[s] <= u < bounds[s + 1] "
                         "(user_id = str(u + 1)), cut so that shards hold about equal interactions"),
        "first_timestamp": first_time,
        "last_timestamp": last_time,
        "repeated_pairs": int(repeated),
        "parameters": {
            "block_users": BLOCK_USERS, "min_per_user": MIN_PER_USER, "user_sigma": USER_SIGMA,
            "zipf_exponent": ZIPF_EXPONENT, "zipf_offset": items * ZIPF_OFFSET_PER_ITEM,
            "catalog_share": CATALOG_SHARE, "migrating_share": MIGRATING_SHARE, "explore_share": EXPLORE_SHARE,
            "interest_slots": INTEREST_SLOTS, "between_sessions_days": list(BETWEEN_SESSIONS_DAYS),
            "within_session_seconds": list(WITHIN_SESSION_SECONDS),
        },
        "seconds": round(time.perf_counter() - began, 2),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    logger.info("synthetic scale: %d interactions, %d users, %d items in %d shards, %.1f s",
                interactions, users, items, shards, manifest["seconds"])
    return manifest


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m tfrec_lm.data.synthetic_scale`.

    Returns:
        argparse.ArgumentParser.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tfrec_lm.data.synthetic_scale",
        description="Write a MovieLens-20M-shaped synthetic data set as sharded Parquet "
                    "(interactions/part-*.parquet, items.parquet, manifest.json).")
    parser.add_argument("--interactions", type=int, required=True, help="total interactions, e.g. 20000000")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--shards", type=int, default=8, help="interaction files, partitioned by user (default 8)")
    parser.add_argument("--users", type=int, default=None, help="users (default: scaled from MovieLens-20M)")
    parser.add_argument("--items", type=int, default=None, help="items (default: scaled from MovieLens-20M)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --output")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line.

    Args:
        argv: list[str] | None. arguments (None for sys.argv[1:]).

    Returns:
        int. exit code: 0, or 2 for invalid arguments.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        manifest = write_synthetic_scale(args.output, args.interactions, users=args.users, items=args.items,
                                         shards=args.shards, seed=args.seed, overwrite=args.overwrite)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {manifest['interactions']:,} interactions ({manifest['users']:,} users, "
          f"{manifest['items']:,} items, {manifest['repeated_pairs']:,} repeated pairs) in "
          f"{len(manifest['shards'])} shards to {args.output} in {manifest['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
