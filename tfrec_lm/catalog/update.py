"""`update_catalog`: add, change and retire items of a trained run, without training.

The run's checkpoint holds the towers trained on its catalog. An update rebuilds the
model on the new catalog, copies every trained weight across (the item tables row by
row: an update only appends rows), encodes only the texts that are new or changed since
training with the run's frozen encoder, and writes the next export version beside the
previous ones (atomically, as training does), where `tfrec_lm.serve` and TF Serving
pick it up like any version. New items are cold: their text places them, and their ID
part is the mix of the trained ID embeddings of their nearest warm look-alikes
(`--cold-neighbours`, `--cold-popularity`; with `--cold-neighbours 0` the learned no-ID
vector). Retired items stay known in request histories but never come back in
`serving_default`.

Updates accumulate: the catalog of the newest export of the same run under
`<export_base>/<model_name>` is the starting point, else the run's own catalog.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from tfrec_lm.catalog.table import (CATALOG_FILE, EXPORT_CATALOG_FILE, CatalogChanges, apply_changes,
                                    read_catalog)
from tfrec_lm.config import TrainConfig
from tfrec_lm.errors import ConfigError, DataError
from tfrec_lm.training import METRICS_FILE

logger = logging.getLogger(__name__)



@dataclasses.dataclass
class CatalogUpdate:
    """What a catalog update did.

    Attributes:
        export_path: Path. the new export version directory.
        changes: CatalogChanges. added, changed, unchanged, retired and restored item ids.
        encoded: int. item texts encoded (new or changed since training).
        num_items: int. catalog items in the new version (retired ones included).
        num_servable: int. items the new version can recommend.
        base: str. the catalog the update started from: `run` or the export version it extended.
        seconds: float. wall time of the update.
    """

    export_path: Path
    changes: CatalogChanges
    encoded: int
    num_items: int
    num_servable: int
    base: str
    seconds: float


def run_config(run_dir: Path) -> TrainConfig:
    """The config a training run recorded in its `metrics.json`.

    Args:
        run_dir: Path. the run's `--output-dir`.

    Returns:
        TrainConfig.

    Raises:
        ConfigError: the folder holds no finished run.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a finished training run (no {METRICS_FILE}); pass the "
                          "--output-dir of a `python -m tfrec_lm.train` run")
    return TrainConfig.from_dict(json.loads(path.read_text())["config"])


def starting_catalog(run_dir: Path, model_dir: Path) -> tuple[pd.DataFrame, str]:
    """The catalog an update extends: the newest export of this run, else the run's.

    Args:
        run_dir: Path. the run's `--output-dir`.
        model_dir: Path. `<export_base>/<model_name>`.

    Returns:
        tuple (pd.DataFrame, str). the catalog and where it came from (`run` or `version N`).
    """
    from tfrec_lm.export import export_versions

    for version in reversed(export_versions(model_dir)):
        extra = model_dir / str(version) / "assets.extra"
        try:
            metadata = json.loads((extra / "tfrec_lm.json").read_text())
        except (OSError, ValueError):
            continue
        if metadata.get("run_dir") == str(run_dir.resolve()) and (extra / EXPORT_CATALOG_FILE).is_file():
            return read_catalog(extra / EXPORT_CATALOG_FILE), f"version {version}"
    return read_catalog(run_dir / CATALOG_FILE), "run"


def read_items(path) -> pd.DataFrame:
    """New or changed items from an items file (SPEC §1 items schema); any bad row stops the update.

    Args:
        path: str | Path. CSV/TSV/Parquet/JSONL with item_id and text, or title [+ year] [+ genres].

    Returns:
        pd.DataFrame. the items.

    Raises:
        DataError: the file cannot be read, or a row breaks the schema (listed with its line).
    """
    from tfrec_lm.data.files import load_items_file

    items, report = load_items_file(path)
    if report.n_bad:
        raise DataError(f"{path}: {report.summary()}; fix these rows (a catalog update applies all of a file "
                        "or none of it)")
    if not len(items):
        raise DataError(f"{path}: no items")
    return items


