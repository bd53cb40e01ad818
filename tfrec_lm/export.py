"""SavedModel export for TensorFlow Serving (SPEC §3)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_lm.catalog.table import EXPORT_CATALOG_FILE, write_catalog
from tfrec_lm.evaluation.popularity import most_popular
from tfrec_lm.export_warmup import write_export_warmup
from tfrec_lm.layers.history_ops import in_sorted_rows

logger = logging.getLogger(__name__)

LOWEST_SCORE = float(np.finfo(np.float32).min)


MIN_POINTS_SEARCHED = 20_000
SEARCHED_SHARE = 0.04
MIN_REORDERING_CANDIDATES = 250
ITEMS_PER_REORDERING_CANDIDATE = 10_000


def scann_settings(count: int, k: int, unit_norm: bool = True) -> dict:
    """The ScaNN index settings of a catalog of `count` items (keyword arguments of `ScaNNIndex`).

    int(sqrt(count)) leaves. Up to `MIN_POINTS_SEARCHED` (20,000) items every leaf is
    searched and min(count, max(1000, 4k)) candidates are rescored exactly (the settings
    export always used: MovieLens-100K's 1,682 items are all rescored, an exact answer).
    Above, 4% of the leaves are searched, but never fewer than hold 20,000 items on
    average (100k: 64 of 316 leaves, 1M: 40 of 1,000, 10M: 127 of 3,162), and
    max(4k, 250, count / 10,000) candidates are rescored (250 up to 2.5M items, 1,000 at
    10M: denser catalogs put more near-ties in front of the true top 10). The tree is
    spherical k-means when the rows have unit length (the item tower's default). Chosen
    on clustered synthetic catalogs, 64 wide (benchmarks/retrieval_scale.py, BUILD_NOTES.md).

    Args:
        count: int. number of catalog items.
        k: int. default k of the layer.
        unit_norm: bool. every row has unit length.
    """
    num_leaves = max(1, int(np.sqrt(count)))
    if count <= MIN_POINTS_SEARCHED:
        num_leaves_to_search = num_leaves
        reordering = min(count, max(1000, 4 * k))
    else:
        floor = int(np.ceil(MIN_POINTS_SEARCHED * num_leaves / count))
        num_leaves_to_search = min(num_leaves, max(int(np.ceil(SEARCHED_SHARE * num_leaves)), floor))
        reordering = min(count, max(4 * k, MIN_REORDERING_CANDIDATES, count // ITEMS_PER_REORDERING_CANDIDATE))
    return {"num_leaves": num_leaves, "num_leaves_to_search": num_leaves_to_search,
            "num_reordering_candidates": reordering, "spherical": bool(unit_norm), "quantize_centroids": False,
            "dimensions_per_block": 2,
            "anisotropic_quantization_threshold": None, "reordering_dtype": "float32"}


class _ReleasedAfterSerializing:
    """A built searcher whose `serialize_to_module` also frees the searcher itself.

    TFRS keeps only the serialized state (the searcher is recreated from it on the first
    call); the built searcher would otherwise stay in TensorFlow's resource manager for
    the life of the process (about the size of the catalog again).
    """

    def __init__(self, searcher):
        self.searcher = searcher

    def serialize_to_module(self):
        state = self.searcher.serialize_to_module()
        tf.raw_ops.DestroyResourceOp(resource=self.searcher.searcher_handle, ignore_lookup_error=True)
        return state


class ScaNNIndex(tfrs.layers.factorized_top_k.ScaNN):
    """TFRS's ScaNN layer, built with the settings `scann_settings` names.

    Differences from `tfrs.layers.factorized_top_k.ScaNN` (whose saved form, a
    `ScannState` module plus identifiers, it keeps): the searcher is built with the
    tree and asymmetric-hashing options TFRS does not pass on (spherical partitioning,
    int8 centroids, the anisotropic quantization threshold, the reordering dtype), the
    searcher built for saving is freed once serialized, and every call asks
    ScaNN to rescore max(k, `num_reordering_candidates`) candidates, so a call can get
    more neighbours than the reordering setting (TFRS's layer returns at most that many).

    Args:
        k: int. default number of results.
        num_leaves, num_leaves_to_search: int. partitioning tree.
        num_reordering_candidates: int. candidates rescored exactly per query (at least k).
        spherical: bool. spherical k-means for the tree (rows of unit length).
        quantize_centroids: bool. score the leaves' centroids in int8.
        dimensions_per_block: int. asymmetric hashing: dimensions per 4-bit code.
        anisotropic_quantization_threshold: float or None. asymmetric hashing's noise-shaping
            threshold (None: plain quantization).
        reordering_dtype: str. `float32` or `int8`: the copy reordering reads (ScaNN 1.4.2's
            TensorFlow ops cannot reload a bfloat16 one from a SavedModel).
        training_iterations: int. k-means iterations of the tree.
        name: str. the layer's name.
    """

    def __init__(self, k: int = 10, *, num_leaves: int, num_leaves_to_search: int, num_reordering_candidates: int,
                 spherical: bool = False, quantize_centroids: bool = False, dimensions_per_block: int = 2,
                 anisotropic_quantization_threshold: float | None = None, reordering_dtype: str = "float32",
                 training_iterations: int = 12, name: str | None = None):
        super().__init__(k=k, num_leaves=num_leaves, num_leaves_to_search=num_leaves_to_search,
                         training_iterations=training_iterations, dimensions_per_block=dimensions_per_block,
                         num_reordering_candidates=num_reordering_candidates, name=name)
        from scann.scann_ops.py import scann_ops
        from scann.scann_ops.py.scann_builder import ReorderType

        reorder_type = {"float32": ReorderType.FLOAT32, "int8": ReorderType.INT8}[reordering_dtype]

        def build_searcher(candidates):
            builder = scann_ops.builder(db=candidates, num_neighbors=k, distance_measure="dot_product")
            builder = builder.tree(num_leaves=num_leaves, num_leaves_to_search=num_leaves_to_search,
                                   training_iterations=training_iterations, spherical=bool(spherical),
                                   quantize_centroids=bool(quantize_centroids))
            builder = builder.score_ah(dimensions_per_block=dimensions_per_block,
                                       anisotropic_quantization_threshold=float(
                                           "nan" if anisotropic_quantization_threshold is None
                                           else anisotropic_quantization_threshold))
            builder = builder.reorder(num_reordering_candidates, quantize=reorder_type)
            # A unique name, as TFRS: searchers must not be shared between layers.
            return _ReleasedAfterSerializing(builder.build(shared_name=f"{self.name}/{uuid.uuid4()}"))

        self._build_searcher = build_searcher

    def call(self, queries, k=None):
        """(scores, identifiers) of the best `k` candidates. [B, D] -> [B, k] twice."""
        from scann.scann_ops.py import scann_ops

        k = self._k if k is None else k
        if self._serialized_searcher is None:
            raise ValueError("The `index` method must be called first to create the retrieval index.")
        searcher = scann_ops.searcher_from_module(self._serialized_searcher)
        rescored = tf.maximum(k, self._num_reordering_candidates)
        if len(queries.shape) == 1:
            result = searcher.search(queries, final_num_neighbors=k, pre_reorder_num_neighbors=rescored)
            distances, indices = result.distance, result.index
        else:
            result = searcher.search_batched_parallel(queries, final_num_neighbors=k,
                                                      pre_reorder_num_neighbors=rescored)
            distances, indices = result.distances, result.indices
        if self._identifiers is None:
            return distances, indices
        return distances, tf.gather(self._identifiers, indices)


def make_index(kind: str, embeddings: np.ndarray, k: int, servable: np.ndarray | None = None, settings=None):
    """Builds the top-k layer over catalog embeddings (rows 1..C).

    Args:
        kind: str. `scann` or `brute-force`.
        embeddings: np.ndarray float32. [C+1, D] catalog embeddings, row 0 padding.
        k: int. default k of the layer.
        servable: np.ndarray bool or None. [C+1] the items the index holds (retired items
            are left out); None: items 1..C.
        settings: dict or None. ScaNN settings (default: `scann_settings` of the held items,
            spherical where every row has unit length).
    """
    if servable is None:
        rows = np.arange(1, embeddings.shape[0])
        candidates = tf.constant(embeddings[1:], tf.float32)  # a view: one copy, not two
    else:
        rows = np.flatnonzero(servable)
        rows = rows[rows > 0]
        candidates = tf.constant(embeddings[rows], tf.float32)
    identifiers = tf.constant(rows.astype(np.int32))
    if kind == "brute-force":
        return tfrs.layers.factorized_top_k.BruteForce(k=k, name="top_k").index(candidates, identifiers)
    if settings is None:
        norms = tf.norm(candidates, axis=1)
        unit_norm = bool(tf.reduce_all(tf.abs(norms - 1.0) < 1e-3))
        settings = scann_settings(int(candidates.shape[0]), k, unit_norm=unit_norm)
    return ScaNNIndex(k=k, name="top_k", **settings).index(candidates, identifiers)


class ServingModule(tf.Module):
    """The exported graph: item-id lookup, user tower, top-k index, exclusion, fallback.

    Args:
        model: TwoTowerModel. the trained model.
        item_ids: np.ndarray of str. [C+1] vocabulary, index 0 = padding `""`.
        counts: np.ndarray. [C+1] training interaction counts (popularity).
        top_k: int. K of `serving_default`.
        index: str. `scann` or `brute-force`.
        retired: np.ndarray bool or None. [C+1] items that are never recommended again (a
            catalog update retired them): out of the index and the popularity fallback, and
            scored like unknown candidates by `rank`; in a request's history they still count.
    """

    def __init__(self, model, item_ids, counts, top_k: int = 10, index: str = "scann", retired=None):
        super().__init__(name="tfrec_lm_serving")
        num_items = len(item_ids)
        servable = np.ones(num_items, dtype=bool) if retired is None else ~np.asarray(retired, dtype=bool)
        servable[0] = False
        num_servable = int(servable.sum())
        if top_k > num_servable:
            raise ValueError(f"top_k={top_k} exceeds the number of items that can be recommended ({num_servable})")
        self.top_k = int(top_k)
        self.num_items = num_items
        self.num_servable = num_servable
        self.servable = tf.constant(servable)
        self.lookup = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(np.asarray(item_ids[1:], dtype=object).astype(str)),
                tf.range(1, num_items, dtype=tf.int32)),
            default_value=0)
        self.item_ids = tf.constant(np.asarray(item_ids, dtype=object).astype(str))
        everything = tf.range(num_items, dtype=tf.int32)
        embeddings = model.item_tower(everything, training=False).numpy()
        embeddings[0] = 0.0
        self.item_embeddings = tf.Variable(embeddings, trainable=False, name="item_embeddings")
        self.similarity_width = int(model.item_tower.embedding_dim)
        counts = np.asarray(counts, dtype=np.float64).copy()
        counts[0] = -1.0
        order = most_popular(counts, num_items - 1, exclude=np.flatnonzero(~servable))
        self.popular = tf.constant(order.astype(np.int32))
        share = np.maximum(counts, 0.0) / max(counts[1:].sum(), 1.0)
        self.popularity_share = tf.constant(share.astype(np.float32))
        # The item-sequence tower composes a table of item representations computed now (the
        # SavedModel holds no BERT at all); the history-text tower is exported as it is.
        self.user_tower = model.user_tower.for_export()
        self.ranking_head = model.ranking_head
        self.index = make_index(index, embeddings, self.top_k, servable)
        self.index_kind = index

    def _users(self, history, timestamps):
        return self.user_tower(history, timestamps, training=False)

    def _lookup(self, item_ids):
        return self.lookup.lookup(tf.strings.strip(item_ids))

    def _recommend(self, history, timestamps):
        """Top-K item indices and scores; no history item, popular items without history."""
        batch = tf.shape(history)[0]
        has_history = tf.reduce_any(history > 0, axis=1)
        known = tf.reduce_sum(tf.cast(history > 0, tf.int32), axis=1)
        fetch = tf.minimum(self.top_k + tf.reduce_max(tf.concat([known, [0]], 0)), self.num_servable)
        users = self._users(history, timestamps)
        _, found = self.index(users, k=fetch)
        found = tf.cast(found, tf.int32)
        found = tf.where(has_history[:, None], found, tf.zeros_like(found))
        fill = tf.tile(self.popular[None, :fetch], [batch, 1])
        sorted_found = tf.sort(found, axis=1)
        fill_valid = tf.logical_not(in_sorted_rows(sorted_found, fill))
        candidates = tf.concat([found, fill], axis=1)
        sorted_history = tf.sort(history, axis=1)
        valid = tf.logical_and(candidates > 0, tf.logical_not(in_sorted_rows(sorted_history, candidates)))
        valid = tf.logical_and(valid, tf.concat([tf.ones_like(found, tf.bool), fill_valid], axis=1))
        position = tf.cast(tf.range(tf.shape(candidates)[1]), tf.float32)[None, :]
        priority = tf.where(valid, -position, LOWEST_SCORE)
        best, chosen = tf.math.top_k(priority, k=self.top_k)
        # A history covering all but fewer than K items leaves slots empty: "" / lowest score.
        filled = best > LOWEST_SCORE
        items = tf.where(filled, tf.gather(candidates, chosen, batch_dims=1), 0)
        vectors = tf.gather(self.item_embeddings, items)
        scores = tf.where(has_history[:, None], tf.einsum("bd,bkd->bk", users, vectors),
                          tf.gather(self.popularity_share, items))
        return items, tf.where(filled, scores, LOWEST_SCORE)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
                                  tf.TensorSpec([None, None], tf.int64, name="history_timestamps")])
    def retrieve(self, history_item_ids, history_timestamps):
        """Top-K items per user, none from the history; popular items without history."""
        items, scores = self._recommend(self._lookup(history_item_ids), history_timestamps)
        return {"item_ids": tf.ensure_shape(tf.gather(self.item_ids, items), [None, self.top_k]),
                "scores": tf.ensure_shape(scores, [None, self.top_k])}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
                                  tf.TensorSpec([None, None], tf.int64, name="history_timestamps")])
    def explain(self, history_item_ids, history_timestamps):
        """`serving_default`'s answer plus, per item, the history item that most supports it.

        `because_item_ids` [B, K] is the history item whose embedding is most similar
        to the recommended item's ("because you watched X"), `because_similarity`
        [B, K] their cosine similarity; "" and 0 where the history has no known item.
        """
        history = self._lookup(history_item_ids)
        items, scores = self._recommend(history, history_timestamps)
        width = self.similarity_width  # an item bias column is not part of the item's likeness
        recommended = tf.math.l2_normalize(tf.gather(self.item_embeddings[:, :width], items), axis=-1)
        watched = tf.math.l2_normalize(tf.gather(self.item_embeddings[:, :width], history), axis=-1)
        similarity = tf.einsum("bkd,bnd->bkn", recommended, watched)
        similarity = tf.where((history > 0)[:, None, :], similarity, LOWEST_SCORE)
        best = tf.argmax(similarity, axis=2, output_type=tf.int32)
        because = tf.gather(history, best, batch_dims=1)
        has_history = tf.reduce_any(history > 0, axis=1)[:, None]
        because = tf.where(has_history, because, 0)
        best_similarity = tf.where(has_history, tf.reduce_max(similarity, axis=2), 0.0)
        return {"item_ids": tf.gather(self.item_ids, items), "scores": scores,
                "because_item_ids": tf.gather(self.item_ids, because), "because_similarity": best_similarity}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
                                  tf.TensorSpec([None, None], tf.int64, name="history_timestamps"),
                                  tf.TensorSpec([None, None], tf.string, name="candidate_item_ids")])
    def rank(self, history_item_ids, history_timestamps, candidate_item_ids):
        """Scores given candidates; unknown (and retired) candidates get the lowest float32."""
        history = self._lookup(history_item_ids)
        has_history = tf.reduce_any(history > 0, axis=1)
        candidates = self._lookup(candidate_item_ids)
        users = self._users(history, history_timestamps)
        vectors = tf.gather(self.item_embeddings, candidates)
        affinity = tf.einsum("bd,bmd->bm", users, vectors)
        scores = tf.where(has_history[:, None], affinity, tf.gather(self.popularity_share, candidates))
        scores = tf.where(tf.gather(self.servable, candidates), scores, LOWEST_SCORE)
        tiled = tf.tile(users[:, None, :], [1, tf.shape(candidates)[1], 1])
        ratings = tf.squeeze(self.ranking_head(tf.concat([tiled, vectors], axis=-1)), axis=-1)
        return {"scores": scores, "predicted_ratings": ratings}


def export_versions(model_dir: Path) -> list[int]:
    """The versions exported under `<export_base>/<model_name>`, oldest first.

    Args:
        model_dir: Path. `<export_base>/<model_name>`.

    Returns:
        list of int. integer-named subdirectories (staging `.tmp-*` ones are not versions);
            empty when the folder does not exist.
    """
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    """The version after the newest one under `model_dir` (1 for none). int."""
    return max(export_versions(model_dir), default=0) + 1


def save_serving_module(module: ServingModule, export_base, model_name: str, metadata: dict,
                        version: int | None = None, catalog=None) -> Path:
    """Writes `<export_base>/<model_name>/<version>/` atomically and returns it.

    Args:
        module: ServingModule. the graph to save.
        export_base: str | Path. the base path a server watches.
        model_name: str. the model's folder under it.
        metadata: dict. written to `assets.extra/tfrec_lm.json`.
        version: int or None. the version number (default: one above the newest).
        catalog: pd.DataFrame or None. the catalog behind the version (`tfrec_lm.catalog.table`),
            written to `assets.extra/` so a later catalog update can extend it.

    Returns:
        Path. the version directory.
    """
    model_dir = Path(export_base) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    version = next_version(model_dir) if version is None else int(version)
    if version < 1:
        raise ValueError(f"export versions are positive integers, got {version}")
    final = model_dir / str(version)
    if final.exists():
        raise FileExistsError(f"export version already exists: {final}")
    staging = model_dir / f".tmp-{version}-{os.getpid()}-{int(time.time())}"
    signatures = {"serving_default": module.retrieve, "rank": module.rank, "explain": module.explain}
    options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if module.index_kind == "scann" else None)
    try:
        tf.saved_model.save(module, str(staging), signatures=signatures, options=options)
        extra = staging / "assets.extra"
        extra.mkdir(exist_ok=True)
        (extra / "tfrec_lm.json").write_text(json.dumps(metadata, indent=2, default=float))
        if catalog is not None:
            write_catalog(catalog, extra / EXPORT_CATALOG_FILE)
        write_export_warmup(staging, module.item_ids.numpy(), model_name)
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("exported %s", final)
    return final


def export_model(result, config, catalog=None, run_dir=None) -> Path:
    """Exports a `TrainResult` per SPEC §3 with the config's index and K.

    Args:
        result: TrainResult. the trained model, vocabulary and popularity.
        config: TrainConfig. reads `top_k`, `index`, `export_base` and `model_name`.
        catalog: pd.DataFrame or None. the run's catalog, kept in the export for catalog updates.
        run_dir: Path or None. the run's output directory, recorded for catalog updates.

    Returns:
        Path. the version directory.
    """
    module = ServingModule(result.model, result.vocab.ids, result.counts, top_k=config.top_k, index=config.index)
    metadata = {
        "config": config.to_dict(),
        "index": config.index,
        "top_k": config.top_k,
        "test_metrics": result.metrics,
        "num_items": int(result.vocab.size - 1),
    }
    if run_dir is not None:
        metadata["run_dir"] = str(Path(run_dir).resolve())
    return save_serving_module(module, config.export_base, config.model_name, metadata, catalog=catalog)


def load_scann_ops(required: bool = True) -> bool:
    """Registers ScaNN's TensorFlow ops (needed to load a `--index scann` export).

    Args:
        required: bool. raise when the ops cannot be registered; False: log a warning and
            return False (the dev server, which may serve brute-force exports only).

    Returns:
        bool. True when the ops are registered.

    Raises:
        Exception: `required` and ScaNN is missing (ImportError) or its ops library was
            built for another TensorFlow.
    """
    try:
        import scann.scann_ops.py.scann_ops  # noqa: F401  (registers the ops)
    except Exception as error:  # ImportError, or a .so built for another TensorFlow
        if required:
            raise
        logger.warning("ScaNN's TensorFlow ops are not available (%s); ScaNN exports will not load", error)
        return False
    return True
