"""Full-catalog ranking metrics (SPEC section 2): ranks, HR/NDCG/MRR@k, slices, a text table.

A rank is 0-based and pessimistic on ties: the number of other candidates whose score
is >= the target's. Column 0 of a score matrix is the padding id and never a candidate;
items in a user's history are removed from the candidates, the target never is.
"""

from __future__ import annotations

import numpy as np

MISSING_RANK = np.iinfo(np.int64).max
DEFAULT_TABLE_METRICS = ("HR@10", "NDCG@10", "MRR@10", "NDCG@20")


def full_catalog_ranks(
    scores: np.ndarray,
    targets: np.ndarray,
    exclude: list[np.ndarray] | None = None,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Rank of each target among all catalog items.

    Args:
        scores: np.ndarray float [n, C+1]. column 0 is padding.
        targets: np.ndarray int [n]. target vocab index (>= 1) per row.
        exclude: list[np.ndarray] | None. per row, int item indices removed from the
            candidates (the target itself stays a candidate).
        chunk_size: int | None. rows per chunk (default: about 4M score cells per chunk).

    Returns:
        np.ndarray int64 [n]. a NaN target score ranks behind every candidate; NaN
            candidate scores never beat the target.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    n, width = scores.shape
    if targets.shape != (n,):
        raise ValueError(f"targets must have shape [{n}], got {targets.shape}")
    if exclude is not None and len(exclude) != n:
        raise ValueError(f"exclude must have {n} entries, got {len(exclude)}")
    if n and (targets.min() < 1 or targets.max() >= width):
        raise ValueError(f"targets must be in 1..{width - 1}")
    chunk = chunk_size or max(1, (1 << 22) // max(width, 1))
    ranks = np.empty(n, dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = np.arange(stop - start)
        block = scores[start:stop]
        candidate = np.ones(block.shape, dtype=bool)
        candidate[:, 0] = False
        if exclude is not None:
            parts = [np.asarray(e, dtype=np.int64).ravel() for e in exclude[start:stop]]
            lengths = np.array([len(p) for p in parts], dtype=np.int64)
            if lengths.sum():
                candidate[np.repeat(rows, lengths), np.concatenate(parts)] = False
        candidate[rows, targets[start:stop]] = False
        target_score = block[rows, targets[start:stop]]
        beats = candidate & (block >= target_score[:, None])
        chunk_ranks = beats.sum(axis=1)
        nan_target = np.isnan(target_score)
        if nan_target.any():
            chunk_ranks[nan_target] = candidate[nan_target].sum(axis=1)
        ranks[start:stop] = chunk_ranks
    return ranks


def _as_text(values: np.ndarray) -> np.ndarray:
    """Decodes bytes values to str.

    Args:
        values: np.ndarray [...] of str, bytes or numbers.

    Returns:
        np.ndarray. bytes decoded to str.
    """
    values = np.asarray(values)
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8").astype(object)
    if values.dtype.kind == "O":
        return np.vectorize(lambda v: v.decode("utf-8") if isinstance(v, bytes) else v, otypes=[object])(values)
    if values.dtype.kind == "U":
        return values.astype(object)
    return values


def ranks_from_topk(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Ranks read off top-K lists (e.g. a served model's item_ids).

    Args:
        topk: np.ndarray int or str/bytes [n, K]. best first.
        targets: np.ndarray int or str/bytes [n].

    Returns:
        np.ndarray int64 [n]. position of the target's first occurrence, or
            MISSING_RANK (int64 max) when the target is not in the list.
    """
    topk = _as_text(topk)
    targets = _as_text(targets)
    if topk.ndim != 2 or len(targets) != len(topk):
        raise ValueError(f"topk must be [n, K] and targets [n], got {topk.shape} and {np.shape(targets)}")
    if topk.size == 0:
        return np.full(len(targets), MISSING_RANK, dtype=np.int64)
    hits = topk == np.asarray(targets)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), MISSING_RANK).astype(np.int64)


def ndcg_per_row(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k of each row with one target: 1 / log2(rank + 2) inside the top k, else 0.

    Args:
        ranks: np.ndarray int [n]. 0-based ranks.
        k: int. cut-off.

    Returns:
        np.ndarray float64 [n].
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    hit = ranks < k
    return np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0).astype(np.float64) + 2.0), 0.0)


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = (10, 20)) -> dict[str, float]:
    """HR@k, NDCG@k and MRR@k averaged over all rows (one target per row).

    Args:
        ranks: np.ndarray int [n]. 0-based ranks.
        ks: tuple[int, ...]. cut-offs.

    Returns:
        dict[str, float]. keys HR@k, NDCG@k, MRR@k for each k in order; NaN when n == 0.
    """
    ranks = np.asarray(ranks, dtype=np.int64)
    out: dict[str, float] = {}
    for k in ks:
        if len(ranks) == 0:
            out.update({f"HR@{k}": float("nan"), f"NDCG@{k}": float("nan"), f"MRR@{k}": float("nan")})
            continue
        hit = ranks < k
        safe = np.where(hit, ranks, 0).astype(np.float64)
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(ndcg_per_row(ranks, k).mean())
        out[f"MRR@{k}"] = float(np.where(hit, 1.0 / (safe + 1.0), 0.0).mean())
    return out


def sliced_metrics(
    ranks: np.ndarray, slices: dict[str, np.ndarray], ks: tuple[int, ...] = (10, 20)
) -> dict[str, dict[str, float]]:
    """ranking_metrics on each slice of the rows.

    Args:
        ranks: np.ndarray int [n]. 0-based ranks.
        slices: dict[str, np.ndarray]. slice name -> bool mask [n].
        ks: tuple[int, ...]. cut-offs.

    Returns:
        dict[str, dict[str, float]]. per slice the metrics plus "count" (rows in the slice).
    """
    ranks = np.asarray(ranks)
    out = {}
    for name, mask in slices.items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ranks.shape:
            raise ValueError(f"slice {name!r} has shape {mask.shape}, ranks have {ranks.shape}")
        out[name] = {**ranking_metrics(ranks[mask], ks), "count": int(mask.sum())}
    return out


def format_table(
    results: dict[str, dict[str, dict[str, float]]], metrics: tuple[str, ...] = DEFAULT_TABLE_METRICS
) -> str:
    """Plain aligned text table, one row per (model, slice).

    Args:
        results: dict[str, dict[str, dict[str, float]]]. model -> slice -> metric -> value
            (as from sliced_metrics; "count" is shown when present).
        metrics: tuple[str, ...]. metric columns, in order.

    Returns:
        str. header, rule and rows; values with 4 decimals, missing values as "-".
    """
    has_count = any("count" in m for slices in results.values() for m in slices.values())
    header = ["model", "slice"] + (["count"] if has_count else []) + list(metrics)
    rows = []
    for model, slices in results.items():
        for slice_name, values in slices.items():
            row = [str(model), str(slice_name)]
            if has_count:
                row.append(str(int(values["count"])) if "count" in values else "-")
            for metric in metrics:
                value = values.get(metric)
                row.append("-" if value is None else f"{value:.4f}")
            rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def baseline_verdicts(results: dict[str, dict[str, dict[str, float]]], baseline: str = "most-popular",
                      metric: str = "NDCG@10", slice_name: str = "all") -> list[str]:
    """One plain sentence per model of a `format_table` table: does it beat the baseline printed beside it?

    Args:
        results: dict. model -> slice -> metric -> value, the baseline among them.
        baseline: str. the baseline's key in `results`.
        metric: str. the metric compared.
        slice_name: str. the slice compared.

    Returns:
        list of str. models without the metric (or a table without the baseline) give none.
    """
    reference = results.get(baseline, {}).get(slice_name, {}).get(metric)
    if reference is None:
        return []
    lines = []
    for name, slices in results.items():
        value = slices.get(slice_name, {}).get(metric)
        if name == baseline or value is None:
            continue
        where = f"{metric} over {slice_name} users: {value:.4f} vs {reference:.4f}"
        if not (np.isfinite(value) and np.isfinite(reference)):
            lines.append(f"{name} cannot be compared with {baseline} on {metric} ({value} vs {reference}).")
        elif value > reference:
            ratio = f", {value / reference:.2f}x" if reference > 0 else ""
            lines.append(f"{name} beats the {baseline} baseline on {where}{ratio}.")
        elif value == reference:
            lines.append(f"{name} only ties the {baseline} baseline on {where}: it is no better than "
                         f"recommending the {baseline} items.")
        else:
            lines.append(f"WORSE THAN THE BASELINE: {name} loses to {baseline} on {where}; recommending the "
                         f"{baseline} items would do better. Train longer, or check the data and options.")
    return lines