def _probe_features(max_history: int) -> dict:
    """One history of one item, enough for `create_variables`. dict of np.ndarray."""
    history = np.zeros([1, max_history], np.int32)
    history[0, 0] = 1
    return {"history": history, "history_timestamps": np.zeros_like(history, np.int64),
            "target": np.array([1], np.int32)}


def _paired_weights(old, new) -> list:
    """(old, new) variable pairs of the towers and the rating head, item tables included.

    The item tower's no-ID vector and no-ID bias are left out (they are trainable only when
    a catalog has cold items, which moves them within the weight lists) and paired by attribute.
    """
    def tower(model):
        skip = {id(model.item_tower.no_id_embedding), id(model.item_tower.no_id_bias)}
        return [w for w in model.item_tower.weights if id(w) not in skip]

    def user_only(model):
        own = {id(w) for w in model.item_tower.weights}
        return [w for w in model.user_tower.weights if id(w) not in own]

    pairs = []
    for part in (tower, user_only, lambda model: model.ranking_head.weights):
        a, b = part(old), part(new)
        if len(a) != len(b):
            raise ValueError(f"the rebuilt model has {len(b)} weights where the trained one has {len(a)}")
        pairs.extend(zip(a, b))
    for name in ("no_id_embedding", "no_id_bias"):
        a, b = getattr(old.item_tower, name), getattr(new.item_tower, name)
        if (a is None) != (b is None):
            raise ValueError("the rebuilt item tower differs from the trained one")
        if a is not None:
            pairs.append((a, b))
    return pairs


def transfer_weights(old, new, encode_rows: np.ndarray) -> int:
    """Copies a trained model into one built on a longer catalog and encodes the rows that need it.

    Args:
        old: TwoTowerModel. built on the trained catalog, checkpoint restored.
        new: TwoTowerModel. the same config on the new catalog (the old rows first, in order).
        encode_rows: np.ndarray int. vocabulary indices whose text must be encoded (new or
            changed since training); with a frozen encoder only these run through BERT.

    Returns:
        int. texts encoded.
    """
    old_rows = old.item_tower.num_items
    tables = {id(old.item_tower.text_cache)} if old.item_tower.text_cache is not None else set()
    if old.item_tower.id_embedding is not None:
        tables.add(id(old.item_tower.id_embedding.embeddings))
    if old.item_tower.item_bias is not None:
        tables.add(id(old.item_tower.item_bias))
    for source, target in _paired_weights(old, new):
        value = source.numpy()
        if id(source) in tables:
            grown = np.zeros(target.shape, value.dtype.name)
            grown[:old_rows] = value
            value = grown
        elif tuple(source.shape) != tuple(target.shape):
            raise ValueError(f"weight {source.name}: shape {source.shape} in the run, {target.shape} rebuilt")
        target.assign(value)
    cache = new.item_tower.text_cache
    if cache is None or not len(encode_rows):
        return 0
    vectors = new.item_tower.encoder.encode_table(new.item_tower.token_rows[encode_rows])
    cache.scatter_nd_update(encode_rows[:, None], vectors)
    return int(len(encode_rows))


