"""The drift report: a Markdown and an HTML page over PNG plots, written to one folder."""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from tfrec_lm.data.schema import Dataset
from tfrec_lm.errors import DataError
from tfrec_lm.drift import plots
from tfrec_lm.drift.analysis import DriftAnalysis, analyze
from tfrec_lm.drift.scores import RECENT_ITEMS, WINDOW
from tfrec_lm.evaluation.metrics import format_table

logger = logging.getLogger(__name__)

SLICES = ("all", "migrating", "stable")
TABLE_METRICS = ("HR@10", "NDCG@10", "MRR@10", "HR@20", "NDCG@20")


@dataclasses.dataclass
class DriftReport:
    """What ``report`` wrote.

    Attributes:
        markdown: Path. report.md.
        html: Path. report.html.
        images: list[Path]. the PNGs, in page order.
        scores_csv: Path. scores.csv, one row per user (``DriftAnalysis.frame``).
        stats: dict. ``DriftAnalysis.stats``.
        analysis: DriftAnalysis. everything the page was made from.
    """

    markdown: Path
    html: Path
    images: list
    scores_csv: Path
    stats: dict
    analysis: DriftAnalysis


def load_metrics(path: str | Path) -> dict:
    """Test metrics per model and slice from a ``metrics.json`` of ``python -m tfrec_lm.train``.

    Args:
        path: str | Path. the file.

    Returns:
        dict. model name ("model", "most_popular", ...) -> slice -> metric -> value;
        only models with at least one of the slices all/migrating/stable.

    Raises:
        DataError: the file is missing, unreadable or not shaped like a metrics.json.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such metrics file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable metrics.json ({error})") from error
    test = data.get("test") if isinstance(data, dict) else None
    if not isinstance(test, dict):
        raise DataError(f"{path}: no 'test' section; expected the metrics.json written by python -m tfrec_lm.train")
    out = {name: {s: v for s, v in slices.items() if s in SLICES and isinstance(v, dict)}
           for name, slices in test.items() if isinstance(slices, dict)}
    out = {name: slices for name, slices in out.items() if slices}
    if not out:
        raise DataError(f"{path}: the 'test' section has no model with all/migrating/stable metrics")
    return out


def _fmt(value) -> str:
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.3f}"


def _percent(share: float) -> str:
    """A share as a percentage, e.g. "50.2%" ("-" when unknown)."""
    return "-" if share is None or not np.isfinite(share) else f"{100 * share:.1f}%"


def _duration(days: float) -> str:
    """A duration in words.

    Args:
        days: float.

    Returns:
        str. e.g. "3.2 days", "5.1 hours", "49 minutes".
    """
    if days >= 1:
        return f"{days:.1f} days"
    if days * 24 >= 1:
        return f"{days * 24:.1f} hours"
    return f"{days * 24 * 60:.0f} minutes"


class _Page:
    """Blocks rendered to Markdown and to HTML alike."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple[str, object]] = []

    def heading(self, text: str):
        self.blocks.append(("h2", text))

    def para(self, text: str):
        self.blocks.append(("p", text))

    def bullets(self, items: Sequence[str]):
        self.blocks.append(("ul", list(items)))

    def image(self, name: str, alt: str):
        self.blocks.append(("img", (name, alt)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]):
        self.blocks.append(("table", (list(header), [list(r) for r in rows])))

    def pre(self, text: str):
        self.blocks.append(("pre", text))

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, value in self.blocks:
            if kind == "h2":
                out += [f"## {value}", ""]
            elif kind == "p":
                out += [value, ""]
            elif kind == "ul":
                out += [f"- {item}" for item in value] + [""]
            elif kind == "img":
                out += [f"![{value[1]}]({value[0]})", ""]
            elif kind == "table":
                header, rows = value
                out.append("| " + " | ".join(header) + " |")
                out.append("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |")
                out += ["| " + " | ".join(r) + " |" for r in rows] + [""]
            elif kind == "pre":
                out += ["```", value, "```", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape

        def inline(text: str) -> str:  # `code`, **strong** and *emphasis* spans
            parts = e(text).split("`")
            out = []
            for i, part in enumerate(parts):
                if i % 2:
                    out.append(f"<code>{part}</code>")
                else:
                    part = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", part)
                    out.append(re.sub(r"\*(.+?)\*", r"<em>\1</em>", part))
            return "".join(out)

        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, value in self.blocks:
            if kind == "h2":
                body.append(f"<h2>{e(value)}</h2>")
            elif kind == "p":
                body.append(f"<p>{inline(value)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in value) + "</ul>")
            elif kind == "img":
                body.append(f'<p><img src="{e(value[0])}" alt="{e(value[1])}"></p>')
            elif kind == "table":
                header, rows = value
                head = "".join(f"<th>{e(h)}</th>" for h in header)
                rows_html = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows_html}</tbody></table>")
            elif kind == "pre":
                body.append(f"<pre>{e(value)}</pre>")
        style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
                 "img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;margin:1em 0}"
                 "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}td:first-child,th:first-child"
                 "{text-align:left}code,pre{background:#f5f5f5}pre{padding:.6em;overflow-x:auto}")
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{e(self.title)}</title><style>{style}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def _stats_table(stats: dict, kinds: list[str]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for key, label in [("count", "users"), ("mean", "mean"), ("std", "std"), ("q10", "10th percentile"),
                       ("q25", "25th percentile"), ("median", "median"), ("q75", "75th percentile"),
                       ("q90", "90th percentile"), ("max", "max"), ("migrating_cut", "migrating third from"),
                       ("threshold", "migration-point threshold"), ("with_point", "share with a migration point"),
                       ("shuffled_with_point", "share with one, histories shuffled")]:
        rows.append([label] + [_fmt(stats[k].get(key)) for k in kinds])
    cuts = sorted({c for k in kinds for c in stats[k]["share_above"]}, key=float)
    for cut in cuts:
        rows.append([f"share above {cut}"] + [_fmt(stats[k]["share_above"].get(cut)) for k in kinds])
    return ["statistic"] + kinds, rows


def _write_page(analysis: DriftAnalysis, out: Path, images: dict, users: list[int], metrics: dict | None,
                metrics_path: Path | None) -> tuple[Path, Path]:
    """Writes report.md and report.html; returns their paths."""
    stats = analysis.stats()
    seq = analysis.sequences
    kinds = analysis.kinds
    lengths = np.array([len(s) for s in seq.items])
    spans = np.array([(t[-1] - t[0]) / 86400 if len(t) else 0.0 for t in seq.timestamps])
    page = _Page(f"Interest migration — {analysis.dataset.name}")
    page.para(f"{len(seq)} users, {int(lengths.sum())} interactions, {seq.vocab_size - 1} items. "
              f"Median user: {int(np.median(lengths))} interactions over {_duration(np.median(spans))}.")

    page.heading("How far users move")
    page.image(images["scores"], "distribution of migration scores")
    explain = [f"Each user's *early* items (first half of the history before the test target) are compared with "
               f"the *recent* ones (last {analysis.recent}), as in SPEC §2."]
    if "genre" in kinds:
        explain.append("**genre**: Jensen–Shannon divergence (base 2, 0 = same genre mix, 1 = disjoint genres) "
                       "between the two genre distributions; its top and bottom thirds are the migrating and "
                       "stable slices of every benchmark.")
    if "embedding" in kinds:
        explain.append("**embedding**: cosine distance between the mean L2-normalised text-encoder vectors of the "
                       "two sides (0 = same direction, 1 = orthogonal); needs no categories.")
    page.bullets(explain)
    header, rows = _stats_table(stats, kinds)
    page.table(header, rows)
    if "correlation" in stats:
        c = stats["correlation"]["genre~embedding"]
        page.para(f"Genre vs embedding score over {c['n']} users: Pearson {c['pearson']:.3f}, "
                  f"Spearman {c['spearman']:.3f}; {100 * c['slice_agreement']:.0f}% of the genre-migrating third "
                  f"is also in the embedding-migrating third.")

    page.heading("Interest trajectories")
    page.image(images["trajectories"], "interest trajectories of a few users")
    page.para(f"Upper panels: genre shares over the last {analysis.window} interactions at each point. "
              f"Lower panels: distance between that window and everything the user did before it, divided by "
              f"the migration threshold. The migration point is the start of the first window that crosses the "
              f"threshold (1.0), moved to where the departure begins inside it.")
    if len(kinds) == 2:
        page.para("The two detectors need not agree: the embedding one also follows what the text says besides "
                  "the genres (titles, years), so it can find points where the genre mix holds still.")
    rows = []
    for u in users:
        row = [str(seq.user_ids[u]), str(len(seq.items[u]))]
        for kind in kinds:
            p = int(analysis.points[kind][u])
            row += [_fmt(float(analysis.scores[kind][u])), str(p) if p >= 0 else "none"]
        rows.append(row)
    page.table(["user", "interactions"] + [f"{k} {col}" for k in kinds for col in ("score", "point")], rows)

    page.heading("What a migration point means")
    page.para(f"Each threshold is calibrated on the same histories shuffled in time. Shuffling keeps a user's "
              f"items and destroys their order, so a shuffled user has no migration; the threshold is the "
              f"{analysis.quantile:.2f} quantile of a shuffled history's largest window distance. So about "
              f"{100 * (1 - analysis.quantile):.0f}% of users whose interests do not move get a point: that is the "
              f"false-alarm rate under no drift, not the share of users flagged on real data. Measured on this data "
              f"(a fresh shuffle of every history, not the calibration's, at the same threshold):")
    page.bullets([f"**{kind}** score: {_percent(stats[kind]['with_point'])} of users flagged on their real "
                  f"histories, {_percent(stats[kind]['shuffled_with_point'])} on the shuffled ones"
                  for kind in kinds])
    more = all(stats[k]["with_point"] > stats[k]["shuffled_with_point"] for k in kinds)
    page.para(("Real histories are flagged more often because interests do move: " if more else
               "Here real histories are flagged no more often than shuffled ones for some score: what it flags is "
               "no more than chance would. ")
              + "A flag says that some window of the user's departed from what came before it further than the "
              f"largest departure of {100 * analysis.quantile:.0f}% of the shuffled histories; it does not say that "
              "the user is poorly served. The shuffled rate is the share of flags that chance alone raises; the gap "
              "between the two rates is what the order of the histories adds.")

    if metrics is not None:
        page.heading("Recommendation quality per slice")
        page.image(images["metrics"], "NDCG@10 and HR@10 per slice")
        shown = {m: metrics[m] for m in ("model", "most_popular") if m in metrics} or metrics
        page.para(f"From `{metrics_path}`: test split, SPEC §2 slices by genre score, the trained model against "
                  f"the most-popular baseline.")
        counts = {v["all"].get("count") for v in shown.values() if "all" in v} - {None}
        if counts and counts != {len(seq)}:
            page.para(f"**Note:** these metrics cover {', '.join(str(int(c)) for c in sorted(counts))} users, "
                      f"this data {len(seq)}: they come from another dataset or run.")
        page.pre(format_table(shown, TABLE_METRICS))

    page.heading("Files")
    page.bullets(["`scores.csv`: one row per user: scores, slice, migration points (0-based position in the user's time-ordered interactions, and its Unix time)."]
                 + [f"`{name}`" for name in images.values()])
    md, htm = out / "report.md", out / "report.html"
    md.write_text(page.markdown(), encoding="utf-8")
    htm.write_text(page.html(), encoding="utf-8")
    return md, htm


def report(dataset: Dataset, out_dir: str | Path, encoder=None, metrics_json: str | Path | None = None,
           users: int | Sequence[str] = 4, window: int = WINDOW, recent: int = RECENT_ITEMS,
           analysis: DriftAnalysis | None = None) -> DriftReport:
    """Writes the drift report of a dataset.

    Args:
        dataset: Dataset. interactions and catalog.
        out_dir: str | Path. folder for report.md, report.html, scores.csv and the PNGs
            (score_distribution.png, trajectories.png and, with metrics_json,
            slice_metrics.png), referenced relatively from the pages.
        encoder: None | str | tuple | np.ndarray. as ``analyze``; None: genre scores only.
        metrics_json: str | Path | None. a metrics.json of ``python -m tfrec_lm.train``: adds
            the per-slice bar chart of NDCG@10/HR@10 (model vs most popular).
        users: int | Sequence[str]. trajectories to draw (see ``plots.pick_users``).
        window: int. trailing window of the migration points and trajectories.
        recent: int. recent items of the scores.
        analysis: DriftAnalysis | None. reuse a ready analysis of `dataset` (encoder, window
            and recent are then ignored).

    Returns:
        DriftReport.

    Raises:
        DataError: unusable data or metrics file.
    """
    metrics = load_metrics(metrics_json) if metrics_json is not None else None
    if analysis is None:
        analysis = analyze(dataset, encoder=encoder, window=window, recent=recent)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = plots.pick_users(analysis, users)
    images = {"scores": plots.score_distribution(analysis, out / "score_distribution.png").name,
              "trajectories": plots.trajectories(analysis, chosen, out / "trajectories.png").name}
    if metrics is not None:
        images["metrics"] = plots.slice_metrics(metrics, out / "slice_metrics.png").name
    scores_csv = out / "scores.csv"
    analysis.frame().to_csv(scores_csv, index=False)
    md, htm = _write_page(analysis, out, images, chosen, metrics, Path(metrics_json) if metrics_json else None)
    logger.info("drift report written to %s", md)
    return DriftReport(markdown=md, html=htm, images=[out / name for name in images.values()],
                       scores_csv=scores_csv, stats=analysis.stats(), analysis=analysis)
