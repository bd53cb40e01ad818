"""Synthetic interactions with known interest migrations, for tests with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tfrec_lm.data.schema import Dataset, LoadReport, item_text

CATEGORIES = ("sneakers", "novels", "cameras", "guitars", "teapots", "bicycles")
ADJECTIVES = ("red", "blue", "small", "large", "classic", "modern", "light", "heavy")


def synthetic_migration(num_users: int = 40, items_per_category: int = 12, num_categories: int = 4,
                        length: int = 16, switch_fraction: float = 0.5, seed: int = 0,
                        start_time: int = 1_600_000_000) -> tuple[Dataset, pd.DataFrame]:
    """Users who consume one category of items, then switch to another at a known time.

    Item texts carry their category's word (e.g. "red sneakers 3"), so a text
    encoder can tell categories apart.

    Args:
        num_users: int. users to generate.
        items_per_category: int. items in each category.
        num_categories: int. categories used (at most len(CATEGORIES)).
        length: int. interactions per user.
        switch_fraction: float. share of each user's interactions before the switch.
        seed: int. random seed.
        start_time: int. Unix time of the first interaction.

    Returns:
        (Dataset, switches): switches has one row per user: `user_id`, `switch_index`
        (position of the first post-switch interaction), `switch_time`, `before`, `after`.
    """
    if not 2 <= num_categories <= len(CATEGORIES):
        raise ValueError(f"num_categories must be in [2, {len(CATEGORIES)}]")
    rng = np.random.default_rng(seed)
    categories = CATEGORIES[:num_categories]
    items = []
    for c, category in enumerate(categories):
        for j in range(items_per_category):
            title = f"{ADJECTIVES[j % len(ADJECTIVES)]} {category} {j}"
            items.append({"item_id": f"{category[:3]}{j}", "title": title, "year": "",
                          "genres": (category,), "text": item_text(title, "", (category,))})
    items = pd.DataFrame(items)
    rows, switches = [], []
    switch_index = max(1, int(round(length * switch_fraction)))
    for u in range(num_users):
        before, after = rng.choice(num_categories, size=2, replace=False)
        time = start_time + int(rng.integers(0, 86_400))
        for position in range(length):
            category = before if position < switch_index else after
            item = int(rng.integers(items_per_category))
            time += int(rng.integers(600, 7_200))
            rows.append({"user_id": f"u{u}", "item_id": f"{categories[category][:3]}{item}",
                         "timestamp": time, "rating": float(rng.integers(1, 6))})
            if position == switch_index:
                switch_time = time
        switches.append({"user_id": f"u{u}", "switch_index": switch_index, "switch_time": switch_time,
                         "before": categories[before], "after": categories[after]})
    interactions = pd.DataFrame(rows)
    interactions["timestamp"] = interactions["timestamp"].astype(np.int64)
    report = LoadReport(source="synthetic", rows_read=len(interactions), bad_rows=[])
    return Dataset(name="synthetic", interactions=interactions, items=items, reports=[report]), pd.DataFrame(switches)
