"""`--timestamps` of the client CLI: Unix seconds or ISO dates, comma-separated.

Without them the CLI sends `tfrec_lm.protocol.spaced_timestamps`.
"""

from __future__ import annotations

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
