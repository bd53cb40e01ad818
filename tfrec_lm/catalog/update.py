"""`update_catalog`: add, change and retire items of a trained run, without training.

The run's checkpoint holds the towers trained on its catalog. An update rebuilds the
model on the new catalog, grows the trained towers into it (`TwoTowerModel.grow_into`: the
item tables row by row, an update only appends rows), encodes only the texts that are new
or changed since training with the run's frozen encoder (a text the version extended already
encoded is carried over from its `assets.extra/`, so a weekly chain encodes only the week's
new texts), and hands the new version to the
publishing gate (`tfrec_lm.registry.gate`), which writes it beside the previous versions
(atomically, as training does) when its policy allows. New items are cold: their text
places them, and their ID part is the mix of the trained ID embeddings of their nearest
warm look-alikes (`--cold-neighbours`, `--cold-popularity`; with `--cold-neighbours 0` the
learned no-ID vector). Retired items stay known in request histories but never come back
in `serving_default`.

Updates chain: each extends one version (`--from-version`; by default the newest version
in the base), whose catalog is the starting point, and its manifest names that version as
its parent. An update refuses to extend the newest version when that version serves
another run's weights (a refresh, a retrain): building on the older run would silently
roll the served model back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd

from tfrec_lm.catalog.table import CatalogChanges, apply_changes, catalog_extras, read_catalog, read_text_vectors
from tfrec_lm.errors import ConfigError, DataError
from tfrec_lm.registry.gate import GateDecision, PublishGate
from tfrec_lm.registry.manifest import build_manifest
from tfrec_lm.registry.runs import RunFolder
from tfrec_lm.registry.validation import ValidationRequests
from tfrec_lm.registry.model_versions import ModelVersions

logger = logging.getLogger(__name__)

GATE_DAYS = 7
"""With a log, the gate scores both versions on its newest week's interactions (the calibration's targets)."""
CATALOG_TOLERANCE = 0.01
"""The relative validation NDCG@10 loss a catalog update may cost and still pass `--publish if-better`."""
STAGES = ("read", "encoder_import", "build", "grow_and_encode", "fold_in", "popularity", "serving_module", "save",
          "gate", "encoder_export")
"""What `CatalogUpdate.stages` times: reading the items, the log and the catalogs; importing the
encoder's library (none when the run's exported encoder is used); building the models and loading
the checkpoint; growing the towers and encoding new texts; the fold-in; the popularity offset's
calibration; the serving module (its top-k index); writing the SavedModel; the gate (loading and
scoring the candidate and the served version, publishing); an update of a run without a current
`<run>/text_encoder/` (training writes it by default): exporting its frozen encoder for the later
ones (`run_encoder_factory`)."""


class _Stopwatch:
    """Wall seconds per named stage: `with watch("build"): ...` adds to `watch.seconds["build"]` (stages may nest)."""

    def __init__(self):
        self.seconds: dict = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        began = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - began


@dataclasses.dataclass
class CatalogUpdate:
    """What a catalog update did.

    Attributes:
        export_path: Path. the new export version directory.
        changes: CatalogChanges. added, changed, unchanged, retired and restored item ids.
        encoded: int. item texts encoded: new or changed since training, and not encoded by the
            version extended (whose vectors, `reused`, are carried over).
        num_items: int. catalog items in the new version (retired ones included).
        num_servable: int. items the new version can recommend.
        base: str. the catalog the update started from: `run` or the export version it extended.
        seconds: float. wall time of the update.
        gate: GateDecision. what the publishing gate compared and decided (`export_path` is
            a served version when it published, a staging one otherwise).
        run_dir: Path. the run whose weights the version serves.
        fold_in: FoldIn or None. what the interaction log did (`--interactions`), vectors included.
        popularity: PopularityOffset or None. the log's popularity offset and how its scale was chosen.
        stages: dict. str -> float, wall seconds of each stage (`STAGES`, in order; a stage that did
            not run is absent). Their sum is at most `seconds`.
        reused: int. texts whose vectors came from the version extended (its `assets.extra/`).
    """

    export_path: Path
    changes: CatalogChanges
    encoded: int
    num_items: int
    num_servable: int
    base: str
    seconds: float
    gate: Optional[GateDecision] = None
    run_dir: Optional[Path] = None
    fold_in: Optional[object] = None
    popularity: Optional[object] = None
    stages: dict = dataclasses.field(default_factory=dict)
    reused: int = 0


def starting_point(versions: ModelVersions, run_dir: Optional[Path], from_version: Optional[int]
                   ) -> tuple[RunFolder, Optional[int]]:
    """The run and the version an update extends.

    Args:
        versions: ModelVersions. the served base.
        run_dir: Path or None. `--run` (default: the run of the version extended).
        from_version: int or None. `--from-version` (default: the newest version).

    Returns:
        tuple (RunFolder, int or None). the run whose checkpoint is grown, and the version
            extended (None: the base has no version; the run's own catalog is the start).

    Raises:
        ConfigError: the version does not exist, or the newest version serves another run
            than `run_dir` and no `--from-version` says which version to extend.
    """
    if from_version is not None:
        if from_version not in versions.versions():
            raise ConfigError(f"--from-version {from_version}: no such version in {versions.model_dir} "
                              f"(it has {', '.join(map(str, versions.versions())) or 'none'})")
        version = int(from_version)
    else:
        version = versions.newest()
    manifest = versions.manifest(version) if version is not None else {}
    served_run = manifest.get("run_dir")
    if run_dir is None:
        if not served_run:
            raise ConfigError(f"pass --run: {versions.model_dir} has no version that names its run")
        return RunFolder(served_run), version
    run = RunFolder(run_dir)
    if served_run and Path(served_run) != run.path.resolve():
        if from_version is None:
            raise ConfigError(f"the newest version in {versions.model_dir} ({version}) serves the run "
                              f"{served_run}, not {run_dir}, so an update of {run_dir} would roll it back: pass "
                              f"--run {served_run}, or --from-version N to extend an older version of {run_dir}")
        raise ConfigError(f"--from-version {version} serves the run {served_run}, not {run_dir}: pass --run "
                          f"{served_run} to extend it")
    return run, version


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


def read_log(source, since=None) -> tuple[pd.DataFrame, Optional[int]]:
    """An interaction log for a fold-in (the `--data files` interactions format); any bad row stops the update.

    Args:
        source: str | Path | pd.DataFrame. the log file (or folder of Parquet shards), or its rows.
        since: int | str or None. `--since` (Unix seconds or an ISO date): rows before it only make histories.

    Returns:
        tuple (pd.DataFrame user_id, item_id, timestamp; int or None the parsed `since`).

    Raises:
        DataError: the file cannot be read, a row breaks the schema, or no row is at or after `since`.
    """
    from tfrec_lm.config import parse_time
    from tfrec_lm.data.files import load_interactions_file

    name = "the interaction log"
    if isinstance(source, pd.DataFrame):
        log = source
    else:
        name = str(source)
        try:
            dataset = load_interactions_file(source)
        except DataError as error:
            raise DataError(f"--interactions {' '.join(str(error).split())}") from None
        bad = [bad for report in dataset.reports for bad in report.bad_rows]
        if bad:
            rows = sum(report.rows_read for report in dataset.reports)
            raise DataError(f"--interactions {name}: {len(bad)} of {rows} rows break the schema (the first, line "
                            f"{bad[0].line}: {bad[0].reason}); a fold-in reads all of the log or none of it")
        log = dataset.interactions
    log = log[["user_id", "item_id", "timestamp"]]
    if not len(log):
        raise DataError(f"--interactions {name}: the log is empty")
    if since is not None:
        try:
            since = parse_time(since)
        except ValueError as error:
            raise DataError(f"--since: {error}") from None
        if not (log["timestamp"].to_numpy(np.int64) >= since).any():
            raise DataError(f"--interactions {name}: no interaction at or after --since {since}; the log runs from "
                            f"{int(log['timestamp'].min())} to {int(log['timestamp'].max())}")
    return log, since


def _probe_features(max_history: int) -> dict:
    """One history of one item, enough for `create_variables`. dict of np.ndarray."""
    history = np.zeros([1, max_history], np.int32)
    history[0, 0] = 1
    return {"history": history, "history_timestamps": np.zeros_like(history, np.int64),
            "target": np.array([1], np.int32)}


def update_catalog(run_dir=None, items_path=None, retire: Iterable[str] = (), export_base: Optional[str] = None,
                   model_name: Optional[str] = None, index: Optional[str] = None, top_k: Optional[int] = None,
                   encoder_factory=None, cold_neighbours: Optional[int] = None,
                   cold_popularity: Optional[float] = None, from_version: Optional[int] = None,
                   publish: str = "if-better", staging_base: Optional[str] = None,
                   command: Optional[str] = None, tolerance: float = CATALOG_TOLERANCE, interactions=None,
                   since=None, fold_in_shrinkage: Optional[float] = None, fold_in_text_prior: bool = True,
                   fold_in_half_life_days: Optional[float] = None, fold_in_scope: str = "new",
                   fold_in_map: str = "linear", popularity="auto",
                   popularity_half_life_days: Optional[float] = None, new_item_offset="auto") -> CatalogUpdate:
    """Writes the next export version of a trained run with new, changed and retired items.

    No training step runs: the towers are the run's checkpoint, and only item texts that
    are new or changed since training are encoded. The publishing gate scores the new
    version and the served one on the run's validation requests and publishes per `publish`.

    Args:
        run_dir: str | Path or None. the training run's `--output-dir` (metrics.json, catalog.parquet,
            checkpoints/); default: the run of the version extended.
        items_path: str | Path or None. new or changed items (the `--items` format of `--data files`).
        retire: iterable of str. item ids that must never be recommended again.
        export_base: str or None. where versions go (default: the run's `--export-base`, or `exports`).
        model_name: str or None. default: the run's `--model-name`, or `tfrec_lm`.
        index: str or None. `scann` or `brute-force` (default: the run's `--index`).
        top_k: int or None. K of `serving_default` (default: the run's `--top-k`).
        encoder_factory: EncoderFactory or None. the run's pretrained `--encoder` when None.
        cold_neighbours: int or None. how cold items take their ID part (`--cold-neighbours`;
            it needs no training, so an update may change it; default: the run's).
        cold_popularity: float or None. `--cold-popularity` (default: the run's).
        from_version: int or None. the version to extend (default: the newest in the base).
        publish: str. the gate's policy: `if-better`, `always` or `never`.
        staging_base: str or None. where an unpublished version goes (default: `<export_base>-staging`).
        command: str or None. the command line, for the manifest.
        tolerance: float. the relative validation loss `if-better` accepts (new items can only
            displace the validation targets, all of which are known items).
        interactions: str | Path | pd.DataFrame or None. an interaction log (`--interactions`, the
            `--data files` format): its items' vectors are folded in from the frozen user tower's
            queries of the users who took them (`tfrec_lm.catalog.fold_in`). Rows for items outside
            the catalog are counted (`fold_in.outside_catalog`), never folded in.
        since: int | str or None. only log rows at or after it are folded in (all rows make histories).
        fold_in_shrinkage: float or None. k of the fold-in's n / (n + k) (default `DEFAULT_SHRINKAGE`).
        fold_in_text_prior: bool. shrink toward the item's text-based vector (False: the no-ID vector).
        fold_in_half_life_days: float or None. recency weighting of the log (None: equal weights).
        fold_in_scope: str. `new` (items without a trained ID embedding) or `all`.
        fold_in_map: str. `linear` (the takers' centroid mapped into the item space by a ridge map fitted
            on the log's known items) or `none` (the centroid as it is).
        popularity: str or float. with `interactions`: the recency-weighted popularity offset's scale
            (`tfrec_lm.catalog.popularity`): `auto` (chosen by replaying the weekly protocol on the log
            rows the run never trained on), a fixed beta, or 0 / `off` for none. With a log the gate
            scores both versions on the log's newest week, not on the run's validation users.
        popularity_half_life_days: float or None. the offset's half-life (default `DEFAULT_HALF_LIFE_DAYS`).
        new_item_offset: str or float. with `interactions`: gamma, added to the score of every item
            without a trained ID embedding: `auto` (chosen after the popularity scale on the same
            replayed weeks), a number, or 0 / `off`.

    Returns:
        CatalogUpdate.

    Raises:
        ConfigError: `run_dir` is not a finished run or has no checkpoint, the version to
            extend is not of this run, or nothing to do.
        DataError: a bad items file, an unknown item to retire, nothing left to recommend, or a bad
            interaction log (malformed, empty, nothing at or after `since`, none of its items in the catalog).
    """
    import tensorflow as tf

    from tfrec_lm.catalog.fold_in import DEFAULT_SHRINKAGE, MAPS, SCOPES, fold_in
    from tfrec_lm.catalog.popularity import DEFAULT_HALF_LIFE_DAYS, popularity_offset
    from tfrec_lm.layers.exported_text_encoder import try_save_text_encoder
    from tfrec_lm.models.precision import dtype_policy
    from tfrec_lm.serving_module import ServingModule

    start = time.monotonic()
    watch = _Stopwatch()
    retire = list(retire)
    named = RunFolder(run_dir).config() if run_dir is not None else None
    if items_path is None and not retire and interactions is None:
        raise ConfigError("nothing to update: give an items file of new or changed items, items to retire, an "
                          "interaction log, or some of them")
    shrinkage = DEFAULT_SHRINKAGE if fold_in_shrinkage is None else float(fold_in_shrinkage)
    if shrinkage < 0 or not np.isfinite(shrinkage):
        raise ConfigError(f"--fold-in-shrinkage must be >= 0, got {fold_in_shrinkage}")
    if fold_in_half_life_days is not None and not fold_in_half_life_days > 0:
        raise ConfigError(f"--fold-in-half-life must be > 0 days, got {fold_in_half_life_days}")
    if fold_in_map not in MAPS:
        raise ConfigError(f"--fold-in-map must be one of {', '.join(MAPS)}, got {fold_in_map!r}")
    if fold_in_scope not in SCOPES:
        raise ConfigError(f"--fold-in-scope must be one of {', '.join(SCOPES)}, got {fold_in_scope!r}")
    popularity = parse_scale(popularity, "--popularity-offset", at_least=0.0)
    new_item_offset = parse_scale(new_item_offset, "--new-item-offset")
    half_life = DEFAULT_HALF_LIFE_DAYS if popularity_half_life_days is None else float(popularity_half_life_days)
    if not half_life > 0 or not np.isfinite(half_life):
        raise ConfigError(f"--popularity-half-life must be > 0 days, got {popularity_half_life_days}")
    versions = ModelVersions(export_base or (named.export_base if named else "exports"),
                             model_name or (named.model_name if named else "tfrec_lm"))
    run, parent = starting_point(versions, None if run_dir is None else Path(run_dir), from_version)
    trained_config = config = run.config()
    changes_to = {key: value for key, value in
                  {"export_base": str(versions.export_base), "model_name": versions.model_name, "index": index,
                   "top_k": top_k, "cold_neighbours": cold_neighbours, "cold_popularity": cold_popularity,
                   "staging_base": staging_base}.items() if value is not None}
    config = config.replace(**changes_to)
    if not run.has_checkpoint():
        raise ConfigError(f"--run: no checkpoint at {run.checkpoint} (expected {run.checkpoint}.index)")
    with watch("read"):
        items = read_items(items_path) if items_path is not None else None
        log, since = read_log(interactions, since) if interactions is not None else (None, None)
        trained = read_catalog(run.catalog_file)
        encoded_before = {}  # (item id, text) -> the run's encoder vector, from the version extended
        if parent is not None and versions.catalog_path(parent).is_file():
            base, base_name = read_catalog(versions.catalog_path(parent)), f"version {parent}"
            encoded_before = read_text_vectors(versions.text_vectors_path(parent))
        else:
            base, base_name = trained, "run"
    if base["item_id"].tolist()[: len(trained)] != trained["item_id"].tolist():
        raise ConfigError(f"the catalog of {base_name} does not start with the items {run.path} was trained on: "
                          "pass the --run that version was made from")
    catalog, changes = apply_changes(base, items, retire)
    catalog_texts = catalog["text"].to_numpy(dtype=object)
    trained_texts = trained["text"].to_numpy(dtype=object)
    differs = np.ones(len(catalog), bool)
    differs[: len(trained)] = catalog_texts[: len(trained)] != trained_texts
    text_rows = np.flatnonzero(differs) + 1  # vocabulary indices whose text the checkpoint has not encoded
    # The version extended encoded some of them already, with the same run's encoder: only the rest are encoded.
    catalog_ids = catalog["item_id"].to_numpy(dtype=object)
    before = [encoded_before.get((catalog_ids[row - 1], catalog_texts[row - 1])) for row in text_rows]
    reused = np.array([vector is not None for vector in before], bool)
    encode_rows = text_rows[~reused]
    known_vectors = (text_rows[reused], np.stack([v for v in before if v is not None])) if reused.any() else None
    if log is not None:
        window = log if since is None else log[log["timestamp"].to_numpy(np.int64) >= since]
        if not window["item_id"].astype(str).isin(set(catalog["item_id"])).any():
            raise DataError(f"--interactions: none of the log's {window['item_id'].nunique()} items "
                            f"{'at or after --since ' if since is not None else ''}is in the catalog "
                            f"({len(catalog)} items)")

    # The checkpoint holds every encoder weight, so only the architecture is built (or the run's exported
    # encoder loaded); and the grown model shares the trained model's encoders (nothing trains), so each is
    # built once.
    export_digest = None  # set when this update must export the run's encoder for the later ones
    with watch("encoder_import"):
        if encoder_factory is not None:
            factory = encoder_factory
        else:
            factory, export_digest = run_encoder_factory(run, trained_config)
    making, sharing = shared_encoders(factory)
    with watch("build"), dtype_policy(config.mixed_precision):
        # The model as trained: with --item-fusion evidence, --cold-neighbours sets a table's width.
        old = build_on_catalog(trained_config, trained, making)
        old.load_towers(run.checkpoint)
        new = build_on_catalog(config, catalog, sharing)
    cache = new.item_tower.text_cache
    if known_vectors is not None and (cache is None or known_vectors[1].shape[1:] != tuple(cache.shape[1:])):
        logger.warning("%s: its text vectors do not fit this run's encoder; every new text is encoded again",
                       versions.text_vectors_path(parent))
        encode_rows, known_vectors, reused = text_rows, None, np.zeros(len(text_rows), bool)
    with watch("grow_and_encode"):
        encoded = old.grow_into(new, encode_rows, known_vectors)
        new.item_tower.freeze_cold_ids()  # nothing trains from here: the neighbour table is computed once
    text_vectors = None  # what this version carries for the next update: every text the checkpoint lacks
    if cache is not None and len(text_rows):
        text_vectors = (catalog_ids[text_rows - 1], catalog_texts[text_rows - 1],
                        tf.gather(new.item_tower.text_cache, text_rows).numpy())

    item_ids = np.concatenate([[""], catalog_ids])
    counts = np.concatenate([[0], catalog["count"].to_numpy(np.int64)])
    retired = np.concatenate([[False], catalog["retired"].to_numpy(bool)])
    record = run.record() or {}
    folded, offset, validation = None, None, None
    if log is not None:
        with watch("fold_in"):
            users = new.user_tower.for_export()  # one tower (and one trace) for the fold-in and the calibration
            folded = fold_in(new, item_ids, log, since=since, shrinkage=shrinkage, text_prior=fold_in_text_prior,
                             half_life_days=fold_in_half_life_days, scope=fold_in_scope, audience_map=fold_in_map,
                             users=users)
        trained_until = (record.get("data") or {}).get("last_timestamp")
        untrained = np.concatenate([[False], ~catalog["warm"].to_numpy(bool)]) & ~retired
        with watch("popularity"):
            offset, targets, ordered = popularity_offset(
                new, item_ids, log, folded.representations, popularity, half_life, servable=~retired,
                trained_until=trained_until, new_items=untrained, new_item_offset=new_item_offset, users=users)
        stamps = ordered["timestamp"].to_numpy(np.int64)
        week = targets[stamps[targets] >= stamps.max() + 1 - GATE_DAYS * 86400]  # the gate: the newest week
        if len(week):
            validation = ValidationRequests.from_log(ordered, week, window=f"the log's newest week ({len(week)} "
                                                                           "interactions)")
    with watch("serving_module"):
        module = ServingModule(new, item_ids, counts, top_k=config.top_k, index=config.index, retired=retired,
                               item_representations=None if folded is None else folded.representations,
                               item_offsets=None if offset is None or not offset.offsets.any() else offset.offsets)
    fold_record = {} if folded is None else {"fold_in": {**folded.summary(), "since": since},
                                             "popularity_offset": offset.summary()}
    manifest = build_manifest(
        "catalog-update", config, run.path, run.run_id(), parent, record.get("data"), len(catalog), command,
        catalog_update={"base": base_name, "encoded": encoded, "reused_vectors": int(reused.sum()),
                        **changes.summary(), "added": changes.added,
                        "changed": changes.changed, "retired": changes.retired, "restored": changes.restored,
                        **fold_record})
    if validation is None and run.validation_file.is_file():
        validation = ValidationRequests.load(run.validation_file)
    gate = PublishGate(versions, ModelVersions(config.staging, config.model_name), publish, validation,
                       tolerance=tolerance)

    def write(target):
        with watch("save"):
            return target.save(module, manifest, extras=catalog_extras(catalog, text_vectors))

    with watch("gate"):
        decision = gate.submit(write, config.top_k)
    watch.seconds["gate"] -= watch.seconds.get("save", 0.0)  # the gate's own work: scoring and publishing
    if export_digest is not None:  # the version is out: a failure only leaves later updates building the BERT
        with watch("encoder_export"):
            try_save_text_encoder(old.item_tower.encoder, old.item_tower.tokenizer, run.text_encoder_dir, export_digest)
    seconds = time.monotonic() - start
    stages = {name: watch.seconds[name] for name in STAGES if name in watch.seconds}
    logger.info("catalog update: %s; %d texts encoded; %s in %.1f s (%s)", changes.summary(), encoded, decision.path,
                seconds, ", ".join(f"{name} {value:.2f} s" for name, value in stages.items()))
    return CatalogUpdate(export_path=decision.path, changes=changes, encoded=encoded, reused=int(reused.sum()),
                         num_items=int(len(catalog)),
                         num_servable=module.num_servable, base=base_name, seconds=seconds, gate=decision,
                         run_dir=run.path, fold_in=folded, popularity=offset, stages=stages)


def parse_scale(value, flag: str, at_least: Optional[float] = None):
    """An offset scale option (`--popularity-offset`, `--new-item-offset`): `auto`, `off` (0) or a number.

    Args:
        value: str | float or None. the option's value (None: `auto`).
        flag: str. the option, for the message.
        at_least: float or None. the smallest number allowed.

    Returns:
        `auto` or a float.

    Raises:
        ConfigError: anything else.
    """
    if value is None or value == "auto":
        return "auto"
    if value == "off":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number) or (at_least is not None and number < at_least):
        bound = f" >= {at_least:g}" if at_least is not None else ""
        raise ConfigError(f"{flag} must be auto, off or a number{bound}, got {value!r}")
    return number


def run_encoder_factory(run: RunFolder, config) -> tuple:
    """The encoder a catalog update of `run` builds its models with, and whether it must export it.

    A run whose item encoder is frozen under an item-sequence user tower (the default) needs its
    encoder only to encode new texts. Training writes it to `<run>/text_encoder/`
    (`--export-text-encoder`), and updates load that folder and never import transformers. A run
    without a current folder (trained before the option, with `--no-export-text-encoder`, or a
    folder written from another checkpoint: an earlier training of the same folder) is updated by
    building the architecture (transformers) and restoring the weights from the checkpoint; the
    update then exports the encoder (`try_save_text_encoder`) for the later ones.

    Args:
        run: RunFolder. the run.
        config: TrainConfig. the options it trained with.

    Returns:
        tuple (EncoderFactory, str or None). the factory; the checkpoint digest to export the encoder
            under once the update is done (None: nothing to export).
    """
    from tfrec_lm.layers.exported_text_encoder import checkpoint_digest, exported_digest
    from tfrec_lm.models.factory import checkpoint_encoder_factory, exportable_item_encoder, exported_encoder_factory

    if not exportable_item_encoder(config):
        return checkpoint_encoder_factory(config.encoder), None
    digest = checkpoint_digest(run.checkpoint, config.mixed_precision)
    if exported_digest(run.text_encoder_dir) == digest:
        return exported_encoder_factory(run.text_encoder_dir), None
    return checkpoint_encoder_factory(config.encoder), digest


def shared_encoders(factory):
    """Two encoder factories for a model and its grown copy: the second hands out the first's encoders.

    Args:
        factory: EncoderFactory. makes the encoders (`tfrec_lm.models.factory`).

    Returns:
        tuple (EncoderFactory, EncoderFactory). the first calls `factory` and keeps what it
            made; the second returns those, in the order they were made (then new ones from
            `factory`).
    """
    made, handed = [], []

    def making():
        made.append(factory())
        return made[-1]

    def sharing():
        handed.append(None)
        return made[len(handed) - 1] if len(handed) <= len(made) else factory()

    return making, sharing


def build_on_catalog(config, catalog: pd.DataFrame, factory):
    """The run's model built on a catalog (`tfrec_lm.catalog.table` rows), variables created, texts not encoded.

    Args:
        config: TrainConfig. the run's options.
        catalog: pd.DataFrame. the catalog (vocabulary order).
        factory: EncoderFactory. the run's encoder.

    Returns:
        TwoTowerModel.
    """
    from tfrec_lm.models.factory import build_model, create_variables

    model = build_model(config, catalog["text"].tolist(), factory,
                        warm_items=np.concatenate([[False], catalog["warm"].to_numpy(bool)]), encode_texts=False,
                        item_counts=np.concatenate([[0], catalog["count"].to_numpy(np.int64)]))
    model.item_tower.defer_cold_ids()  # computed once, for the grown model, after `grow_into`
    create_variables(model, _probe_features(config.max_history))
    return model
