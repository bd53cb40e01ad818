"""History timestamps when a caller gives none: the newest item now, older ones spaced back.

The export's item-sequence tower reads item ages (each row's newest known item's time minus
each item's time), so a history sent with timestamp 0 everywhere has every item the same
age, which no training history had. The CLI's default is `spaced_timestamps`: the newest
item at the current time, each older one `spacing_s` seconds (1 minute) before the next.
"""

from __future__ import annotations

import time
from typing import Sequence

DEFAULT_SPACING_S = 60


def spaced_timestamps(histories: Sequence[Sequence], now: int | None = None,
                      spacing_s: int = DEFAULT_SPACING_S) -> list[list[int]]:
    """Unix times for histories without any: the newest item at `now`, older items `spacing_s` apart.

    Args:
        histories: sequence of sequences. one sequence of item ids per user, oldest first.
        now: int or None. Unix seconds of each history's newest item (None: the current time).
        spacing_s: int. seconds between one item and the next (0: all at `now`).

    Returns:
        list of list of int. one list per user, as long as its history, oldest first.

    Raises:
        ValueError: a negative spacing.
    """
    if spacing_s < 0:
        raise ValueError(f"the spacing between history items must be 0 or more seconds, got {spacing_s}")
    now = int(time.time()) if now is None else int(now)
    return [[now - (len(history) - 1 - j) * int(spacing_s) for j in range(len(history))] for history in histories]


def parse_timestamps(text: str) -> list[int]:
    """Comma-separated times, each Unix seconds or an ISO date / date-time (`tfrec_lm.config.parse_time`).

    Args:
        text: str. e.g. `881250949,881251200` or `1998-03-01,1998-03-02T10:00:00`.

    Returns:
        list of int. Unix seconds, in the given order.

    Raises:
        ValueError: a value is neither.
    """
    from tfrec_lm.config import parse_time

    values = [v.strip() for v in text.split(",") if v.strip()]
    return [parse_time(v) for v in values]
