"""Many users: `recommend()` / `rank()` send `batch_size` users per request, in order.

Every request row starts with one padding column (`""`, timestamp 0; `history_batch`,
owned by `tfrec_lm.protocol`): TF Serving's batching (`pad_variable_length_inputs`) pads
a request's shorter rows with that request's *first element*, and the export treats `""`
as padding, so the leading column keeps batched answers exact (see `serving/README.md`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from tfrec_lm.client.common import DEFAULT_SIGNATURE
from tfrec_lm.client.errors import ClientError
from tfrec_lm.protocol import UNKNOWN_ITEM_IDS, history_batch, mark_unknown_candidates


@dataclasses.dataclass
class Recommendations:
    """One user's answer. `extra` holds any further outputs (e.g. the `explain` signature's)."""

    item_ids: list
    scores: list
    extra: dict = dataclasses.field(default_factory=dict)


def _chunks(count: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, count, batch_size):
        yield start, min(count, start + batch_size)


def recommend(client, histories: Sequence[Sequence], timestamps: Sequence[Sequence] | None = None,
              batch_size: int = 64, signature_name: str = DEFAULT_SIGNATURE,
              lead_padding: bool = True) -> list[Recommendations]:
    """Top-K recommendations of many users, `batch_size` users per request, in the users' order.

    Empty slots (item id `""`, when a history covers almost the whole catalog) are left out.

    Args:
        client: RestClient or GrpcClient (anything with `predict(inputs, signature_name)`).
        histories: one sequence of item ids per user, oldest first.
        timestamps: one sequence of Unix times per user (zeros when None).
        batch_size: int. users per request (at most the server's `--max_batch_size`).
        signature_name: str. `serving_default`, or another signature with `item_ids`/`scores`.
        lead_padding: bool. see `history_batch`.
    """
    answers: list[Recommendations] = []
    for start, stop in _chunks(len(histories), batch_size):
        inputs = history_batch(histories[start:stop], None if timestamps is None else timestamps[start:stop],
                               lead_padding)
        outputs = client.predict(inputs, signature_name)
        for name in ("item_ids", "scores"):
            if name not in outputs:
                raise ClientError(f"signature '{signature_name}' has no '{name}' output: {sorted(outputs)}")
        for row in range(stop - start):
            ids = _row_list(outputs["item_ids"][row])
            keep = [i for i, item in enumerate(ids) if item != ""]  # "" marks an empty slot
            extra = {k: [values[i] for i in keep] for k, values in
                     ((k, _row_list(v[row])) for k, v in outputs.items() if k not in ("item_ids", "scores"))}
            scores = outputs["scores"][row]
            answers.append(Recommendations([ids[i] for i in keep], [float(scores[i]) for i in keep], extra))
    return answers


def rank(client, histories: Sequence[Sequence], candidates: Sequence[Sequence],
         timestamps: Sequence[Sequence] | None = None, batch_size: int = 64, signature_name: str = "rank",
         lead_padding: bool = True, mark_unknown: bool = True) -> list[dict]:
    """Scores of given candidates per user (`rank` signature), batched, in order.

    Args:
        client: RestClient or GrpcClient (anything with `predict(inputs, signature_name)`).
        histories: one sequence of item ids per user, oldest first.
        candidates: one sequence of candidate item ids per user.
        timestamps: one sequence of Unix times per user (zeros when None).
        batch_size: int. users per request.
        signature_name: str. `rank`, or another signature with its inputs and outputs.
        lead_padding: bool. see `history_batch`.
        mark_unknown: bool. candidates the export cannot score (unknown or retired: the
            signature's lowest float32 score) get score and predicted rating None and are
            listed in `unknown_item_ids` (`tfrec_lm.protocol.mark_unknown_candidates`);
            False: the signature's raw values.

    Returns:
        list[dict]. one dict per user: each output (`scores`, `predicted_ratings`) as a
            list with one value per candidate of that user (the padding columns are cut
            off), plus `unknown_item_ids` with `mark_unknown`.
    """
    if len(candidates) != len(histories):
        raise ValueError(f"{len(histories)} histories but {len(candidates)} candidate lists")
    answers: list[dict] = []
    for start, stop in _chunks(len(histories), batch_size):
        inputs = history_batch(histories[start:stop], None if timestamps is None else timestamps[start:stop],
                               lead_padding)
        chunk = candidates[start:stop]
        width = max([len(c) for c in chunk] + [1])
        table = np.full((stop - start, width), "", dtype=object)
        for row, items in enumerate(chunk):
            table[row, :len(items)] = [str(v) for v in items]
        inputs["candidate_item_ids"] = table
        outputs = client.predict(inputs, signature_name)
        for row, items in enumerate(chunk):
            answer = {name: _row_list(value[row])[:len(items)] for name, value in outputs.items()
                      if name != UNKNOWN_ITEM_IDS}  # a dev server that marked them already: recomputed here
            answers.append(mark_unknown_candidates(items, answer) if mark_unknown else answer)
    return answers


def _row_list(row) -> list:
    values = np.asarray(row).tolist()
    return [float(v) if isinstance(v, float) else v for v in values] if isinstance(values, list) else values
