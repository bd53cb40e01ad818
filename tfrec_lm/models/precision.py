"""`dtype_policy`: the one way the package sets Keras's global dtype policy for a while."""

from __future__ import annotations

import contextlib

import tensorflow as tf


@contextlib.contextmanager
def dtype_policy(name: str):
    """Sets the Keras global dtype policy inside the block and restores the previous one after.

    Layers take the global policy when they are created: the model is built under
    `--mixed-precision`'s (e.g. `mixed_bfloat16`), and the TFRS tasks, which have no
    `dtype` argument, under `float32`.

    Args:
        name: str. a `tf.keras.mixed_precision.Policy` name (`float32`, `mixed_bfloat16`, `mixed_float16`).
    """
    previous = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
