"""`CatalogTopK`: a TFRS top-k layer that scores the live item tower over the catalog."""

from __future__ import annotations

import tensorflow as tf
import tensorflow_recommenders as tfrs


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class CatalogTopK(tfrs.layers.factorized_top_k.TopK):
    """Exact top-k over every catalog item, embedded by the current item tower.

    `tfrs.metrics.FactorizedTopK` needs candidates that follow training; a
    `BruteForce` index would have to be rebuilt before every evaluation. This
    layer embeds items 1..C on each call (cheap with a cached encoder).

    Args:
        item_tower: tfrec_lm.models.ItemTower. embeds item indices.
        k: int. default number of results.

    Call args:
        queries: tf.Tensor float32. [B, D] user embeddings.
        k: int. results per query.

    Returns:
        (scores, item_indices): [B, k] float32 and int32.
    """

    def __init__(self, item_tower, k: int = 10, **kwargs):
        super().__init__(k=k, **kwargs)
        self.item_tower = item_tower

    def index(self, candidates, identifiers=None):
        raise NotImplementedError("CatalogTopK reads its candidates from the item tower")

    def index_from_dataset(self, candidates):
        raise NotImplementedError("CatalogTopK reads its candidates from the item tower")

    def call(self, queries, k=None):
        k = k if k is not None else self._k
        items = tf.range(1, self.item_tower.num_items, dtype=tf.int32)
        scores = tf.linalg.matmul(queries, self.item_tower(items), transpose_b=True)
        values, positions = tf.math.top_k(scores, k=k)
        return values, positions + 1

    def is_exact(self) -> bool:
        return True

    def get_config(self):
        config = super().get_config()
        config.update(k=self._k, item_tower=tf.keras.layers.serialize(self.item_tower))
        return config

    @classmethod
    def from_config(cls, config):
        from tfrec_lm.models.item_tower import ItemTower

        config = dict(config)
        config["item_tower"] = ItemTower.from_config(config["item_tower"]["config"])
        return cls(**config)
