"""`LoraDense`: a frozen dense projection plus a trainable low-rank adapter (LoRA, Hu et al. 2021)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class LoraDense(tf.keras.layers.Layer):
    """`y = base(x) + (alpha / rank) * (x @ A) @ B`, with `base` a frozen `Dense`.

    A is drawn from a normal distribution (stddev 1 / sqrt(in), Kaiming-like: x A keeps about x's
    per-coordinate scale) and B starts at zeros, so
    the layer starts as exactly `base`. Only A and B train: `base` is set non-trainable.
    `merge` folds the adapter into `base`'s kernel and zeroes B, which keeps the function.

    Args:
        base: tf.keras.layers.Dense or None. the projection adapted (its kernel [in, units]);
            None builds a new `Dense` from `units`, `activation` and `use_bias` (`from_config`:
            the weights then come from a checkpoint).
        rank: int. r, the rank of the update (>= 1).
        alpha: float or None. the update's scale is alpha / rank; None: alpha = rank (scale 1).
        units: int or None. output width; with `base`, read from it.
        activation: str or None. the base's activation (only None or "linear" keeps the
            adapter additive on the output; the attention projections have none).
        use_bias: bool. whether the base has a bias.

    Call args:
        inputs: tf.Tensor float32. [..., in] the base's input.

    Returns:
        tf.Tensor float32. [..., units].
    """

    def __init__(self, base=None, rank: int = 8, alpha=None, units=None, activation=None, use_bias: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        if int(rank) < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if alpha is not None and not float(alpha) > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if base is None:
            if units is None:
                raise ValueError("LoraDense needs a base Dense or its units")
            base = tf.keras.layers.Dense(int(units), activation=activation, use_bias=use_bias, name="base")
        activation_name = tf.keras.activations.serialize(base.activation)
        if activation_name not in (None, "linear"):
            raise ValueError(f"LoraDense adapts linear projections, got activation {activation_name!r}")
        self.base = base
        self.base.trainable = False
        self.rank = int(rank)
        self.alpha = float(self.rank if alpha is None else alpha)
        self.units = int(base.units)
        self.use_bias = bool(base.use_bias)
        self.lora_a = None
        self.lora_b = None

    @property
    def scale(self) -> float:
        """alpha / rank, the factor of the low-rank update."""
        return self.alpha / self.rank

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if not self.base.built:
            self.base.build(input_shape)
        fan_in = int(input_shape[-1])
        self.lora_a = self.add_weight(
            name="lora_a", shape=[fan_in, self.rank], trainable=True,
            initializer=tf.keras.initializers.RandomNormal(stddev=1.0 / np.sqrt(fan_in)))
        self.lora_b = self.add_weight(name="lora_b", shape=[self.rank, self.units], trainable=True,
                                      initializer="zeros")
        super().build(input_shape)

    def call(self, inputs):
        # Rows [-1, in] through two matmuls: an einsum over "..." had a backward pass 3x slower than
        # the whole layer's (MiniLM on this CPU).
        rows = tf.reshape(inputs, [-1, tf.shape(inputs)[-1]])
        update = tf.matmul(tf.matmul(rows, self.lora_a), self.lora_b)
        update = tf.reshape(update, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0))
        return self.base(inputs) + self.scale * update

    def merge(self) -> None:
        """Folds the update into the base kernel (W += scale * A @ B) and zeroes B: the same function after."""
        self.base.kernel.assign_add(self.scale * tf.matmul(self.lora_a, self.lora_b))
        self.lora_b.assign(tf.zeros_like(self.lora_b))

    def get_config(self):
        config = super().get_config()
        config.update({"rank": self.rank, "alpha": self.alpha, "units": self.units,
                       "activation": None, "use_bias": self.use_bias})
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
