"""`ItemSequenceUserTower`: the user as a composition of their items' encodings."""

from __future__ import annotations

import tensorflow as tf

from tfrec_lm.layers.history_ops import compact_with_ages
from tfrec_lm.layers.interest_composer import InterestComposer


def compose_history(history, timestamps, item_vectors_fn, composer: InterestComposer, training=False):
    """The item-sequence user embedding, given a way to represent items.

    Shared by the tower (which represents items through the live item tower) and the
    export (which gathers from a table computed at export, so the SavedModel holds
    no item encoder).

    Args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding.
        timestamps: tf.Tensor int64 or None. [B, N] Unix seconds; needed when the
            composer has time features, ignored otherwise.
        item_vectors_fn: callable. [B, H] indices -> [B, H, D] vectors.
        composer: InterestComposer. composes the vectors into a user.

    Returns:
        tf.Tensor float32. [B, embedding_dim].
    """
    if composer.time_features and timestamps is None:
        raise ValueError("this user tower has time features and needs the history's timestamps")
    items, ages = compact_with_ages(history, timestamps if composer.time_features else None,
                                    composer.max_history)
    return composer(item_vectors_fn(items), items > 0, ages=ages, training=training)


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class ItemSequenceUserTower(tf.keras.layers.Layer):
    """Encodes a history through the item tower's BERT vectors and an interest composer.

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
        pooling: str. `newest` (recency-aware), `mean` (order-free set) or `bag`
            (mean of item vectors); see `InterestComposer`.
        time_features: bool. learned embeddings of each item's age.
        long_short: bool. gate a short-term and a long-term view.
        short_window: int. items in the short-term view.
        bias_column: bool. append a constant 1 (the partner of an item tower's bias column).

    Call args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding/unknown.
        timestamps: tf.Tensor int64. optional [B, N] Unix seconds of the history items;
            needed with `time_features`.
        item_table: tf.Tensor float32. optional [C+1, D] item representations already
            computed this step (the catalog softmax computes them anyway); gathered
            instead of re-running the item tower on every history position. Both user
            towers take it (the history-text tower ignores it).

    Returns:
        tf.Tensor float32. [B, embedding_dim].
    """

    def __init__(self, item_tower, max_history: int = 50, num_blocks: int = 1, num_heads: int = 2,
                 dropout: float = 0.1, normalize: bool = True, pooling: str = "newest",
                 time_features: bool = False, long_short: bool = False, short_window: int = 10,
                 bias_column: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.item_tower = item_tower
        self.composer = InterestComposer(
            item_tower.embedding_dim, max_history=max_history, num_blocks=num_blocks, num_heads=num_heads,
            dropout=dropout, pooling=pooling, time_features=time_features, long_short=long_short,
            short_window=short_window, normalize=normalize, bias_column=bias_column, name="composer")

    @property
    def max_history(self) -> int:
        return self.composer.max_history

    def call(self, history, timestamps=None, training=False, item_table=None):
        if item_table is not None:
            represent = lambda items: tf.gather(item_table, items)  # noqa: E731
        else:
            represent = lambda items: self.item_tower.representation(items, training=training)  # noqa: E731
        return compose_history(history, timestamps, represent, self.composer, training=training)

    def get_config(self):
        config = super().get_config()
        composer = self.composer.get_config()
        config.update({key: composer[key] for key in (
            "max_history", "num_blocks", "num_heads", "dropout", "normalize", "pooling", "time_features",
            "long_short", "short_window", "bias_column")})
        config["item_tower"] = tf.keras.layers.serialize(self.item_tower)
        return config

    @classmethod
    def from_config(cls, config):
        from tfrec_lm.models.item_tower import ItemTower

        config = dict(config)
        item_tower = ItemTower.from_config(config.pop("item_tower")["config"])
        return cls(item_tower, **config)

    def for_export(self) -> "ItemTableUserTower":
        """What a SavedModel holds in place of this tower: the composer over a table of the
        item tower's representations, computed now, so the export holds no item encoder.

        Returns:
            ItemTableUserTower. `(history [B, N], timestamps [B, N]) -> [B, D]`, this tower's values.
        """
        everything = tf.range(self.item_tower.num_items, dtype=tf.int32)
        return ItemTableUserTower(self.composer,
                                  self.item_tower.representation(everything, training=False).numpy())


class ItemTableUserTower(tf.Module):
    """The item-sequence user tower with its item representations frozen into a table (export).

    Args:
        composer: InterestComposer. the trained composer.
        item_representations: np.ndarray float32. [C+1, D] `ItemTower.representation` of every item.

    Call args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding/unknown.
        timestamps: tf.Tensor int64. optional [B, N] Unix seconds (needed with time features).
        training: bool. passed to the composer (False at serving).
        item_table: ignored (the table is this module's own); the user towers' common signature.

    Returns:
        tf.Tensor float32. [B, embedding_dim].
    """

    def __init__(self, composer: InterestComposer, item_representations):
        super().__init__(name="item_table_user_tower")
        self.item_representations = tf.Variable(item_representations, trainable=False,
                                                name="item_representations")
        self.composer = composer

    def __call__(self, history, timestamps=None, training=False, item_table=None):
        return compose_history(history, timestamps, lambda items: tf.gather(self.item_representations, items),
                               self.composer, training=training)
