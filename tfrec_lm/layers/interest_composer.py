"""`InterestComposer`: a user embedding from history item vectors, their order and their times."""

from __future__ import annotations

import tensorflow as tf

from tfrec_lm.layers.pooling import masked_mean
from tfrec_lm.layers.sequence_encoder import SequenceEncoder

POOLINGS = ("newest", "mean", "bag")


def append_one(user):
    """A user embedding with a constant 1 appended: `[..., D] -> [..., D + 1]` (dot product with an
    item tower's bias column adds the item's bias)."""
    return tf.concat([user, tf.ones_like(user[..., :1])], axis=-1)


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class InterestComposer(tf.keras.layers.Layer):
    """Composes a user's interest from their history, newest first.

    Three ways to read a history (`pooling`):

    - `newest` (recency-aware): a small transformer with recency position embeddings
      (and, with `time_features`, embeddings of each item's age) over the most
      recent items; the newest position's output is the user.
    - `mean`: the same transformer without any position or time information and a
      masked mean of its outputs, an order-free set model.
    - `bag`: the masked mean of the item vectors themselves, no attention at all:
      the classic bag-of-items user.

    With `long_short` (only with `newest`) the transformer reads the `short_window`
    most recent items (the short-term interest) and a second view, the mean of all
    `max_history` item vectors, holds the long-term profile; a learned gate mixes the
    two per dimension: `user = g * short + (1 - g) * long`, `g = sigmoid(W [short; long] + b)`.

    Args:
        embedding_dim: int. output width.
        max_history: int. most recent items read (the long-term window).
        num_blocks: int. transformer blocks.
        num_heads: int. attention heads.
        dropout: float. dropout rate.
        pooling: str. `newest`, `mean` or `bag` (see above).
        time_features: bool. add a learned embedding of each item's age bucket.
        long_short: bool. gate a short-term and a long-term view.
        short_window: int. items in the short-term view (with `long_short`).
        normalize: bool. L2-normalise the output.
        bias_column: bool. append a constant 1 to the output (after normalising), the
            partner of an item tower's bias column.

    Call args:
        vectors: tf.Tensor float32. [B, max_history, D] item vectors, newest first.
        mask: tf.Tensor bool. [B, max_history] True for real items.
        ages: tf.Tensor int64. [B, max_history] seconds between the newest item and
            each item (0 at padding); needed with `time_features`.

    Returns:
        tf.Tensor float32. [B, embedding_dim] (+1 with `bias_column`).
    """

    def __init__(self, embedding_dim: int, max_history: int = 50, num_blocks: int = 1, num_heads: int = 2,
                 dropout: float = 0.1, pooling: str = "newest", time_features: bool = False,
                 long_short: bool = False, short_window: int = 10, normalize: bool = True,
                 bias_column: bool = False, **kwargs):
        super().__init__(**kwargs)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if pooling != "newest" and (time_features or long_short):
            raise ValueError(f"time_features and long_short need pooling='newest' (order-aware), got {pooling!r}")
        if long_short and not 1 <= short_window <= max_history:
            raise ValueError(f"short_window must be in [1, max_history={max_history}], got {short_window}")
        self.embedding_dim = int(embedding_dim)
        self.max_history = int(max_history)
        self.pooling = pooling
        self.time_features = bool(time_features)
        self.long_short = bool(long_short)
        self.short_window = int(short_window)
        self.normalize = bool(normalize)
        self.bias_column = bool(bias_column)
        self.num_blocks, self.num_heads, self.dropout = int(num_blocks), int(num_heads), float(dropout)
        self.window = self.short_window if self.long_short else self.max_history
        self.sequence_encoder = None
        if pooling != "bag":
            self.sequence_encoder = SequenceEncoder(self.window, num_blocks=num_blocks, num_heads=num_heads,
                                                    dropout=dropout, pooling=pooling,
                                                    time_features=self.time_features, name="sequence_encoder")
        # The user embedding is float32 under mixed precision: these three layers compute in float32.
        self.output_projection = tf.keras.layers.Dense(self.embedding_dim, name="user_projection", dtype="float32")
        if self.long_short:
            self.long_projection = tf.keras.layers.Dense(self.embedding_dim, name="long_term_projection",
                                                         dtype="float32")
            self.gate = tf.keras.layers.Dense(self.embedding_dim, activation="sigmoid", name="interest_gate",
                                              dtype="float32")

    def call(self, vectors, mask, ages=None, training=False):
        mask = tf.cast(mask, tf.bool)
        if self.pooling == "bag":
            user = self.output_projection(masked_mean(vectors, mask))
        else:
            window = self.window
            short_ages = None if ages is None else ages[:, :window]
            short = self.output_projection(
                self.sequence_encoder(vectors[:, :window], mask[:, :window], ages=short_ages, training=training))
            if self.long_short:
                long = self.long_projection(masked_mean(vectors, mask))
                gate = self.gate(tf.concat([short, long], axis=-1))
                user = gate * short + (1.0 - gate) * long
            else:
                user = short
        user = tf.math.l2_normalize(user, axis=-1) if self.normalize else user
        return append_one(user) if self.bias_column else user

    def get_config(self):
        config = super().get_config()
        config.update({
            "embedding_dim": self.embedding_dim,
            "max_history": self.max_history,
            "num_blocks": self.num_blocks,
            "num_heads": self.num_heads,
            "dropout": self.dropout,
            "pooling": self.pooling,
            "time_features": self.time_features,
            "long_short": self.long_short,
            "short_window": self.short_window,
            "normalize": self.normalize,
            "bias_column": self.bias_column,
        })
        return config
