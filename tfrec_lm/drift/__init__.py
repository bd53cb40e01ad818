"""Diagnose interest migration: per-user scores, migration points, population statistics, a report.

- ``tfrec_lm.drift.scores``: the genre score of SPEC section 2 (reused from
  ``tfrec_lm.evaluation.migration``), the domain-free embedding score, migration points
  and population statistics, on plain arrays.
- ``tfrec_lm.drift.analysis``: all of them for one ``tfrec_lm.data.schema.Dataset``.
- ``tfrec_lm.drift.report``: ``report.md`` / ``report.html`` with PNG plots.
- ``python -m tfrec_lm.drift report|scores``: the command line.
"""

from tfrec_lm.drift.analysis import DriftAnalysis, analyze
from tfrec_lm.drift.report import DriftReport, load_metrics, report
from tfrec_lm.drift.scores import (
    cosine_distance,
    embedding_migration_scores,
    genre_migration_scores,
    item_profiles,
    item_text_vectors,
    migration_points,
    null_threshold,
    population_stats,
    window_distances,
)

__all__ = [
    "DriftAnalysis",
    "DriftReport",
    "analyze",
    "cosine_distance",
    "embedding_migration_scores",
    "genre_migration_scores",
    "item_profiles",
    "item_text_vectors",
    "load_metrics",
    "migration_points",
    "null_threshold",
    "population_stats",
    "report",
    "window_distances",
]
