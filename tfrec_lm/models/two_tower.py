"""`TwoTowerModel`: user and item towers trained by TFRS retrieval and ranking tasks."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_lm.layers.catalog_top_k import CatalogTopK
from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower


class TwoTowerModel(tfrs.Model):
    """Towers plus tasks.

    Args:
        user_tower: tf.keras.layers.Layer. [B, N] history indices -> [B, D].
        item_tower: tfrec_lm.models.ItemTower. [B] item indices -> [B, D].
        negatives: str. `catalog`: exact softmax over every item (positives
            concatenated before the catalog, each row's own catalog copy masked
            by `score_mask`); `in-batch`: the batch's items with log-Q correction.
        temperature: float. retrieval softmax temperature.
        retrieval_weight: float. weight of the retrieval loss.
        ranking_weight: float. weight of the rating regression loss.
        item_probability: np.ndarray. [C+1] sampling probability of each item as
            an in-batch negative (its share of training targets), for log-Q.
        metrics_k: tuple of int. k values of the FactorizedTopK metrics.

    Features (dict):
        history: int32 [B, N]; history_timestamps: int64 [B, N] (optional; needed by a
        user tower with time features); target: int32 [B]; rating: float32 [B] (NaN if unknown).
    """

    def __init__(self, user_tower, item_tower, negatives: str = "catalog", temperature: float = 0.05,
                 retrieval_weight: float = 1.0, ranking_weight: float = 0.1, item_probability=None,
                 metrics_k=(10, 50), **kwargs):
        super().__init__(**kwargs)
        ks = [k for k in metrics_k if k < item_tower.num_items - 1] or [1]
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.negatives = negatives
        self.retrieval_weight = float(retrieval_weight)
        self.ranking_weight = float(ranking_weight)
        self.retrieval_task = tfrs.tasks.Retrieval(
            loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
            temperature=temperature,
            remove_accidental_hits=negatives == "in-batch",
            metrics=tfrs.metrics.FactorizedTopK(CatalogTopK(item_tower, k=max(ks)), ks=ks),
        )
        self.ranking_head = tf.keras.Sequential(
            [tf.keras.layers.Dense(64, activation="relu"), tf.keras.layers.Dense(1)], name="ranking_head"
        )
        self.ranking_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(), metrics=[tf.keras.metrics.RootMeanSquaredError("rmse")]
        )
        if item_probability is None:
            item_probability = np.ones(item_tower.num_items, dtype=np.float32) / item_tower.num_items
        self.item_probability = tf.constant(np.maximum(np.asarray(item_probability, np.float32), 1e-8))

    def train_step(self, data):
        # The FactorizedTopK metrics are computed on evaluation only; hide their stale
        # zeros from the training logs.
        logs = super().train_step(data)
        return {name: value for name, value in logs.items() if not name.startswith("factorized_top_k")}

    def call(self, features, training=False):
        """Returns (user embeddings [B, D], target item embeddings [B, D])."""
        return (self.user_tower(features["history"], features.get("history_timestamps"), training=training),
                self.item_tower(features["target"], training=training))

    @tf.function(reduce_retracing=True)
    def embed_users(self, history, timestamps=None):
        """User tower in inference mode, traced once per model. [B, N], [B, N] -> [B, D]."""
        return self.user_tower(history, timestamps, training=False)

    def predict_rating(self, users, items):
        """Rating head over both towers. [B, D], [B, D] -> [B]."""
        return tf.squeeze(self.ranking_head(tf.concat([users, items], axis=-1)), axis=-1)

    def compute_loss(self, features, training=False):
        target = tf.cast(features["target"], tf.int32)
        if self.negatives == "catalog":
            # One item-tower pass over the catalog per step serves the softmax, the
            # positives and (item-sequence) the history positions.
            table = self.item_tower.representation(tf.range(self.item_tower.num_items), training=training)
            timestamps = features.get("history_timestamps")
            if isinstance(self.user_tower, ItemSequenceUserTower):
                users = self.user_tower(features["history"], timestamps, training=training, item_table=table)
            else:
                users = self.user_tower(features["history"], timestamps, training=training)
            embeddings = self.item_tower.finalize(table)
            positives = tf.gather(embeddings, target)
            catalog_ids = tf.range(1, self.item_tower.num_items, dtype=tf.int32)
            catalog = embeddings[1:]
            batch = tf.shape(target)[0]
            score_mask = tf.concat(
                [tf.cast(tf.eye(batch), tf.bool), tf.not_equal(catalog_ids[None, :], target[:, None])], axis=1
            )
            retrieval_loss = self.retrieval_task(
                users, tf.concat([positives, catalog], axis=0), score_mask=score_mask,
                compute_metrics=False, compute_batch_metrics=False,
            )
        else:
            users, positives = self(features, training=training)
            retrieval_loss = self.retrieval_task(
                users, positives, candidate_ids=target,
                candidate_sampling_probability=tf.gather(self.item_probability, target),
                compute_metrics=False, compute_batch_metrics=False,
            )
        if not training:
            for metric in self.retrieval_task.factorized_metrics:
                metric.update_state(users, positives, true_candidate_ids=target)
        rating = tf.cast(features["rating"], tf.float32)
        known = tf.logical_not(tf.math.is_nan(rating))
        ranking_loss = self.ranking_task(
            labels=tf.where(known, rating, 0.0)[:, None],
            predictions=self.predict_rating(users, positives)[:, None],
            sample_weight=tf.cast(known, tf.float32),
        )
        return self.retrieval_weight * retrieval_loss + self.ranking_weight * ranking_loss
