"""`masked_mean`: the one masked average of the layers (BERT token pooling, history means)."""

from __future__ import annotations

import tensorflow as tf


def masked_mean(vectors: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Averages vectors over the positions the mask keeps.

    Args:
        vectors: tf.Tensor float. [B, L, D] token or item vectors.
        mask: tf.Tensor int or bool. [B, L] 1 (True) where the position is real.

    Returns:
        tf.Tensor float. [B, D] in the dtype of `vectors`; all-zero rows where the mask is empty.
    """
    weights = tf.cast(mask, vectors.dtype)[:, :, None]
    total = tf.reduce_sum(vectors * weights, axis=1)
    count = tf.reduce_sum(weights, axis=1)
    return total / tf.maximum(count, 1.0)
