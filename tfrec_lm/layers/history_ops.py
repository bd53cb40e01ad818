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
    reversed_history, placed = _placement(history, max_length)
    return tf.reduce_sum(reversed_history[:, :, None] * placed, axis=1)


def _placement(history: tf.Tensor, max_length: int):
    """Reversed history and its one-hot compaction map [B, N, max_length].

    Dense ops only (no ragged tensors), so that XLA (`--jit-compile`) can compile it:
    item i goes to slot (number of known items newer than or equal to it) - 1.
    """
    reversed_history = tf.reverse(tf.cast(history, tf.int32), axis=[1])
    known = reversed_history > 0
    slot = tf.where(known, tf.cumsum(tf.cast(known, tf.int32), axis=1) - 1, -1)
    return reversed_history, tf.one_hot(slot, max_length, dtype=tf.int32)  # zeros for -1 and slots >= max_length


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
    reversed_history, placed = _placement(history, max_length)
    items = tf.reduce_sum(reversed_history[:, :, None] * placed, axis=1)
    reversed_times = tf.reverse(tf.cast(timestamps, tf.int64), axis=[1])
    times = tf.reduce_sum(reversed_times[:, :, None] * tf.cast(placed, tf.int64), axis=1)
    ages = tf.maximum(times[:, :1] - times, 0)
    return items, tf.where(items > 0, ages, tf.zeros_like(ages))


def in_sorted_rows(sorted_rows: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """Row-wise membership: whether each value is in its row.

    Args:
        sorted_rows: tf.Tensor int32. [B, N] each row sorted ascending (N may be 0).
        values: tf.Tensor int32. [B, L] values to look up, row by row.

    Returns:
        tf.Tensor bool. [B, L] True where `values[b, l]` is in `sorted_rows[b]`.
    """
    # A sentinel column keeps the gather valid for zero-width rows.
    sorted_rows = tf.pad(sorted_rows, [[0, 0], [0, 1]], constant_values=tf.int32.max)
    width = tf.shape(sorted_rows)[1]
    positions = tf.searchsorted(sorted_rows, values, side="left")
    found = tf.gather(sorted_rows, tf.minimum(positions, tf.maximum(width - 1, 0)), batch_dims=1)
    return tf.logical_and(positions < width, tf.equal(found, values))


def in_history(history: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """Whether each row's history holds each of `items` (shared by every row).

    Args:
        history: tf.Tensor int. [B, N] item indices, 0 = padding.
        items: tf.Tensor int32. [L] item indices (> 0).

    Returns:
        tf.Tensor bool. [B, L].
    """
    history = tf.sort(tf.cast(history, tf.int32), axis=1)
    items = tf.cast(items, tf.int32)
    return in_sorted_rows(history, tf.broadcast_to(items[None, :], [tf.shape(history)[0], tf.shape(items)[0]]))
