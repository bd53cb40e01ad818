"""`ItemTower`: item text through BERT, projected, plus an optional item-ID embedding."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)


# Bump when the way the vectors are computed changes without changing any input below.
TEXT_CACHE_FORMAT = 2
FUSIONS = ("sum", "balanced", "evidence", "gated")
GATE_INITIAL_A = 0.0
"""`gated`'s slope a at initialisation: the gate starts flat in log(1 + n)."""
GATE_INITIAL_B = 4.0
"""`gated`'s offset b at initialisation: every warm item's gate starts at sigmoid(4) = 0.982."""
TEXT_WHITENINGS = ("none", "center", "whiten")
WHITENING_EPS = 1e-6
"""`whiten`'s floor on the covariance eigenvalues, relative to the largest: 1 / sqrt(s + eps * max(s))."""
STATISTICS_CHUNK_ROWS = 65536
"""Rows the text statistics and `mean_pairwise_cosine` hold in float64 at once."""
COLD_CHUNK_ROWS = 1024
"""Most cold rows `ItemTower.cold_id_table` scores against the warm items at once."""
COLD_CHUNK_FLOATS = 64 * 2 ** 20
"""Most [chunk x warm] cosines it holds at once (float32: 256 MiB)."""


def cold_chunk_rows(warm: int) -> int:
    """Cold rows per chunk of `ItemTower.cold_id_table` for `warm` warm items.

    Args:
        warm: int. warm items (columns of the cosine matrix).

    Returns:
        int. `COLD_CHUNK_ROWS`, fewer where chunk x warm floats would pass `COLD_CHUNK_FLOATS`; at least 1.
    """
    return max(1, min(COLD_CHUNK_ROWS, COLD_CHUNK_FLOATS // max(int(warm), 1)))


def mean_pairwise_cosine(vectors) -> float:
    """The mean cosine over all pairs i != j of rows, exactly, in O(N x D).

    With u_i = v_i / |v_i|, the sum over i != j of u_i . u_j is |sum u|^2 - sum |u_i|^2; a
    zero row has u = 0 and counts as cosine 0 with every other row.

    Args:
        vectors: np.ndarray float. [N, D] rows, N >= 2.

    Returns:
        float. mean over the N (N - 1) ordered pairs of distinct rows of their cosine.
    """
    vectors = np.asarray(vectors)
    count = int(vectors.shape[0])
    if count < 2:
        raise ValueError(f"a mean pairwise cosine needs at least 2 vectors, got {count}")
    total = np.zeros(vectors.shape[1], np.float64)
    squares = 0.0
    for start in range(0, count, STATISTICS_CHUNK_ROWS):
        chunk = vectors[start:start + STATISTICS_CHUNK_ROWS].astype(np.float64)
        norms = np.linalg.norm(chunk, axis=1, keepdims=True)
        units = np.divide(chunk, norms, out=np.zeros_like(chunk), where=norms > 0)
        total += units.sum(axis=0)
        squares += float((units * units).sum())
    return float((total @ total - squares) / (count * (count - 1)))


def whitening_statistics(vectors, whiten: bool = True):
    """BERT-whitening's statistics (Su et al. 2021) of a set of vectors.

    The mean mu and, with `whiten`, W = U diag(1 / sqrt(s + eps)) from the eigendecomposition
    U diag(s) U^T of the covariance (over N, so (v - mu) @ W of the rows has identity
    covariance and zero mean); full dimension, eps = `WHITENING_EPS` x the largest eigenvalue
    (directions the rows do not span are scaled by at most 1 / sqrt(eps)). In float64, a
    chunk of rows at a time.

    Args:
        vectors: np.ndarray float. [N, D] rows, N >= 1.
        whiten: bool. also compute W (False: the mean only, `center`).

    Returns:
        tuple (np.ndarray float32 [D], np.ndarray float32 [D, D] or None). mu and W.
    """
    vectors = np.asarray(vectors)
    count = int(vectors.shape[0])
    if count < 1:
        raise ValueError("text statistics need at least one vector")
    chunks = range(0, count, STATISTICS_CHUNK_ROWS)
    mean = sum(vectors[start:start + STATISTICS_CHUNK_ROWS].astype(np.float64).sum(axis=0) for start in chunks) / count
    if not whiten:
        return mean.astype(np.float32), None
    covariance = np.zeros([vectors.shape[1]] * 2, np.float64)
    for start in chunks:
        centred = vectors[start:start + STATISTICS_CHUNK_ROWS].astype(np.float64) - mean
        covariance += centred.T @ centred
    values, basis = np.linalg.eigh(covariance / count)
    values = np.maximum(values, 0.0)
    floor = WHITENING_EPS * max(float(values.max()), np.finfo(np.float64).tiny)
    return mean.astype(np.float32), (basis / np.sqrt(values + floor)[None, :]).astype(np.float32)


def text_cache_key(token_rows: np.ndarray, encoder) -> str:
    """A digest of everything the cached vectors depend on.

    That is the token rows, the encoder's weights and the precision it computes in: the
    same weights under a `mixed_bfloat16` policy give vectors rounded to bfloat16, which a
    float32 run must never be served (and the other way round).

    Args:
        token_rows: np.ndarray int. [N, L] token ids of the items, row 0 padding.
        encoder: tfrec_lm.layers.BertTextEncoder. the (frozen) encoder.

    Returns:
        str. 32 hex digits.
    """
    digest = hashlib.sha256()
    digest.update(f"format {TEXT_CACHE_FORMAT}\n".encode())
    digest.update(f"compute dtypes {encoder_compute_dtypes(encoder)}\n".encode())
    digest.update(np.ascontiguousarray(token_rows, dtype=np.int32).tobytes())
    digest.update(str(token_rows.shape).encode())
    for weight in encoder.bert.weights:  # in creation order; names carry per-instance prefixes
        value = weight.numpy()
        digest.update(str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:32]


def encoder_compute_dtypes(encoder) -> list:
    """The compute dtypes the encoder runs in: its own and every sublayer's (a dtype policy
    is fixed per layer when it is created, so one encoder could in principle mix them).

    Args:
        encoder: tf.keras.layers.Layer. the text encoder.

    Returns:
        list of str. sorted distinct compute dtypes, e.g. ``["float32"]``.
    """
    layers = [encoder, *encoder.submodules]
    return sorted({layer.compute_dtype for layer in layers if isinstance(layer, tf.keras.layers.Layer)})


def _norm_last_axis(norm, vectors):
    """A LayerNormalization over the last axis of a tensor of any rank.

    Keras fixes the axis as a positive index when the layer is built, and the tower is
    called on [B], [B, N] and [C] items alike: the norm runs on rows [-1, D] instead.
    """
    rows = norm(tf.reshape(vectors, [-1, tf.shape(vectors)[-1]]))
    return tf.reshape(rows, tf.shape(vectors))


class _LoraStates:
    """`lora`'s per-run cache of an item tower: the lower token states, masks and traced functions.

    A plain object, so Keras tracks none of it (it must not enter checkpoints or `weights`).
    """

    def __init__(self):
        self.states = self.mask = self.lengths = self.top = self.refresh = None

    @property
    def ready(self) -> bool:
        return self.states is not None


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class ItemTower(tf.keras.layers.Layer):
    """Embeds catalog items by index.

    The item texts were tokenized once; the tower gathers their token rows and
    runs the BERT encoder. With a frozen encoder the pooled BERT vectors of the
    whole catalog are computed once (`refresh_cache`) and kept in a
    non-trainable table, so a training step only projects cached vectors. With a `lora`
    encoder the table holds the adapted encoder's vectors, recomputed from cached lower-layer
    token states (`prepare_lora`, `refresh_adapted_table`), and a training step recomputes the
    rows of its positives with gradient (`adapted_table`, `fresh_items`).

    Args:
        encoder: tfrec_lm.layers.BertTextEncoder. the item text encoder.
        token_rows: np.ndarray int32. [C+1, L] `[CLS] text [SEP]` ids per item, row 0 padding.
        embedding_dim: int. output width.
        use_item_ids: bool. add a trainable item-ID embedding (hybrid).
        use_text: bool. use the text encoder (False gives an ID-only ablation).
        dropout: float. dropout on the text vector.
        normalize: bool. L2-normalise the output of `call`.
        unique_items: bool. a trainable encoder runs once per distinct item of a call
            (`tf.unique`, then a gather back); False under XLA (dynamic shape).
        trim_padding: bool. a trainable encoder reads token rows cut to the longest text
            of the call; False under XLA (dynamic shape).
        warm_items: np.ndarray bool or None. [C+1] True where the item had training
            positives, so its ID embedding was trained. A cold item (False) is represented
            by its text and a learned "no ID yet" vector instead of its (untrained) ID
            embedding. None: every item is warm (the tower before cold items).
        id_dropout: float. in training, the chance that a warm item is represented as a
            cold one (text and the no-ID vector) for a step, so the text-only path is
            trained to stand on its own. One draw per item per call.
        fusion: str. how the text and ID parts add up: `sum` (projected text vector plus
            ID embedding as they are), `balanced` (each part LayerNorm-ed first, so
            neither outweighs the other by its scale; the norms' gains learn the balance) or
            `evidence` (a sum whose ID part is shrunk toward the text neighbours' IDs by the
            item's evidence, in training too: `a_i * id_i + (1 - a_i) * mix_i`,
            `a_i = n_i / (n_i + evidence_shrinkage)`, see `evidence_id_part`; needs text, IDs,
            a frozen encoder, `warm_items`, `item_counts` and `cold_neighbours` >= 1) or
            `gated` (`g_i * text_i + id_i`, text_i and id_i the parts of `sum`, with a learned
            gate on the item's training interactions n_i, `g_i = sigmoid(a * log(1 + n_i) + b)`,
            a and b trainable scalars initialised at `GATE_INITIAL_A` = 0 and `GATE_INITIAL_B` = 4,
            so every gate starts at 0.982; an item without a trained ID embedding, cold, n_i = 0,
            or dropped by `id_dropout` in training, keeps g = 1 exactly, see `text_gate`; needs
            text, IDs and `item_counts`; any `finetune`).
        id_lr_multiplier: float. the ID embeddings learn this many times faster than
            the other weights: they are stored divided by it (initialised at stddev
            0.02 / m) and multiplied back, and Adam moves a stored coordinate by about
            the learning rate per step whatever its scale. 1: plain embeddings.
        bias: bool. a learned per-item score bias: the output gets one more column,
            `bias_scale * b_item` (a cold item's is the learned no-ID bias), and the user
            towers append a 1, so a dot product adds the bias to the score. Popularity
            then needs no direction of its own in the embedding space.
        bias_scale: float. the bias column's factor: the retrieval temperature, so the
            softmax logit gains exactly `b_item`.
        cold_neighbours: int. outside training, a cold item's ID part is the mix of the
            trained ID embeddings of the `cold_neighbours` warm items whose encoder text
            vectors are nearest to its own (cosine), instead of the no-ID vector; 0: the
            no-ID vector. Computed from the current weights at each call, so it follows
            training and a catalog update's new rows without a table to keep in step. Needs
            a frozen encoder (its cached text vectors).
        cold_popularity: float. the mix weighs each neighbour by `count ** cold_popularity`.
        item_counts: np.ndarray or None. [C+1] training interactions per item, for the mix's
            weights (None: every warm item counts 1) and, with `evidence`, the n_i of `a_i`
            (with `gated`, of `g_i`).
        evidence_shrinkage: float. k of the `evidence` fusion (> 0): an item with k training
            interactions takes half its ID part from its own embedding, half from the mix.
        text_whitening: str. what `text_part` does to the cached text vectors v before the
            dropout and the projection: `none` (nothing), `center` (v - mu) or `whiten`
            ((v - mu) @ W, BERT-whitening), mu [hidden] and W [hidden, hidden] the
            `whitening_statistics` of the warm items' cached vectors (`warm_items`; without
            them, the items with `item_counts` > 0; without either, every item), computed
            when the cache is filled (`refresh_cache`, `refresh_text_statistics`). They are
            non-trainable weights (`text_mean`, `text_whitener`), so a checkpoint, a load
            (`TwoTowerModel.load_towers`) and a catalog update (`grow_into`: new rows are
            transformed with them) keep the statistics the projection was trained on. The
            cold-neighbour cosines (`_nearest_warm`) read the raw vectors. Needs the item
            text and a frozen encoder.
        lora_negative_samples: int. with a `lora` encoder, catalog items drawn uniformly per training
            step whose rows are also recomputed with gradient, scaled so that their gradient
            estimates the whole catalog's (`adapted_table`); 0: the positives only.

    The config carries `token_rows` as a nested list: like a lookup layer's vocabulary,
    the table is constructor data, and `from_config` needs it to rebuild the layer.

    Call args:
        items: tf.Tensor int32. [...] item indices.

    Returns:
        tf.Tensor float32. [..., embedding_dim].
    """

    def __init__(self, encoder, token_rows, embedding_dim: int = 64, use_item_ids: bool = True,
                 dropout: float = 0.1, normalize: bool = True, use_text: bool = True, unique_items: bool = True,
                 trim_padding: bool = True, warm_items=None, id_dropout: float = 0.0, fusion: str = "sum",
                 id_lr_multiplier: float = 1.0, bias: bool = False, bias_scale: float = 1.0,
                 cold_neighbours: int = 0, cold_popularity: float = 1.0, item_counts=None,
                 evidence_shrinkage: float = 10.0, text_whitening: str = "none", lora_negative_samples: int = 128,
                 **kwargs):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
        self.fusion = fusion
        if id_lr_multiplier <= 0:
            raise ValueError(f"id_lr_multiplier must be > 0, got {id_lr_multiplier}")
        self.id_lr_multiplier = float(id_lr_multiplier)
        self.bias = bool(bias)
        self.bias_scale = float(bias_scale)
        self.encoder = encoder
        self.token_rows = np.asarray(token_rows, dtype=np.int32)
        self.num_items = int(self.token_rows.shape[0])
        self.embedding_dim = int(embedding_dim)
        self.use_item_ids = bool(use_item_ids)
        self.dropout = float(dropout)
        self.normalize = bool(normalize)
        self.use_text = bool(use_text)
        if not (self.use_text or self.use_item_ids):
            raise ValueError("an item tower needs text, item IDs or both")
        self.warm_items = None if warm_items is None else np.asarray(warm_items, dtype=bool)
        if self.warm_items is not None and self.warm_items.shape != (self.num_items,):
            raise ValueError(f"warm_items has shape {self.warm_items.shape}, expected ({self.num_items},)")
        self.id_dropout = float(id_dropout)
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {self.id_dropout}")
        self.cold_neighbours = int(cold_neighbours)
        self.cold_popularity = float(cold_popularity)
        if self.cold_neighbours < 0 or self.cold_popularity < 0:
            raise ValueError(f"cold_neighbours and cold_popularity must be >= 0, got {cold_neighbours}, "
                             f"{cold_popularity}")
        self.item_counts = None if item_counts is None else np.asarray(item_counts, dtype=np.float64)
        if self.item_counts is not None and self.item_counts.shape != (self.num_items,):
            raise ValueError(f"item_counts has shape {self.item_counts.shape}, expected ({self.num_items},)")
        # What `cold_id_table` needs from the constructor data, derived once: the warm and cold
        # rows and each warm item's weight in a mix (counts scaled to the largest first, so a
        # large power stays within float32).
        if self.warm_items is not None:
            self._warm_rows = np.flatnonzero(self.warm_items[1:]) + 1
            self._cold_rows = np.flatnonzero(~self.warm_items[1:]) + 1
            counts = np.ones(self.num_items) if self.item_counts is None else np.maximum(self.item_counts, 1.0)
            scaled = counts[self._warm_rows] / counts[self._warm_rows].max() if len(self._warm_rows) else counts[:0]
            self._mix_weights = np.maximum(scaled ** self.cold_popularity, 1e-30).astype(np.float32)
        self._frozen_cold_ids = None  # `freeze_cold_ids`: the table, computed once for a model that no longer trains
        self.evidence_shrinkage = float(evidence_shrinkage)
        if not self.evidence_shrinkage > 0:
            raise ValueError(f"evidence_shrinkage must be > 0, got {evidence_shrinkage}")
        evidence = fusion == "evidence"
        if evidence:
            missing = [what for what, ok in (
                ("the item text", self.use_text), ("item IDs", self.use_item_ids),
                ("a frozen encoder", encoder.is_frozen), ("warm_items", self.warm_items is not None),
                ("item_counts", self.item_counts is not None), ("cold_neighbours >= 1", self.cold_neighbours >= 1),
                ("a warm item", self.warm_items is not None and len(self._warm_rows) > 0)) if not ok]
            if missing:
                raise ValueError(f"fusion 'evidence' shrinks each ID embedding toward the IDs of its frozen-text "
                                 f"neighbours and needs {', '.join(missing)}")
        if fusion == "gated":
            missing = [what for what, ok in (
                ("the item text", self.use_text), ("item IDs", self.use_item_ids),
                ("item_counts", self.item_counts is not None)) if not ok]
            if missing:
                raise ValueError(f"fusion 'gated' scales each item's text part by a learned gate on its training "
                                 f"interactions and needs {', '.join(missing)}")
        if text_whitening not in TEXT_WHITENINGS:
            raise ValueError(f"text_whitening must be one of {', '.join(TEXT_WHITENINGS)}, got {text_whitening!r}")
        self.text_whitening = text_whitening
        if text_whitening != "none" and not (self.use_text and encoder.is_frozen):
            raise ValueError(f"text_whitening {text_whitening!r} transforms the cached frozen-encoder text vectors "
                             f"and needs the item text and a frozen encoder")
        # Output layers stay float32 under a mixed-precision policy (the logits are built from them).
        self.projection = tf.keras.layers.Dense(self.embedding_dim, name="text_projection", dtype="float32")
        self.text_dropout = tf.keras.layers.Dropout(self.dropout)
        balanced = fusion == "balanced" and self.use_text and self.use_item_ids
        self.text_norm = tf.keras.layers.LayerNormalization(name="text_norm", dtype="float32") if balanced else None
        self.id_norm = tf.keras.layers.LayerNormalization(name="id_norm", dtype="float32") if balanced else None
        self.id_embedding = (
            tf.keras.layers.Embedding(self.num_items, self.embedding_dim, name="item_id_embedding",
                                      embeddings_initializer=tf.keras.initializers.TruncatedNormal(
                                          stddev=0.02 / self.id_lr_multiplier),
                                      dtype="float32")
            if self.use_item_ids else None
        )
        # Stands in for the ID embedding of a cold (or ID-dropped) item. It exists whenever
        # cold items can (a catalog update adds some later) and trains when any item is
        # represented without its ID in training.
        # With `evidence` cold (and ID-dropped) items take the mix instead: it never trains.
        has_cold = self.warm_items is not None and not self.warm_items[1:].all()
        self.no_id_embedding = self.add_weight(
            name="no_id_embedding", shape=[self.embedding_dim], initializer="zeros", dtype="float32",
            trainable=bool(has_cold or self.id_dropout > 0) and not evidence,
            experimental_autocast=False,  # added to the float32 ID embeddings, also under mixed precision
        ) if self.use_item_ids and (self.warm_items is not None or self.id_dropout > 0) else None
        self.item_bias = self.add_weight(
            name="item_bias", shape=[self.num_items], initializer="zeros", dtype="float32",
            experimental_autocast=False) if self.bias else None
        self.no_id_bias = self.add_weight(
            name="no_id_bias", shape=[], initializer="zeros", dtype="float32", experimental_autocast=False,
            trainable=bool(self.warm_items is not None and not self.warm_items[1:].all()),
        ) if self.bias and self.warm_items is not None else None
        self.text_cache = self.add_weight(
            name="text_cache", shape=[self.num_items, encoder.hidden_size], trainable=False,
            initializer="zeros",
        ) if encoder.caches_text and use_text else None
        # `lora`: the catalog's token states at the input of the first adapted layer (`prepare_lora`),
        # held outside Keras's tracking (they are no weight: never checkpointed, computed once per run).
        self._lora = _LoraStates() if encoder.finetune == "lora" and use_text else None
        self.lora_negative_samples = int(lora_negative_samples)
        if self.lora_negative_samples < 0:
            raise ValueError(f"lora_negative_samples must be >= 0, got {lora_negative_samples}")
        self._cache_ready = False
        # `center` / `whiten`: mu and W of the warm items' cached vectors (`refresh_text_statistics`),
        # non-trainable so they travel with the checkpoint; float32 also under mixed precision.
        hidden = encoder.hidden_size
        self.text_mean = self.add_weight(
            name="text_mean", shape=[hidden], dtype="float32", initializer="zeros", trainable=False,
            experimental_autocast=False) if text_whitening != "none" else None
        self.text_whitener = self.add_weight(
            name="text_whitener", shape=[hidden, hidden], dtype="float32", initializer="identity", trainable=False,
            experimental_autocast=False) if text_whitening == "whiten" else None
        # `evidence`: each item's `cold_neighbours` neighbours (item rows) and their normalised
        # mix weights, derived from the text cache by `refresh_evidence` (non-trainable: they
        # travel with the checkpoint, consistent with the cache they were computed from), and
        # each item's own share a_i (constructor data: counts and the warm set).
        self.evidence_neighbours = self.evidence_weights = self._evidence_alpha = None
        if evidence:
            width = min(self.cold_neighbours, len(self._warm_rows))
            self.evidence_neighbours = self.add_weight(
                name="evidence_neighbours", shape=[self.num_items, width], dtype="int64", initializer="zeros",
                trainable=False)
            self.evidence_weights = self.add_weight(
                name="evidence_weights", shape=[self.num_items, width], dtype="float32", initializer="zeros",
                trainable=False, experimental_autocast=False)
            counts = np.maximum(self.item_counts, 0.0)
            self._evidence_alpha = np.where(self.warm_items, counts / (counts + self.evidence_shrinkage),
                                            0.0).astype(np.float32)
        # `gated`: the gate's a and b (trainable scalars, float32 also under mixed precision) and
        # each item's log(1 + n_i), 0 where the item has no gate (`text_gate`): a non-trainable
        # per-item table, so it travels with the checkpoint and a catalog update grows it row by
        # row, its new (cold) items' rows 0 (`grow_into`).
        self.fusion_gate_a = self.fusion_gate_b = self.gate_log_counts = None
        if fusion == "gated":
            self.fusion_gate_a = self.add_weight(
                name="fusion_gate_a", shape=[], dtype="float32", trainable=True, experimental_autocast=False,
                initializer=tf.keras.initializers.Constant(GATE_INITIAL_A))
            self.fusion_gate_b = self.add_weight(
                name="fusion_gate_b", shape=[], dtype="float32", trainable=True, experimental_autocast=False,
                initializer=tf.keras.initializers.Constant(GATE_INITIAL_B))
            self.gate_log_counts = self.add_weight(
                name="fusion_gate_log_counts", shape=[self.num_items], dtype="float32", initializer="zeros",
                trainable=False, experimental_autocast=False)
            self.refresh_gate()
        # A trainable encoder runs once per distinct item of a call (a batch of histories
        # repeats popular items and padding), on token rows cut to the longest of those
        # texts. Both give dynamic shapes; the model factory turns them off under XLA.
        self.unique_items = bool(unique_items)
        self.trim_padding = bool(trim_padding)

    def refresh_cache(self, batch_size: int = 64, cache_dir: Optional[str | os.PathLike] = None,
                      vectors: Optional[np.ndarray] = None, verbose: int = 0) -> bool:
        """Encodes every item text with the (frozen) encoder into the cache.

        With `text_whitening`, mu and W are then computed from it (`refresh_text_statistics`):
        a model that a checkpoint fills afterwards (`TwoTowerModel.load_towers`) gets the
        checkpoint's instead.

        Args:
            batch_size: int. items per encoder forward pass.
            cache_dir: path or None. where encoded catalogs are kept between runs, one
                `.npy` per (token rows, encoder weights) digest; a later run of the same
                catalog and encoder (a refresh, a tuning trial) loads instead of encoding.
            vectors: np.ndarray float32 or None. [C+1, hidden] the encoder's vectors, already
                computed by the caller (text tuning computes them from its cached states): used
                (and kept in `cache_dir`) instead of encoding.
            verbose: int. 1: a progress bar while encoding (Keras's convention).

        Returns:
            bool. True when the vectors came from `cache_dir`.
        """
        if self.text_cache is None:
            raise ValueError("refresh_cache needs a frozen (or lora) encoder and use_text=True")
        path = None
        if cache_dir is not None:
            path = Path(cache_dir) / f"{text_cache_key(self.token_rows, self.encoder)}.npy"
            if path.is_file() and vectors is None:
                table = np.load(path)
                if table.shape == tuple(self.text_cache.shape):
                    self.text_cache.assign(table)
                    self._cache_ready = True
                    self.refresh_evidence()
                    self.refresh_text_statistics()
                    logger.info("item text vectors loaded from %s", path)
                    return True
                logger.warning("ignoring %s: shape %s, expected %s", path, table.shape, tuple(self.text_cache.shape))
        if vectors is not None and np.shape(vectors) != tuple(self.text_cache.shape):
            raise ValueError(f"vectors have shape {np.shape(vectors)}, expected {tuple(self.text_cache.shape)}")
        table = (np.array(vectors, np.float32) if vectors is not None
                 else self.encoder.encode_table(self.token_rows, batch_size=batch_size, verbose=verbose))
        table[0] = 0.0
        self.text_cache.assign(table)
        self._cache_ready = True
        self.refresh_evidence()
        self.refresh_text_statistics()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp", delete=False) as handle:
                np.save(handle, table)
            os.replace(handle.name, path)  # readers never see half a file
        return False

    def grow_into(self, target: "ItemTower", encode_rows=(), known_vectors=None) -> int:
        """Copies this tower into `target`, the same tower built on a catalog that appends items.

        Rows of the item tables (ID embeddings, item biases, cached text vectors, `gated`'s
        log counts) are copied
        for this tower's items and left for `target`'s new ones (keras-rs's
        `update_candidates`, for a tower); every other weight is copied whole. The rows in
        `encode_rows` (new or changed texts) are encoded by `target`'s frozen encoder. With
        `evidence`, `target`'s neighbour table is then computed from its whole cache
        (`refresh_evidence`: a changed text moves its item's neighbours and its place among
        the others'), not copied. With `text_whitening`, mu and W are copied, not recomputed:
        the new rows are transformed with the statistics the projection was trained on. With
        `gated`, a and b are copied and the log-count table grows like the other tables: the
        new items' rows are 0, so their gate is 1 (new items are cold, `text_gate`).

        Args:
            target: ItemTower. built with the same options on the longer catalog (this tower's
                items first, in order), its variables created.
            encode_rows: array-like of int. vocabulary indices of `target` whose text is encoded.
            known_vectors: tuple or None. (rows [M] int, vectors [M, hidden] float32): rows of `target`
                whose text this encoder already encoded (a catalog version's), set without encoding.

        Returns:
            int. texts encoded.

        Raises:
            ValueError: `target` is not this tower on a longer catalog.
        """
        if target.num_items < self.num_items:
            raise ValueError(f"the target catalog has {target.num_items} rows, fewer than this tower's {self.num_items}")
        target._frozen_cold_ids = None  # its tables are this tower's from here: cold IDs follow them (`defer_cold_ids`)
        tables = {id(w) for w in (self.text_cache, self.item_bias, self.gate_log_counts,
                                  None if self.id_embedding is None else self.id_embedding.embeddings) if w is not None}
        by_attribute = (self.no_id_embedding, self.no_id_bias)  # trainable only with cold items: moves in the lists
        derived = (self.evidence_neighbours, self.evidence_weights)  # recomputed below, not copied
        skip = {id(w) for w in (*by_attribute, *derived) if w is not None}
        skip_target = {id(w) for w in (target.no_id_embedding, target.no_id_bias, target.evidence_neighbours,
                                       target.evidence_weights) if w is not None}
        mine = [w for w in self.weights if id(w) not in skip]
        theirs = [w for w in target.weights if id(w) not in skip_target]
        if len(mine) != len(theirs):
            raise ValueError(f"the target item tower has {len(theirs)} weights where this one has {len(mine)}")
        pairs = list(zip(mine, theirs))
        for name in ("no_id_embedding", "no_id_bias"):
            a, b = getattr(self, name), getattr(target, name)
            if (a is None) != (b is None):
                raise ValueError("the target item tower was built with other options")
            if a is not None:
                pairs.append((a, b))
        for source, destination in pairs:
            if source is destination:  # an encoder both towers share (a catalog update's)
                continue
            value = source.numpy()
            if id(source) in tables:
                grown = np.zeros(destination.shape, value.dtype.name)
                grown[: self.num_items] = value
                value = grown
            elif tuple(source.shape) != tuple(destination.shape):
                raise ValueError(f"weight {source.name}: shape {source.shape} here, {destination.shape} in the target")
            destination.assign(value)
        encode_rows = np.asarray(encode_rows, dtype=np.int64).reshape(-1)
        if target.text_cache is not None and known_vectors is not None and len(known_vectors[0]):
            rows = np.asarray(known_vectors[0], np.int64).reshape(-1)
            target.text_cache.scatter_nd_update(rows[:, None], np.asarray(known_vectors[1], np.float32))
        if target.text_cache is None or not len(encode_rows):
            target.refresh_evidence()
            return 0
        vectors = target.encoder.encode_table(target.token_rows[encode_rows])
        target.text_cache.scatter_nd_update(encode_rows[:, None], vectors)
        target._cache_ready = True
        target.refresh_evidence()
        return int(len(encode_rows))

    @property
    def adapts_text(self) -> bool:
        """Whether the text encoder trains through `lora` adapters over cached lower states."""
        return self._lora is not None

    def prepare_lora(self, batch_size: int = 64) -> None:
        """`lora`: computes every item's token states at the input of the first adapted layer, once.

        The layers below are frozen, so the states never change; a step (`adapted_table`) and a
        refresh of the table (`refresh_adapted_table`) run only the adapted top layers over them.
        Rows are trimmed to the longest text. Memory: [C+1, longest, hidden] float32 (MiniLM on
        MovieLens-100K: 1,683 x 34 x 384, 88 MB).
        """
        from tfrec_lm.models.text_tuning import lower_states

        if self._lora is None:
            raise ValueError("prepare_lora needs --finetune lora and the item text")
        if self._lora.ready:
            return
        states, mask = lower_states(self.encoder, self.token_rows, self.encoder.first_adapted_layer,
                                    batch_size=batch_size)
        self._lora.states = tf.Variable(states, trainable=False, name="lora_lower_states")
        self._lora.mask = tf.Variable(mask, trainable=False, name="lora_lower_mask")
        self._lora.lengths = mask.sum(axis=1)

    def lora_top(self):
        """`lora`: the adapted top layers and mean pooling over cached states (`text_tuning._TopLayers`)."""
        from tfrec_lm.models.text_tuning import _TopLayers

        if self._lora.top is None:
            self._lora.top = _TopLayers(self.encoder, self.encoder.trainable_layers)
        return self._lora.top

    def refresh_adapted_table(self, chunk_rows: int = 256) -> None:
        """`lora`: recomputes every item's text vector in `text_cache` from the adapted top layers.

        Rows go shortest first in chunks of `chunk_rows`, each cut to its own longest text, through
        one traced function. Row 0 (padding) stays zeros. Also what a frozen-equivalent cache is at
        step 0 (B = 0).
        """
        self.prepare_lora()
        lora = self._lora
        if lora.refresh is None:
            top = self.lora_top()
            hidden = self.encoder.hidden_size
            lora.refresh = tf.function(lambda states, mask: top(states, mask, training=False), input_signature=[
                tf.TensorSpec([None, None, hidden], tf.float32), tf.TensorSpec([None, None], tf.int32)])
        order = np.argsort(lora.lengths, kind="stable")
        table = np.zeros(tuple(self.text_cache.shape), np.float32)
        for start in range(0, len(order), chunk_rows):
            rows = order[start:start + chunk_rows]
            width = max(1, int(lora.lengths[rows].max()))
            table[rows] = lora.refresh(tf.gather(lora.states, rows)[:, :width],
                                       tf.gather(lora.mask, rows)[:, :width]).numpy()
        table[0] = 0.0
        self.text_cache.assign(table)
        self._cache_ready = True

    def adapted_table(self, fresh_items):
        """`lora` in a training step: `text_cache` with the rows of `fresh_items` recomputed with gradient.

        The distinct items, and `lora_negative_samples` catalog items drawn uniformly (S, those
        not among them), run through the adapted top layers (dropout off, as for the table)
        over their cached states, shortest first in two halves each cut to its longest text,
        and replace their (stale) rows; every other row is the table as the last refresh left
        it, a constant of the step. A sampled row's value is its fresh vector, its gradient
        scaled by (C - P) / |S| (C catalog items, P positives): the softmax's gradient through
        the negatives is then estimated over the whole catalog, not dropped. Without it the
        adapters learn to raise whatever is recomputed (the positives) against the stale rows:
        on ML-100K, 60 steps gave a lower training loss than frozen's (5.2 against 7.2) and a
        validation NDCG@10 of 0.010 against 0.036.

        Args:
            fresh_items: tf.Tensor int. [...] items recomputed (the batch's positives).

        Returns:
            tf.Tensor float32. [C+1, hidden].
        """
        lora = self._lora
        if not lora.ready:
            raise ValueError("a lora training step needs the catalog's lower states: call prepare_lora first")
        positives, _ = tf.unique(tf.reshape(tf.cast(fresh_items, tf.int32), [-1]))
        items = positives
        if self.lora_negative_samples:
            drawn = tf.random.uniform([self.lora_negative_samples], 1, self.num_items, tf.int32)
            items, _ = tf.unique(tf.concat([positives, drawn], axis=0))
        # Shortest texts first, in two halves each cut to its own longest text (as text tuning
        # does): the short titles' half does not pay for the long ones' padding.
        items = tf.gather(items, tf.argsort(tf.gather(tf.constant(lora.lengths, tf.int32), items), stable=True))
        half = tf.size(items) // 2
        fresh = []
        for part in (items[:half], items[half:]):
            mask = tf.gather(lora.mask, part)
            width = tf.maximum(tf.reduce_max(tf.reduce_sum(mask, axis=1)), 1)
            fresh.append(self.lora_top()(tf.gather(lora.states, part)[:, :width], mask[:, :width], training=False))
        fresh = tf.concat(fresh, axis=0)
        if self.lora_negative_samples:
            positive = tf.reduce_any(tf.equal(items[:, None], positives[None, :]), axis=1)
            sampled = tf.reduce_sum(tf.cast(tf.logical_not(positive), tf.float32))
            others = tf.cast(self.num_items - 1 - tf.size(positives), tf.float32)
            scale = tf.where(positive, 1.0, others / tf.maximum(sampled, 1.0))[:, None]
            fresh = tf.stop_gradient(fresh) + scale * (fresh - tf.stop_gradient(fresh))
        return tf.tensor_scatter_nd_update(tf.stop_gradient(tf.convert_to_tensor(self.text_cache)), items[:, None],
                                           tf.cast(fresh, self.text_cache.dtype))

    def text_vectors(self, items, training=False, fresh_items=None):
        """Pooled encoder vectors of items. [..., hidden_size].

        Args:
            items: tf.Tensor int. [...] item indices.
            training: bool. training mode (a trainable encoder's dropout).
            fresh_items: tf.Tensor int or None. `lora` in training: these items' vectors are
                recomputed with gradient (`adapted_table`), the others read from the table.
        """
        items = tf.cast(items, tf.int32)
        if self.text_cache is not None:
            if fresh_items is not None and training and self._lora is not None:
                return tf.gather(self.adapted_table(fresh_items), items)
            return tf.gather(self.text_cache, items)
        flat = tf.reshape(items, [-1])
        if self.unique_items:
            flat, position = tf.unique(flat)
        ids = tf.gather(tf.constant(self.token_rows), flat)
        mask = tf.cast(ids != 0, tf.int32)
        if self.trim_padding:
            width = tf.reduce_max(tf.reduce_sum(mask, axis=1))
            ids, mask = ids[:, :width], mask[:, :width]
        pooled = self.encoder(ids, mask, training=training)
        if self.unique_items:
            pooled = tf.gather(pooled, position)
        return tf.reshape(pooled, tf.concat([tf.shape(items), [self.encoder.hidden_size]], axis=0))

    def text_part(self, items, training=False, fresh_items=None):
        """The text's share of `representation`: the projected (and, balanced, normalised) text vector.

        With `text_whitening` the text vectors are centred (and whitened, `whiten_text`) first.

        Returns:
            tf.Tensor float32 or None. [..., embedding_dim]; None without text.
        """
        if not self.use_text:
            return None
        text = self.text_vectors(items, training=training, fresh_items=fresh_items)
        if self.text_mean is not None:
            text = self.whiten_text(text)
        text = self.text_dropout(text, training=training)
        vectors = self.projection(text)
        return _norm_last_axis(self.text_norm, vectors) if self.text_norm is not None else vectors

    def whiten_text(self, vectors):
        """`center`: v - mu; `whiten`: (v - mu) @ W (`text_whitening`). float [..., hidden] -> float32 [..., hidden]."""
        centred = tf.cast(vectors, tf.float32) - self.text_mean
        if self.text_whitener is None:
            return centred
        return tf.einsum("...h,hk->...k", centred, self.text_whitener)

    def _statistics_rows(self) -> np.ndarray:
        """The rows `text_whitening`'s statistics are computed from: warm items (see its Args). int64 [R]."""
        if self.warm_items is not None:
            return self._warm_rows
        if self.item_counts is not None and (self.item_counts[1:] > 0).any():
            return np.flatnonzero(self.item_counts[1:] > 0) + 1
        return np.arange(1, self.num_items)

    def refresh_text_statistics(self) -> None:
        """Computes `text_whitening`'s mu (and W) from the text cache (nothing with `none`).

        `whitening_statistics` of the cached vectors of `_statistics_rows` (the warm items)
        into `text_mean` and `text_whitener`, and logs `text_cosines`. Called when the cache
        is filled (`refresh_cache`); never by `grow_into` or `TwoTowerModel.load_towers`,
        which keep the trained statistics. After writing `text_cache` directly, call it
        again. Memory: the rows' vectors in float32 once, a chunk of them in float64.
        """
        if self.text_mean is None:
            return
        rows = self._statistics_rows()
        if not len(rows):
            raise ValueError(f"text_whitening {self.text_whitening!r} computes its statistics from the warm items' "
                             f"text vectors and needs a warm item")
        if len(rows) <= self.encoder.hidden_size and self.text_whitener is not None:
            logger.warning("text whitening: %d training items span at most %d of %d dimensions; the others are "
                           "scaled by up to 1/sqrt(%g) of the largest variance", len(rows), max(len(rows) - 1, 0),
                           self.encoder.hidden_size, WHITENING_EPS)
        vectors = tf.gather(self.text_cache, tf.constant(rows, tf.int64)).numpy()
        mean, whitener = whitening_statistics(vectors, whiten=self.text_whitener is not None)
        self.text_mean.assign(mean)
        if whitener is not None:
            self.text_whitener.assign(whitener)
        if len(rows) < 2:
            return
        before, after = self.text_cosines()
        logger.info("text %s over %d training items: mean pairwise cosine %.4f before, %.4f after",
                    self.text_whitening, len(rows), before, after)

    def text_cosines(self) -> tuple:
        """The mean pairwise cosine (`mean_pairwise_cosine`) of the warm items' cached text vectors, as
        they are and as `text_part` projects them (after `whiten_text`; the same without `text_whitening`).

        Returns:
            tuple (float, float). before and after (the rows of `_statistics_rows`, at least 2).
        """
        if self.text_cache is None:
            raise ValueError("text_cosines needs a frozen encoder and use_text=True")
        vectors = tf.gather(self.text_cache, tf.constant(self._statistics_rows(), tf.int64))
        before = mean_pairwise_cosine(vectors.numpy())
        if self.text_mean is None:
            return before, before
        return before, mean_pairwise_cosine(self.whiten_text(vectors).numpy())

    def id_part(self, items, training=False, use=None):
        """The ID's share of `representation`: the ID embedding, or the no-ID vector where an item
        is cold (or dropped in training); normalised when balanced; with `evidence`,
        `evidence_id_part`.

        Args:
            items: tf.Tensor int. [...] item indices.
            training: bool. whether `id_dropout` may drop items.
            use: tf.Tensor bool or None. [...] `uses_id(items, training)`, drawn once by the
                caller (`gated` reads the same draw for its gate); None: drawn here.

        Returns:
            tf.Tensor float32 or None. [..., embedding_dim]; None without IDs.
        """
        if self.id_embedding is None:
            return None
        items = tf.cast(items, tf.int32)
        ids = self.id_embedding(items)
        if self.id_lr_multiplier != 1.0:
            ids = ids * self.id_lr_multiplier
        if self.fusion == "evidence":
            return self.evidence_id_part(items, ids, training=training)
        if self.no_id_embedding is not None:
            cold = self.no_id_embedding
            if not training and self.imputes_cold_ids:
                table = self._frozen_cold_ids if self._frozen_cold_ids is not None else self.cold_id_table()
                cold = tf.gather(table, items)
            use = self.uses_id(items, training=training) if use is None else use
            ids = tf.where(use[..., None], ids, cold)
        return _norm_last_axis(self.id_norm, ids) if self.id_norm is not None else ids

    def evidence_id_part(self, items, ids, training=False):
        """The `evidence` fusion's ID part: each item's ID shrunk toward its text neighbours' by its evidence.

        `a_i * id_i + (1 - a_i) * mix_i`, with n_i the item's training interactions,
        `a_i = n_i / (n_i + evidence_shrinkage)` for a warm item and 0 for a cold one (or, in
        training, one dropped by `id_dropout`), and `mix_i = sum_j w_ij * id_j` over the
        `evidence_neighbours` of i: its `cold_neighbours` nearest warm items by cosine of the
        frozen text vectors, itself left out, weighted as `cold_id_table` weighs them (a cold
        item's mix is its `cold_id_table` row). The same in training and outside it, so the
        gradient reaches id_i scaled by a_i and each neighbour's id_j by (1 - a_i) * w_ij.
        An item whose only warm item is itself keeps its own ID as its mix.

        Args:
            items: tf.Tensor int32. [...] item indices.
            ids: tf.Tensor float32. [..., embedding_dim] their ID embeddings (times `id_lr_multiplier`).
            training: bool. whether `id_dropout` may drop items.

        Returns:
            tf.Tensor float32. [..., embedding_dim].
        """
        neighbours = tf.gather(self.evidence_neighbours, items)  # [..., K] item rows
        weights = tf.gather(self.evidence_weights, items)  # [..., K]
        mixed = tf.reduce_sum(weights[..., None] * self.id_embedding(neighbours), axis=-2)
        if self.id_lr_multiplier != 1.0:
            mixed = mixed * self.id_lr_multiplier
        alpha = tf.gather(tf.constant(self._evidence_alpha), items)
        alpha = tf.where(self.uses_id(items, training=training), alpha, tf.zeros_like(alpha))[..., None]
        return alpha * ids + (1.0 - alpha) * mixed

    def refresh_evidence(self, chunk_rows: Optional[int] = None) -> None:
        """Computes the `evidence` neighbour table from the text cache (nothing without `evidence`).

        Every item's `cold_neighbours` nearest warm items (itself excluded) by cosine of the
        cached text vectors, a chunk of rows at a time as `cold_id_table` finds them
        (`_nearest_warm`), and their normalised mix weights, into `evidence_neighbours` and
        `evidence_weights`. Called whenever the cache is filled (`refresh_cache`, `grow_into`)
        and after a checkpoint of another run is loaded (`TwoTowerModel.load_towers`); after
        writing `text_cache` directly, call it again. Memory: [chunk x warm] cosines and
        [C+1 x K] results; compute: C x warm x hidden, once.

        Args:
            chunk_rows: int or None. rows per chunk; None: `cold_chunk_rows(warm)`.
        """
        if self.fusion != "evidence":
            return
        warm_rows = self._warm_rows
        width = int(self.evidence_neighbours.shape[1])
        rows = np.arange(1, self.num_items)
        nearest = self._nearest_warm(rows, width, chunk_rows=chunk_rows, exclude_self=True).numpy()
        neighbours = warm_rows[nearest]  # [C, K] item rows
        weights = self._mix_weights[nearest]
        weights[neighbours == rows[:, None]] = 0.0  # a lone warm item's only candidate is itself
        totals = weights.sum(axis=1, keepdims=True)
        alone = totals[:, 0] == 0
        weights[alone] = (neighbours[alone] == rows[alone, None]).astype(np.float32)
        weights = weights / weights.sum(axis=1, keepdims=True)
        self.evidence_neighbours.assign(np.concatenate([np.zeros([1, width], np.int64), neighbours]))
        self.evidence_weights.assign(np.concatenate([np.zeros([1, width], np.float32), weights]).astype(np.float32))

    def _nearest_warm(self, rows, k: int, chunk_rows: Optional[int] = None, exclude_self: bool = False):
        """The k warm items whose cached text vectors have the highest cosine with each row's.

        The raw vectors, also with `text_whitening`: the neighbours of the cold path and of
        `evidence` are those the model had before the option (and a catalog update's new
        items find them without the statistics).

        The [rows x warm] cosines are computed and reduced to their top-k a chunk of rows at a
        time (`cold_chunk_rows`; one `tf.map_fn` iteration each, in eager and in graph mode
        alike), so memory is [chunk x warm] floats; each row's neighbours are those of the
        whole matrix.

        Args:
            rows: np.ndarray int. [R] item rows, R >= 1.
            k: int. neighbours per row, at most the warm items.
            chunk_rows: int or None. rows per chunk; None: `cold_chunk_rows(warm)`.
            exclude_self: bool. a row's own column (a warm row) ranks last.

        Returns:
            tf.Tensor int32. [R, k] positions in `_warm_rows`, nearest first.
        """
        warm_rows = self._warm_rows
        warm_text = tf.math.l2_normalize(self.text_vectors(tf.constant(warm_rows, tf.int32)), axis=-1)  # [W, h]
        chunk = int(chunk_rows) if chunk_rows is not None else cold_chunk_rows(len(warm_rows))
        chunk = max(1, min(chunk, len(rows)))
        chunks = -(-len(rows) // chunk)
        # The last chunk is padded with the first row; the padded rows' neighbours are dropped.
        padded = np.full(chunks * chunk, rows[0], np.int32)
        padded[: len(rows)] = rows

        def nearest_of(chunk_of_rows):  # int32 [chunk] -> int32 [chunk, k] positions in warm_rows
            text = tf.math.l2_normalize(self.text_vectors(chunk_of_rows), axis=-1)
            similarity = tf.matmul(text, warm_text, transpose_b=True)  # [chunk, W]
            if exclude_self:
                own = tf.equal(chunk_of_rows[:, None], tf.constant(warm_rows, tf.int32)[None, :])
                similarity = tf.where(own, tf.fill(tf.shape(similarity), -np.inf), similarity)
            return tf.math.top_k(similarity, k=k).indices

        nearest = tf.map_fn(nearest_of, tf.constant(padded.reshape(chunks, chunk)), parallel_iterations=1,
                            fn_output_signature=tf.TensorSpec([chunk, k], tf.int32))
        return tf.reshape(nearest, [chunks * chunk, k])[: len(rows)]

    @property
    def imputes_cold_ids(self) -> bool:
        """Whether cold items take their ID part from text neighbours (`cold_neighbours`) outside training
        (with `evidence` they do in training too, through `evidence_id_part`)."""
        return bool(self.cold_neighbours and self.text_cache is not None and self.no_id_embedding is not None
                    and self.warm_items is not None and len(self._warm_rows) and len(self._cold_rows))

    def freeze_cold_ids(self) -> None:
        """Computes `cold_id_table` once and serves it from then on (a catalog update: nothing trains).

        The table is [cold x warm] cosines in compute; a catalog update reads the item
        representations four times (fold-in, its audience map, the popularity calibration,
        the export), each of which would recompute it. After this call a change of the ID
        embeddings no longer reaches the cold items, so only a model that will not train
        again may be frozen.
        """
        self._frozen_cold_ids = (tf.constant(self.cold_id_table()) if self.imputes_cold_ids
                                 and self.fusion != "evidence" else None)  # evidence: `refresh_evidence` did

    def defer_cold_ids(self) -> None:
        """Serves a zero cold-ID table until `freeze_cold_ids` (a catalog update's models while they are built).

        Creating a model's variables runs it once, and outside training every call computes
        `cold_id_table` from the ID embeddings, which at that point are not loaded yet: the
        mix would be thrown away. A catalog update builds two models (the trained one and the
        grown one), so this saves two of those tables; the grown model's is computed by
        `freeze_cold_ids` once its tables are grown.
        """
        if self.imputes_cold_ids and self.fusion != "evidence":
            self._frozen_cold_ids = tf.zeros([self.num_items, self.embedding_dim], tf.float32)

    def cold_id_table(self, chunk_rows: Optional[int] = None):
        """Every cold item's ID part taken from its text neighbours; zero rows for the other items.

        For a cold item c, with N(c) the `cold_neighbours` warm items whose encoder text
        vectors (the frozen encoder's cache) have the highest cosine with c's, and n_j each
        one's training interactions: `sum_j w_j * id_j` over N(c), `w_j = n_j ** p / sum n ** p`
        with p = `cold_popularity`. An item that reads like the catalog's most consumed
        items takes after their collaborative vectors (the no-ID vector would leave it
        without any), so it can compete with warm items in a top-k.

        The [cold x warm] cosines are computed and reduced to their top-k a chunk of cold
        rows at a time (`_nearest_warm`), so memory is [chunk x warm] floats, not
        [cold x warm]; each row's neighbours are those of the whole matrix. The compute is
        still cold x warm x hidden.

        Args:
            chunk_rows: int or None. cold rows per chunk; None: `cold_chunk_rows(warm)`.

        Returns:
            tf.Tensor float32. [C+1, embedding_dim].
        """
        warm_rows, cold_rows = self._warm_rows, self._cold_rows
        k = min(self.cold_neighbours, len(warm_rows))
        weights = tf.constant(self._mix_weights)
        nearest = self._nearest_warm(cold_rows, k, chunk_rows=chunk_rows)  # [cold, k]
        mix = tf.gather(weights, nearest)
        mix = mix / tf.reduce_sum(mix, axis=-1, keepdims=True)
        ids = tf.gather(self.id_embedding.embeddings, tf.gather(tf.constant(warm_rows, tf.int32), nearest))
        if self.id_lr_multiplier != 1.0:
            ids = ids * self.id_lr_multiplier
        imputed = tf.einsum("ck,ckd->cd", mix, ids)
        return tf.scatter_nd(tf.constant(cold_rows[:, None], tf.int32), imputed,
                             [self.num_items, self.embedding_dim])

    def representation(self, items, training=False, fresh_items=None):
        """Unnormalised item vectors, also the user tower's history inputs. [..., embedding_dim].

        The text part plus the ID part; with `gated`, the text part times `text_gate` (one
        `id_dropout` draw for both, so a dropped item is its text and the no-ID vector, g = 1).
        `fresh_items` (int [...] or None): with `lora` in training, the items whose text vectors
        are recomputed with gradient (`text_vectors`).
        """
        if self.fusion == "gated":
            items = tf.cast(items, tf.int32)
            use = self.uses_id(items, training=training)
            text = self.text_part(items, training=training, fresh_items=fresh_items)
            return self.text_gate(items, use=use)[..., None] * text + self.id_part(items, training=training, use=use)
        parts = [part for part in (self.text_part(items, training=training, fresh_items=fresh_items),
                                   self.id_part(items, training=training))
                 if part is not None]
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def gate_log_count_table(self) -> np.ndarray:
        """`gated`'s per-item log(1 + n_i) from the constructor data: 0 where the item gets no gate.

        An item gets a gate when it has a trained ID embedding, that is when it is warm
        (`warm_items`; None: every item) and n_i > 0 (`item_counts`); the padding row never.

        Returns:
            np.ndarray float32. [C+1].
        """
        counts = np.maximum(self.item_counts, 0.0)
        warm = np.ones(self.num_items, bool) if self.warm_items is None else self.warm_items.copy()
        warm[0] = False
        return np.where(warm & (counts > 0), np.log1p(counts), 0.0).astype(np.float32)

    def refresh_gate(self) -> None:
        """Sets `gated`'s log-count table from this tower's `item_counts` and `warm_items` (nothing without `gated`).

        Called by the constructor and after a checkpoint is loaded (`TwoTowerModel.load_towers`:
        a warm start's data may have other counts; a and b stay the checkpoint's). Never by
        `grow_into`, which copies the trained rows and leaves the new items' at 0.
        """
        if self.gate_log_counts is not None:
            self.gate_log_counts.assign(self.gate_log_count_table())

    def text_gate(self, items, use=None):
        """`gated`'s factor on each item's text part: `sigmoid(a * log(1 + n) + b)`, or exactly 1.

        1 where the item has no trained ID embedding (its text is all it has): a cold item,
        one with n = 0, a catalog update's new item (its `gate_log_counts` row is 0) and, in
        training, a warm item that `id_dropout` drops (`use` False). So the cold paths
        (`cold_neighbours` mixes, catalog updates, fold-in) see the item as under `sum`.

        Args:
            items: tf.Tensor int. [...] item indices.
            use: tf.Tensor bool or None. [...] `uses_id` of the items (None: the warm items).

        Returns:
            tf.Tensor float32. [...] g (all ones without `gated`).
        """
        items = tf.cast(items, tf.int32)
        if self.gate_log_counts is None:
            return tf.ones(tf.shape(items), tf.float32)
        log_counts = tf.gather(self.gate_log_counts, items)
        gated = tf.math.sigmoid(self.fusion_gate_a * log_counts + self.fusion_gate_b)
        has_gate = log_counts > 0
        if use is not None:
            has_gate = tf.logical_and(has_gate, use)
        return tf.where(has_gate, gated, tf.ones_like(gated))

    def fusion_gate(self) -> Optional[dict]:
        """`gated`'s learned a and b and the gate they give at n = 1, 10 and 100 training interactions.

        Returns:
            dict or None. {"a", "b", "g_at_1", "g_at_10", "g_at_100"} floats; None without `gated`.
        """
        if self.fusion_gate_a is None:
            return None
        a, b = float(self.fusion_gate_a.numpy()), float(self.fusion_gate_b.numpy())
        out = {"a": a, "b": b}
        for n in (1, 10, 100):
            out[f"g_at_{n}"] = float(1.0 / (1.0 + np.exp(-(a * np.log1p(n) + b))))
        return out

    def uses_id(self, items, training=False):
        """Whether each item is represented with its ID embedding. int32 [...] -> bool [...].

        False for cold items and, in training, for warm items dropped by `id_dropout`.
        """
        use = (tf.gather(tf.constant(self.warm_items), items) if self.warm_items is not None
               else tf.ones_like(items, dtype=tf.bool))
        if training and self.id_dropout > 0:
            use = tf.logical_and(use, tf.random.uniform(tf.shape(items)) >= self.id_dropout)
        return use

    def negative_mask(self):
        """Which catalog items may serve as softmax negatives. bool [C] for items 1..C.

        Cold items are left out: never a positive, they would only ever be pushed away and
        end below every warm item, whatever their text says.
        """
        if self.warm_items is None:
            return tf.ones([self.num_items - 1], tf.bool)
        return tf.constant(self.warm_items[1:])

    def bias_of(self, items):
        """Each item's score bias (cold items: the no-ID bias). int32 [...] -> float32 [...]."""
        items = tf.cast(items, tf.int32)
        bias = tf.gather(self.item_bias, items)
        if self.no_id_bias is not None:
            bias = tf.where(tf.gather(tf.constant(self.warm_items), items), bias, self.no_id_bias)
        return bias

    def finalize(self, vectors, items=None):
        """Turns representations into output embeddings (L2-normalised when `normalize`).

        Args:
            vectors: tf.Tensor float32. [..., embedding_dim] `representation` of `items`.
            items: tf.Tensor int32 or None. [...] the items (needed with `bias`).

        Returns:
            tf.Tensor float32. [..., output_dim].
        """
        out = tf.math.l2_normalize(vectors, axis=-1) if self.normalize else vectors
        if not self.bias:
            return out
        if items is None:
            raise ValueError("an item tower with a bias needs the items to finalize their vectors")
        return tf.concat([out, self.bias_scale * self.bias_of(items)[..., None]], axis=-1)

    def call(self, items, training=False):
        return self.finalize(self.representation(items, training=training), items)

    def get_config(self):
        config = super().get_config()
        config.update({
            "encoder": tf.keras.layers.serialize(self.encoder),
            "token_rows": self.token_rows.tolist(),
            "embedding_dim": self.embedding_dim,
            "use_item_ids": self.use_item_ids,
            "dropout": self.dropout,
            "normalize": self.normalize,
            "use_text": self.use_text,
            "unique_items": self.unique_items,
            "trim_padding": self.trim_padding,
            "warm_items": None if self.warm_items is None else self.warm_items.tolist(),
            "id_dropout": self.id_dropout,
            "fusion": self.fusion,
            "id_lr_multiplier": self.id_lr_multiplier,
            "bias": self.bias,
            "bias_scale": self.bias_scale,
            "cold_neighbours": self.cold_neighbours,
            "cold_popularity": self.cold_popularity,
            "item_counts": None if self.item_counts is None else self.item_counts.tolist(),
            "evidence_shrinkage": self.evidence_shrinkage,
            "text_whitening": self.text_whitening,
            "lora_negative_samples": self.lora_negative_samples,
        })
        return config

    @classmethod
    def from_config(cls, config):
        from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
        from tfrec_lm.layers.exported_text_encoder import ExportedTextEncoder

        config = dict(config)
        encoders = {"ExportedTextEncoder": ExportedTextEncoder}
        encoder_class = encoders.get(config["encoder"]["class_name"].rsplit(">", 1)[-1], BertTextEncoder)
        config["encoder"] = encoder_class.from_config(config["encoder"]["config"])
        return cls(**config)