def update_catalog(run_dir, items_path=None, retire: Iterable[str] = (), export_base: Optional[str] = None,
                   model_name: Optional[str] = None, index: Optional[str] = None, top_k: Optional[int] = None,
                   encoder_factory=None, cold_neighbours: Optional[int] = None,
                   cold_popularity: Optional[float] = None) -> CatalogUpdate:
    """Writes the next export version of a trained run with new, changed and retired items.

    No training step runs: the towers are the run's checkpoint, and only item texts that
    are new or changed since training are encoded.

    Args:
        run_dir: str | Path. the training run's `--output-dir` (metrics.json, catalog.parquet,
            checkpoints/).
        items_path: str | Path or None. new or changed items (the `--items` format of `--data files`).
        retire: iterable of str. item ids that must never be recommended again.
        export_base: str or None. where versions go (default: the run's `--export-base`).
        model_name: str or None. default: the run's `--model-name`.
        index: str or None. `scann` or `brute-force` (default: the run's `--index`).
        top_k: int or None. K of `serving_default` (default: the run's `--top-k`).
        encoder_factory: EncoderFactory or None. the run's pretrained `--encoder` when None.
        cold_neighbours: int or None. how cold items take their ID part (`--cold-neighbours`;
            it needs no training, so an update may change it; default: the run's).
        cold_popularity: float or None. `--cold-popularity` (default: the run's).

    Returns:
        CatalogUpdate.

    Raises:
        ConfigError: `run_dir` is not a finished run or has no checkpoint, or nothing to do.
        DataError: a bad items file, an unknown item to retire, or nothing left to recommend.
    """
    from tfrec_lm.export import ServingModule, save_serving_module
    from tfrec_lm.fitting import checkpoint_prefix, restore_towers
    from tfrec_lm.models.factory import build_model, create_variables, pretrained_encoder_factory
    from tfrec_lm.models.precision import dtype_policy

    start = time.monotonic()
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    changes_to = {key: value for key, value in
                  {"export_base": export_base, "model_name": model_name, "index": index, "top_k": top_k,
                   "cold_neighbours": cold_neighbours, "cold_popularity": cold_popularity}.items()
                  if value is not None}
    config = config.replace(**changes_to)
    prefix = checkpoint_prefix(str(run_dir), flag="--run")
    retire = list(retire)
    if items_path is None and not retire:
        raise ConfigError("nothing to update: give an items file of new or changed items, items to retire, or both")
    items = read_items(items_path) if items_path is not None else None

    trained = read_catalog(run_dir / CATALOG_FILE)
    model_dir = Path(config.export_base) / config.model_name
    base, base_name = starting_catalog(run_dir, model_dir)
    catalog, changes = apply_changes(base, items, retire)
    catalog_texts = catalog["text"].to_numpy(dtype=object)
    trained_texts = trained["text"].to_numpy(dtype=object)
    differs = np.ones(len(catalog), bool)
    differs[: len(trained)] = catalog_texts[: len(trained)] != trained_texts
    encode_rows = np.flatnonzero(differs) + 1  # vocabulary indices

    factory = encoder_factory or pretrained_encoder_factory(config.encoder)
    with dtype_policy(config.mixed_precision):
        old = build_model(config, trained_texts.tolist(), factory,
                          warm_items=np.concatenate([[False], trained["warm"].to_numpy(bool)]), encode_texts=False,
                          item_counts=np.concatenate([[0], trained["count"].to_numpy(np.int64)]))
        create_variables(old, _probe_features(config.max_history))
        restore_towers(old, prefix)
        new = build_model(config, catalog_texts.tolist(), factory,
                          warm_items=np.concatenate([[False], catalog["warm"].to_numpy(bool)]), encode_texts=False,
                          item_counts=np.concatenate([[0], catalog["count"].to_numpy(np.int64)]))
        create_variables(new, _probe_features(config.max_history))
    encoded = transfer_weights(old, new, encode_rows)

    item_ids = np.concatenate([[""], catalog["item_id"].to_numpy(dtype=object)])
    counts = np.concatenate([[0], catalog["count"].to_numpy(np.int64)])
    retired = np.concatenate([[False], catalog["retired"].to_numpy(bool)])
    module = ServingModule(new, item_ids, counts, top_k=config.top_k, index=config.index, retired=retired)
    metadata = {
        "config": config.to_dict(),
        "index": config.index,
        "top_k": config.top_k,
        "num_items": int(len(catalog)),
        "run_dir": str(run_dir.resolve()),
        "catalog_update": {"base": base_name, "encoded": encoded, **changes.summary(),
                           "added": changes.added, "changed": changes.changed, "retired": changes.retired,
                           "restored": changes.restored},
    }
    path = save_serving_module(module, config.export_base, config.model_name, metadata, catalog=catalog)
    seconds = time.monotonic() - start
    logger.info("catalog update: %s; %d texts encoded; %s in %.1f s", changes.summary(), encoded, path, seconds)
    return CatalogUpdate(export_path=path, changes=changes, encoded=encoded, num_items=int(len(catalog)),
                         num_servable=module.num_servable, base=base_name, seconds=seconds)
