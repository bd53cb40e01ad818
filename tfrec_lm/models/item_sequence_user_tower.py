"""`ItemSequenceUserTower`: the user as a composition of their items' encodings."""

from __future__ import annotations

import tensorflow as tf

from tfrec_lm.layers.history_ops import compact_newest_first
from tfrec_lm.layers.sequence_encoder import SequenceEncoder


def compose_history(history, item_vectors_fn, sequence_encoder, projection, max_history: int,
                    normalize: bool = True, training=False):
    """The item-sequence user embedding, given a way to represent items.

    Shared by the tower (which represents items through the live item tower) and the
    export (which gathers from a table computed at export, so the SavedModel holds
    no item encoder).

    Args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding.
        item_vectors_fn: callable. [B, H] indices -> [B, H, D] vectors.
        sequence_encoder: SequenceEncoder. composes the vectors.
        projection: tf.keras.layers.Dense. output projection.
        max_history: int. most recent known items used.
        normalize: bool. L2-normalise the output.

    Returns:
        tf.Tensor float32. [B, D].
    """
    items = compact_newest_first(history, max_history)
    user = projection(sequence_encoder(item_vectors_fn(items), items > 0, training=training))
    return tf.math.l2_normalize(user, axis=-1) if normalize else user


class ItemSequenceUserTower(tf.keras.layers.Layer):
    """Encodes a history through the item tower's BERT vectors and a small transformer.

    Each history item is represented exactly as the item tower represents it
    (its BERT text vector, projected, plus its ID embedding when hybrid), so a
    frozen encoder's cache serves both towers and nothing is re-encoded.

    Args:
        item_tower: tfrec_lm.models.ItemTower. shared item representation.
        max_history: int. most recent known items used.
        num_blocks: int. transformer blocks.
        num_heads: int. attention heads.
        dropout: float. dropout rate.
        normalize: bool. L2-normalise the output.
        pooling: str. `newest` (recency-aware) or `mean` (order-free bag of items).

    Call args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding/unknown.
        item_table: tf.Tensor float32. optional [C+1, D] item representations already
            computed this step (the catalog softmax computes them anyway); gathered
            instead of re-running the item tower on every history position.

    Returns:
        tf.Tensor float32. [B, embedding_dim].
    """

    def __init__(self, item_tower, max_history: int = 50, num_blocks: int = 1, num_heads: int = 2,
                 dropout: float = 0.1, normalize: bool = True, pooling: str = "newest", **kwargs):
        super().__init__(**kwargs)
        self.item_tower = item_tower
        self.max_history = int(max_history)
        self.normalize = bool(normalize)
        self.sequence_encoder = SequenceEncoder(max_history, num_blocks=num_blocks, num_heads=num_heads,
                                                dropout=dropout, pooling=pooling, name="sequence_encoder")
        self.output_projection = tf.keras.layers.Dense(item_tower.embedding_dim, name="user_projection",
                                                       dtype="float32")  # float32 under mixed precision

    def call(self, history, training=False, item_table=None):
        if item_table is not None:
            represent = lambda items: tf.gather(item_table, items)  # noqa: E731
        else:
            represent = lambda items: self.item_tower.representation(items, training=training)  # noqa: E731
        return compose_history(
            history, represent,
            self.sequence_encoder, self.output_projection, self.max_history, self.normalize, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
            "max_history": self.max_history,
            "num_blocks": self.sequence_encoder.num_blocks,
            "num_heads": self.sequence_encoder.num_heads,
            "dropout": self.sequence_encoder.dropout,
            "normalize": self.normalize,
            "pooling": self.sequence_encoder.pooling,
        })
        return config
