"""The top-k layer of an export: ScaNN (tuned settings) or brute force over the catalog embeddings."""

from __future__ import annotations

import uuid

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

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
