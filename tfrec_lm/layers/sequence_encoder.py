"""`SequenceEncoder`: a small recency-aware transformer over history item vectors."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_lm.layers.pooling import masked_mean

# Upper edges (seconds) of the age buckets: same second, a minute, ten minutes, an hour,
# six hours, a day, three days, a week, a month, three months, six months, a year, older.
AGE_BUCKET_EDGES = (1, 60, 600, 3_600, 21_600, 86_400, 259_200, 604_800, 2_592_000, 7_776_000,
                    15_552_000, 31_536_000)


def age_buckets(ages: tf.Tensor) -> tf.Tensor:
    """Log-spaced age buckets. int [B, N] seconds -> int32 [B, N] in [0, len(AGE_BUCKET_EDGES)]."""
    edges = tf.constant(np.asarray(AGE_BUCKET_EDGES, np.int64))
    ages = tf.cast(ages, tf.int64)[..., None]
    return tf.reduce_sum(tf.cast(ages >= edges, tf.int32), axis=-1)


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class SequenceEncoder(tf.keras.layers.Layer):
    """Composes a user's interest from the vectors of their recent items.

    The input is ordered newest first, so the learned position embedding is a
    recency embedding (position 0 = the latest item). Self-attention blocks mix
    the history; the output is the newest position's vector, which attends to
    the whole history.

    Args:
        max_length: int. most recent items used.
        num_blocks: int. transformer blocks.
        num_heads: int. attention heads.
        dropout: float. dropout rate inside the blocks.
        pooling: str. `newest`: the output is the newest position after recency-aware
            attention (the default); `mean`: no position embedding and a masked mean,
            an order-free set of items (the ablation without history order).
        time_features: bool. add a learned embedding of each item's age (seconds before
            the newest item, in log-spaced buckets, `AGE_BUCKET_EDGES`); `newest` only.

    Call args:
        vectors: tf.Tensor float32. [B, N<=max_length, D] item vectors, newest first.
        mask: tf.Tensor bool. [B, N] True for real items.
        ages: tf.Tensor int64. [B, N] seconds before the newest item; needed with
            `time_features`.

    Returns:
        tf.Tensor float32. [B, D].
    """

    def __init__(self, max_length: int, num_blocks: int = 1, num_heads: int = 2, dropout: float = 0.1,
                 pooling: str = "newest", time_features: bool = False, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("newest", "mean"):
            raise ValueError(f"pooling must be `newest` or `mean`, got {pooling!r}")
        if time_features and pooling != "newest":
            raise ValueError("time_features needs pooling='newest'")
        self.pooling = pooling
        self.time_features = bool(time_features)
        self.max_length = int(max_length)
        self.num_blocks = int(num_blocks)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)

    def build(self, input_shape):
        width = int(input_shape[-1])
        if width % self.num_heads:
            raise ValueError(f"vector width {width} is not divisible by num_heads={self.num_heads}")
        self.positions = self.add_weight(
            name="recency_embedding",
            shape=[self.max_length, width],
            initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02),
        )
        if self.time_features:
            self.age_embedding = self.add_weight(
                name="age_embedding",
                shape=[len(AGE_BUCKET_EDGES) + 1, width],
                initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02),
            )
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=1e-6, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(self.dropout)
        self.blocks = []
        for index in range(self.num_blocks):
            self.blocks.append(
                {
                    "attention": tf.keras.layers.MultiHeadAttention(
                        self.num_heads, width // self.num_heads, dropout=self.dropout, name=f"attention_{index}"
                    ),
                    "norm1": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm1_{index}"),
                    "ffn1": tf.keras.layers.Dense(width * 2, activation="gelu", name=f"ffn1_{index}"),
                    "ffn2": tf.keras.layers.Dense(width, name=f"ffn2_{index}"),
                    "norm2": tf.keras.layers.LayerNormalization(epsilon=1e-6, name=f"norm2_{index}"),
                    "drop": tf.keras.layers.Dropout(self.dropout),
                }
            )
        super().build(input_shape)

    def call(self, vectors, mask, ages=None, training=False):
        length = tf.shape(vectors)[1]
        x = vectors + self.positions[None, :length, :] if self.pooling == "newest" else vectors
        if self.time_features:
            if ages is None:
                raise ValueError("this SequenceEncoder has time_features and needs `ages`")
            x = x + tf.gather(self.age_embedding, age_buckets(ages))
        x = self.input_dropout(self.input_norm(x), training=training)
        mask = tf.cast(mask, tf.bool)
        for index, block in enumerate(self.blocks):
            # `newest` reads position 0 only: the last block computes that one query (its
            # keys and values still span the history), and its feed-forward runs on that
            # one position. The same values as every position's, at a fraction of the work.
            last = self.pooling == "newest" and index == self.num_blocks - 1
            query, query_mask = (x[:, :1], mask[:, :1]) if last else (x, mask)
            attention_mask = tf.logical_and(query_mask[:, :, None], mask[:, None, :])
            attended = block["attention"](query, x, attention_mask=attention_mask, training=training)
            x = block["norm1"](query + block["drop"](attended, training=training))
            hidden = block["ffn2"](block["ffn1"](x))
            x = block["norm2"](x + block["drop"](hidden, training=training))
        if self.pooling == "mean":
            return masked_mean(x, mask)
        return x[:, 0, :] * tf.cast(mask[:, :1], x.dtype)  # an empty history gives zeros

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_length": self.max_length,
                "num_blocks": self.num_blocks,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "pooling": self.pooling,
                "time_features": self.time_features,
            }
        )
        return config
