"""`ServingModule`: the exported graph of SPEC §3 (lookup, user tower, top-k index, exclusion, fallback)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_lm.evaluation.popularity import most_popular
from tfrec_lm.index import make_index
from tfrec_lm.layers.history_ops import in_sorted_rows

LOWEST_SCORE = float(np.finfo(np.float32).min)


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
        item_representations: np.ndarray float32 or None. [C+1, D] item representations to serve
            instead of the item tower's (a fold-in, `tfrec_lm.catalog.fold_in`): the item vectors are
            their `finalize`, and the item-sequence user tower reads them in histories.
        item_offsets: np.ndarray float32 or None. [C+1] a score offset per item, added to every
            user's score (`tfrec_lm.catalog.popularity`): one more column of the item embeddings,
            and a constant 1 appended to every query, so the index and `rank` add it alike.
    """

    def __init__(self, model, item_ids, counts, top_k: int = 10, index: str = "scann", retired=None,
                 item_representations=None, item_offsets=None):
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
        if item_representations is None:
            embeddings = model.item_tower(everything, training=False).numpy()
        else:
            item_representations = np.asarray(item_representations, np.float32)
            embeddings = model.item_tower.finalize(tf.constant(item_representations), everything).numpy()
        embeddings[0] = 0.0
        self.offset_column = item_offsets is not None
        self.model_width = int(embeddings.shape[1])  # what the ranking head reads: the offset column is not the model's
        if self.offset_column:
            item_offsets = np.asarray(item_offsets, np.float32).reshape(-1)
            if item_offsets.shape[0] != num_items or not np.isfinite(item_offsets).all():
                raise ValueError(f"item_offsets must be {num_items} finite numbers, got {item_offsets.shape[0]}")
            embeddings = np.concatenate([embeddings, item_offsets[:, None]], axis=1)
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
        if item_representations is not None and hasattr(self.user_tower, "item_representations"):
            self.user_tower.item_representations.assign(item_representations)
        self.ranking_head = model.ranking_head
        self.index = make_index(index, embeddings, self.top_k, servable)
        self.index_kind = index

    # `_users` and `_recommend` are functions of their own, traced once and called by the
    # signatures: `tf.saved_model.save` traces the user tower once instead of three times, and
    # the SavedModel holds one copy of it (a smaller graph, faster to load).
    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None], tf.int32),
                                                   tf.TensorSpec([None, None], tf.int64)])
    def _users(self, history, timestamps):
        users = self.user_tower(history, timestamps, training=False)
        if self.offset_column:
            users = tf.concat([users, tf.ones_like(users[:, :1])], axis=1)
        return users

    def _lookup(self, item_ids):
        return self.lookup.lookup(tf.strings.strip(item_ids))

    @tf.function(autograph=False, input_signature=[tf.TensorSpec([None, None], tf.int32),
                                                   tf.TensorSpec([None, None], tf.int64)])
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

    @tf.function(autograph=False,  # no tensor-dependent Python control flow: tracing skips the AST rewrite
                 input_signature=[tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
                                  tf.TensorSpec([None, None], tf.int64, name="history_timestamps")])
    def retrieve(self, history_item_ids, history_timestamps):
        """Top-K items per user, none from the history; popular items without history."""
        items, scores = self._recommend(self._lookup(history_item_ids), history_timestamps)
        return {"item_ids": tf.ensure_shape(tf.gather(self.item_ids, items), [None, self.top_k]),
                "scores": tf.ensure_shape(scores, [None, self.top_k])}

    @tf.function(autograph=False,  # no tensor-dependent Python control flow: tracing skips the AST rewrite
                 input_signature=[tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
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

    @tf.function(autograph=False,  # no tensor-dependent Python control flow: tracing skips the AST rewrite
                 input_signature=[tf.TensorSpec([None, None], tf.string, name="history_item_ids"),
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
        width = self.model_width
        tiled = tf.tile(users[:, None, :width], [1, tf.shape(candidates)[1], 1])
        ratings = tf.squeeze(self.ranking_head(tf.concat([tiled, vectors[..., :width]], axis=-1)), axis=-1)
        return {"scores": scores, "predicted_ratings": ratings}
