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
    items = newest_first(history)[:, :max_length]
    return items.to_tensor(default_value=0, shape=[None, max_length])


def compact_with_ages(history: tf.Tensor, timestamps, max_length: int):
    """The `max_length` most recent known items, newest first, and each one's age.

    Unknown items (0) are dropped together with their timestamps, so padding and ids
    the model does not know never shift the ages of the real items.

    Args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding.
        timestamps: tf.Tensor int64 or None. [B, N] Unix seconds of each position.
        max_length: int. items kept per row.

    Returns:
        tuple (items int32 [B, max_length], ages int64 [B, max_length] or None): ages are
        the seconds between each row's newest known item and each item (0 at padding,
        never negative).
    """
    if timestamps is None:
        return compact_newest_first(history, max_length), None
    history = tf.cast(history, tf.int32)
    known = tf.reverse(history, axis=[1]) > 0
    items = tf.ragged.boolean_mask(tf.reverse(history, axis=[1]), known)[:, :max_length]
    times = tf.ragged.boolean_mask(tf.reverse(tf.cast(timestamps, tf.int64), axis=[1]), known)[:, :max_length]
    items = items.to_tensor(default_value=0, shape=[None, max_length])
    times = times.to_tensor(default_value=0, shape=[None, max_length])
    ages = tf.maximum(times[:, :1] - times, 0)
    return items, tf.where(items > 0, ages, tf.zeros_like(ages))
