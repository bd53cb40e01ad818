"""The manifest every export version carries in `assets.extra/tfrec_lm.json`: where it came from.

Keys (SPEC §3's metadata plus the lineage):

- `kind`: `train`, `refresh`, `catalog-update` or `rollback`;
- `run_dir`, `run_id`: the training run whose weights the version serves, and that run's id;
- `parent_version`: the version this one replaces or extends (null for a model's first);
- `command`: the command line that made it, when a CLI made it;
- `options_hash`, `config`: the run's options (`TrainConfig`) and their hash;
- `data`: the fingerprint of the data trained on (`rows`, `first_timestamp`, `last_timestamp`, `hash`);
- `validation`: the version's validation metrics through its own `serving_default`;
- `gate`: what the publishing gate compared and decided;
- `created`: the UTC creation time (ISO 8601);
- `index`, `top_k`, `num_items`, and for a training run `test_metrics`, for a catalog
  update `catalog_update` (what changed).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

import numpy as np

from tfrec_lm.registry.runs import options_hash

MANIFEST_FORMAT = 1


def data_fingerprint(dataset, digest: str) -> dict:
    """The data a run trained on, in a few numbers.

    Args:
        dataset: tfrec_lm.data.schema.Dataset. the interactions and items.
        digest: str. `PreparedData.digest` (the sequences, examples and item texts hashed).

    Returns:
        dict. `rows`, `users`, `items`, `first_timestamp`, `last_timestamp` (Unix seconds and ISO), `hash`.
    """
    interactions = dataset.interactions
    times = interactions["timestamp"].to_numpy(np.int64) if len(interactions) else np.zeros(0, np.int64)
    first = int(times.min()) if len(times) else None
    last = int(times.max()) if len(times) else None
    return {"rows": int(len(interactions)), "users": int(interactions["user_id"].nunique()),
            "items": int(len(dataset.items)), "first_timestamp": first, "last_timestamp": last,
            "first_date": iso_time(first), "last_date": iso_time(last), "hash": digest}


def iso_time(seconds: Optional[int]) -> Optional[str]:
    """Unix seconds as an ISO-8601 UTC time (None stays None). str."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(int(seconds), tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def build_manifest(kind: str, config, run_dir, run_id: Optional[str], parent_version: Optional[int],
                   data: Optional[dict], num_items: int, command: Optional[str] = None, **extra) -> dict:
    """The manifest of a new version (the only place one is built).

    Args:
        kind: str. `train`, `refresh`, `catalog-update` or `rollback`.
        config: TrainConfig. the options of the run behind the version (as the version serves them).
        run_dir: str | Path. the run whose weights the version serves.
        run_id: str or None. that run's id.
        parent_version: int or None. the version this one replaces or extends.
        data: dict or None. `data_fingerprint` of the data trained on.
        num_items: int. catalog items in the version.
        command: str or None. the command line that made it.
        **extra: more keys (`test_metrics`, `catalog_update`, `validation`, `gate`, ...).

    Returns:
        dict.
    """
    return {
        "format": MANIFEST_FORMAT,
        "kind": kind,
        "run_dir": str(Path(run_dir).resolve()),
        "run_id": run_id,
        "parent_version": None if parent_version is None else int(parent_version),
        "command": command,
        "options_hash": options_hash(config.options()),
        "config": config.to_dict(),
        "data": data,
        "index": config.index,
        "top_k": config.top_k,
        "num_items": int(num_items),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        **extra,
    }


def manifest_line(version: int, manifest: dict) -> str:
    """One line about a version for `python -m tfrec_lm.versions list`. str."""
    if not manifest:
        return f"{version:>4}  (no manifest: exported before manifests)"
    validation = (manifest.get("validation") or {}).get("NDCG@10")
    gate = manifest.get("gate") or {}
    parts = [f"{version:>4}", f"{manifest.get('kind', '?'):<14}", manifest.get("created", "?"),
             f"parent {manifest.get('parent_version') if manifest.get('parent_version') is not None else '-'}",
             f"val NDCG@10 {validation:.4f}" if isinstance(validation, (int, float)) else "val NDCG@10 -",
             f"gate {gate.get('decision', '-')}",
             f"run {Path(manifest.get('run_dir', '?')).name}",
             f"options {str(manifest.get('options_hash', ''))[:8]}",
             f"items {manifest.get('num_items', '?')}"]
    return "  ".join(parts)
