"""TensorFlow ops on item histories shared by training and the exported graph."""

from __future__ import annotations

import tensorflow as tf


def newest_first(history: tf.Tensor) -> tf.RaggedTensor:
    """Known items of each history, newest first.

    Args:
        history: tf.Tensor int32. [B, N] item indices, oldest first; 0 marks
            padding or an unknown item, wherever it stands.

    Returns:
        tf.RaggedTensor int32. [B, None] the non-zero indices, newest first.
    """
    reversed_history = tf.reverse(tf.cast(history, tf.int32), axis=[1])
    return tf.ragged.boolean_mask(reversed_history, reversed_history > 0)


def compact_newest_first(history: tf.Tensor, max_length: int) -> tf.Tensor:
    """The `max_length` most recent known items, newest first, 0-padded.

    Args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding.
        max_length: int. items kept per row.

    Returns:
        tf.Tensor int32. [B, max_length].
    """
    # Dense ops only (no ragged tensors), so that XLA (`--jit-compile`) can compile it:
    # item i goes to slot (number of known items newer than or equal to it) - 1.
    reversed_history = tf.reverse(tf.cast(history, tf.int32), axis=[1])
    known = reversed_history > 0
    slot = tf.where(known, tf.cumsum(tf.cast(known, tf.int32), axis=1) - 1, -1)
    placed = tf.one_hot(slot, max_length, dtype=tf.int32)  # all zeros for -1 and slots >= max_length
    return tf.reduce_sum(reversed_history[:, :, None] * placed, axis=1)
