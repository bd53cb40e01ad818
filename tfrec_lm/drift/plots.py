"""PNG plots of the drift report (matplotlib, Agg canvas, no pyplot global state)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from tfrec_lm.drift.analysis import DriftAnalysis
from tfrec_lm.drift.scores import window_distances
from tfrec_lm.evaluation.migration import genre_matrix, migration_slices

DPI = 110
TOP_GENRES = 6
# Okabe & Ito's colour-blind-safe palette (Okabe and Ito, "Color Universal Design", 2008):
# every plot takes its colours from it, plus neutral greys for "middle", "other" and the
# histograms. Lines also differ by style, so nothing rests on colour alone.
OKABE_ITO = {"black": "#000000", "orange": "#E69F00", "sky blue": "#56B4E9", "bluish green": "#009E73",
             "yellow": "#F0E442", "blue": "#0072B2", "vermillion": "#D55E00", "reddish purple": "#CC79A7"}
GREY, LIGHT_GREY = "#999999", "#d9d9d9"
# Filled areas (genres, bars): the seven colours other than black, in an order whose
# neighbours differ in lightness as well as hue.
AREA_COLORS = tuple(OKABE_ITO[name] for name in ("blue", "orange", "bluish green", "vermillion", "sky blue",
                                                 "reddish purple", "yellow"))
AREA_HATCHES = ("", "//", "..", "xx")  # beyond seven genres the colours repeat with a hatch
SLICE_COLORS = {"migrating": OKABE_ITO["vermillion"], "middle": GREY, "stable": OKABE_ITO["blue"]}
THRESHOLD_COLOR = OKABE_ITO["vermillion"]
POINT_STYLES = {"genre": dict(color=OKABE_ITO["black"], linestyle="-", linewidth=1.6),
                "embedding": dict(color=OKABE_ITO["reddish purple"], linestyle="--", linewidth=1.6)}
LABELS = {
    "genre": "genre JS divergence (base 2)",
    "embedding": "embedding cosine distance",
}
MODEL_NAMES = {"model": "model", "most_popular": "most popular", "export": "export"}


def _figure(width: float, height: float, **kwargs):
    """A figure with an Agg canvas attached.

    Returns:
        matplotlib.figure.Figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def score_distribution(analysis: DriftAnalysis, path: Path) -> Path:
    """Histogram of each migration score (with its median and its stable/migrating
    thirds) and, with both scores, a scatter of one against the other.

    Args:
        analysis: DriftAnalysis. scores to plot.
        path: Path. PNG to write.

    Returns:
        Path. the PNG.
    """
    kinds = analysis.kinds
    panels = len(kinds) + (1 if len(kinds) == 2 else 0)
    fig = _figure(5.0 * panels, 4.2, layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    for ax, kind in zip(axes, kinds):
        scores = analysis.scores[kind]
        slices = migration_slices(scores)
        ax.hist(scores, bins=40, color=GREY, edgecolor="white")
        ax.axvline(np.median(scores), color="black", linewidth=1.5, label=f"median {np.median(scores):.3f}")
        if slices["stable"].any():
            cut = scores[slices["stable"]].max()
            ax.axvline(cut, color=SLICE_COLORS["stable"], linestyle="--", label=f"stable third below {cut:.3f}")
        if slices["migrating"].any():
            cut = scores[slices["migrating"]].min()
            ax.axvline(cut, color=SLICE_COLORS["migrating"], linestyle="--", label=f"migrating third above {cut:.3f}")
        ax.set_xlabel(f"{LABELS[kind]}, early vs recent items")
        ax.set_ylabel("users")
        ax.set_title(f"{kind.capitalize()} migration score ({len(scores)} users)")
        ax.legend(fontsize=8, loc="upper right")
    if len(kinds) == 2:
        ax = axes[-1]
        x, y = analysis.scores["genre"], analysis.scores["embedding"]
        stats = analysis.stats()["correlation"]["genre~embedding"]
        names = np.where(analysis.slices["migrating"], "migrating", np.where(analysis.slices["stable"], "stable", "middle"))
        for name in ("middle", "stable", "migrating"):
            mask = names == name
            ax.scatter(x[mask], y[mask], s=9, alpha=0.7, color=SLICE_COLORS[name], label=f"{name} ({mask.sum()})")
        ax.set_xlabel(LABELS["genre"])
        ax.set_ylabel(LABELS["embedding"])
        ax.set_title(f"Genre vs embedding score\nPearson {stats['pearson']:.2f}, Spearman {stats['spearman']:.2f}")
        ax.legend(fontsize=8, title=f"{analysis.slice_kind} slice", title_fontsize=8, loc="upper left")
    return _save(fig, path)


def pick_users(analysis: DriftAnalysis, users: int | Sequence[str] = 4) -> list[int]:
    """Users worth showing as trajectories.

    Args:
        analysis: DriftAnalysis.
        users: int | Sequence[str]. a number n: the n - 1 highest-scoring users (by the
            slice score) with a migration point and at least 5 windows of history, then the
            lowest-scoring such user without one, for contrast (fewer when fewer qualify);
            or explicit user ids.

    Returns:
        list[int]. indices into analysis.sequences.

    Raises:
        DataError: an explicit user id is not in the data.
    """
    from tfrec_lm.errors import DataError

    ids = list(analysis.sequences.user_ids)
    if not isinstance(users, int):
        index = {str(u): i for i, u in enumerate(ids)}
        missing = [str(u) for u in users if str(u) not in index]
        if missing:
            raise DataError(f"unknown user id(s): {', '.join(missing)}")
        return [index[str(u)] for u in users]
    if users <= 0:
        return []
    kind = analysis.slice_kind
    scores = analysis.scores[kind]
    lengths = np.array([len(s) for s in analysis.sequences.items])
    long_enough = lengths >= 5 * analysis.window
    points = analysis.points[kind]
    order = np.argsort(-scores, kind="stable")
    chosen = [int(u) for u in order if long_enough[u] and points[u] >= 0][: max(users - 1, 1)]
    if users > 1:
        calm = [int(u) for u in order[::-1] if long_enough[u] and points[u] < 0 and u not in chosen]
        chosen += calm[:1]
    if len(chosen) < users:  # not enough qualify: fill with the longest remaining histories
        chosen += [int(u) for u in np.argsort(-lengths, kind="stable") if u not in chosen][: users - len(chosen)]
    return chosen


def _genre_shares(history: np.ndarray, weights: np.ndarray, window: int) -> np.ndarray:
    """Genre shares over the trailing window ending at each item (fewer items at the start).

    Returns:
        np.ndarray float64. [n, G] rows sum to 1 (0 where the window has no genre).
    """
    sums = np.concatenate([np.zeros((1, weights.shape[1])), np.cumsum(weights[history], axis=0)])
    ends = np.arange(1, len(history) + 1)
    counts = sums[ends] - sums[np.maximum(ends - window, 0)]
    total = counts.sum(axis=1, keepdims=True)
    return counts / np.where(total > 0, total, 1.0)


def _date(ts: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%d")


def trajectories(analysis: DriftAnalysis, users: Sequence[int], path: Path) -> Path:
    """Each user's interests over time: genre shares over a sliding window (stacked
    area; the user's 6 main genres, the rest as "other") above the window's distance to
    the long-term profile, divided by the migration threshold (the alarm fires above 1),
    with the detected migration points marked.

    Args:
        analysis: DriftAnalysis.
        users: Sequence[int]. indices into analysis.sequences (see ``pick_users``).
        path: Path. PNG to write.

    Returns:
        Path. the PNG.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    users = list(users)
    genres_known = "genre" in analysis.scores
    weights, names = genre_matrix(analysis.item_genres)
    # Colours go to the genres these users show, the most consumed first, so the first
    # seven are told apart by colour alone.
    shown = []
    for u in users:
        history = np.asarray(analysis.sequences.items[u], dtype=np.int64)
        totals = weights[history].sum(axis=0)
        shown += [names[g] for g in np.argsort(-totals, kind="stable")[:TOP_GENRES] if totals[g] > 0]
    ordered = list(dict.fromkeys(shown)) + [n for n in names if n not in shown]
    colors = {name: AREA_COLORS[i % len(AREA_COLORS)] for i, name in enumerate(ordered)}
    hatches = {name: AREA_HATCHES[(i // len(AREA_COLORS)) % len(AREA_HATCHES)] for i, name in enumerate(ordered)}
    colors["other"], hatches["other"] = LIGHT_GREY, ""
    columns = 2 if len(users) > 1 else 1
    rows = max(1, (len(users) + columns - 1) // columns)
    fig = _figure(7.0 * columns, 4.4 * rows + 1.2, layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(rows, columns, squeeze=False).ravel())
    shown_genres: set[str] = set()
    for sub, u in zip(subfigs, users):
        seq = analysis.sequences
        history = np.asarray(seq.items[u], dtype=np.int64)
        times = seq.timestamps[u]
        x = np.arange(len(history))
        if genres_known:
            top_ax, dist_ax = sub.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
            shares = _genre_shares(history, weights, analysis.window)
            totals = weights[history].sum(axis=0)
            top = [g for g in np.argsort(-totals, kind="stable")[:TOP_GENRES] if totals[g] > 0]
            layers = [shares[:, g] for g in top]
            labels = [names[g] for g in top]
            rest = shares.sum(axis=1) - np.sum(layers, axis=0) if layers else shares.sum(axis=1)
            layers.append(np.clip(rest, 0.0, 1.0))
            labels.append("other")
            top_ax.stackplot(x, *layers, colors=[colors[n] for n in labels], hatch=[hatches[n] for n in labels],
                             linewidth=0)
            top_ax.set_ylim(0, 1)
            top_ax.set_ylabel(f"genre share, last {analysis.window}")
            shown_genres.update(labels)
        else:
            top_ax, dist_ax = None, sub.subplots(1, 1)
        for kind in analysis.kinds:
            profiles, distance = analysis.profiles(kind)
            d = window_distances(history, profiles, analysis.window, distance)
            threshold = analysis.thresholds[kind]
            scale = threshold if np.isfinite(threshold) and threshold > 0 else 1.0
            dist_ax.plot(x, d / scale, color=POINT_STYLES[kind]["color"], linewidth=1.0)
        dist_ax.axhline(1.0, color=THRESHOLD_COLOR, linewidth=0.9, linestyle=":")
        dist_ax.set_ylabel("window distance\n÷ threshold", fontsize=8)
        dist_ax.set_xlabel("interaction # (time order)")
        dist_ax.set_xlim(0, max(len(history) - 1, 1))
        marks = []
        for kind in analysis.kinds:
            p = int(analysis.points[kind][u])
            if p < 0:
                continue
            for ax in (top_ax, dist_ax):
                if ax is not None:
                    ax.axvline(p, **POINT_STYLES[kind])
            marks.append(f"{kind} point #{p} ({_date(times[p])})")
        kind = analysis.slice_kind
        span = f"{_date(times[0])} → {_date(times[-1])}" if len(times) else ""
        title = (f"user {seq.user_ids[u]} · {len(history)} interactions · {span}\n"
                 f"{kind} score {analysis.scores[kind][u]:.3f} · "
                 + ("; ".join(marks) if marks else "no migration point"))
        sub.suptitle(title, fontsize=9)
    patches = [Patch(facecolor=colors[n], hatch=hatches[n], edgecolor="white", label=n)
               for n in [*ordered, "other"] if n in shown_genres]
    lines = []
    for kind in analysis.kinds:
        style = POINT_STYLES[kind]
        lines.append(Line2D([], [], color=style["color"], linewidth=1.0,
                            label=f"{kind} window distance (threshold {analysis.thresholds[kind]:.3f})"))
        lines.append(Line2D([], [], label=f"{kind} migration point", **style))
    lines.append(Line2D([], [], color=THRESHOLD_COLOR, linewidth=0.9, linestyle=":",
                        label="threshold: the alarm fires above"))
    if patches:
        fig.legend(handles=patches, loc="outside lower left", ncol=(len(patches) + 1) // 2, fontsize=8,
                   title="genres (each user's 6 main ones)", title_fontsize=8, frameon=False)
    fig.legend(handles=lines, loc="outside lower right", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(f"Interest trajectories: genre mix over the last {analysis.window} interactions (top), "
                 f"departure from the long-term profile (bottom)", fontsize=10)
    return _save(fig, path)


def slice_metrics(metrics: dict, path: Path, names: Sequence[str] = ("NDCG@10", "HR@10")) -> Path:
    """Grouped bars of the test metrics per slice, one panel per metric.

    Args:
        metrics: dict. model name -> slice -> metric -> value (``metrics.json``'s "test");
            "model" and "most_popular" are shown (every model when neither is there).
        path: Path. PNG to write.
        names: Sequence[str]. metrics to show.

    Returns:
        Path. the PNG.
    """
    models = [m for m in ("model", "most_popular") if m in metrics] or list(metrics)
    slices = [s for s in ("all", "migrating", "stable") if any(s in metrics[m] for m in models)]
    fig = _figure(5.2 * len(names), 4.0, layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    width = 0.8 / max(len(models), 1)
    palette = AREA_COLORS
    for ax, metric in zip(axes, names):
        for i, model in enumerate(models):
            values = [metrics[model].get(s, {}).get(metric, np.nan) for s in slices]
            positions = np.arange(len(slices)) + (i - (len(models) - 1) / 2) * width
            bars = ax.bar(positions, values, width, label=MODEL_NAMES.get(model, model), color=palette[i % len(palette)])
            ax.bar_label(bars, labels=[f"{v:.3f}" if np.isfinite(v) else "" for v in values], fontsize=7, padding=2)
        counts = [next((metrics[m][s].get("count") for m in models if s in metrics[m] and "count" in metrics[m][s]), None)
                  for s in slices]
        ax.set_xticks(np.arange(len(slices)), [f"{s}\n({c} users)" if c is not None else s for s, c in zip(slices, counts)])
        ax.set_ylabel(metric)
        ax.set_title(f"Test {metric} per slice")
        ax.margins(y=0.15)
        ax.legend(fontsize=8)
    return _save(fig, path)
