"""`HistoryTextUserTower`: BERT over the text of the user's recent items."""

from __future__ import annotations

import tensorflow as tf

from tfrec_lm.layers.interest_composer import append_one


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class HistoryTextUserTower(tf.keras.layers.Layer):
    """Encodes `[CLS] newest [SEP] older [SEP] ...` with its own BERT encoder.

    Args:
        encoder: tfrec_lm.layers.BertTextEncoder. the history text encoder.
        composer: tfrec_lm.layers.HistoryTextComposer. builds the token ids in-graph.
        embedding_dim: int. output width.
        dropout: float. dropout on the pooled vector.
        normalize: bool. L2-normalise the output.
        bias_column: bool. append a constant 1 (the partner of an item tower's bias column).

    Call args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding/unknown.
        timestamps: tf.Tensor int64. optional [B, N]; accepted for a common tower
            signature and not used (the text carries order, not time).
        item_table: tf.Tensor float32. optional [C+1, D]; accepted for the common tower
            signature and not used (this tower reads item text, not item representations).

    Returns:
        tf.Tensor float32. [B, embedding_dim].
    """

    def __init__(self, encoder, composer, embedding_dim: int = 64, dropout: float = 0.1,
                 normalize: bool = True, bias_column: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.composer = composer
        self.embedding_dim = int(embedding_dim)
        self.dropout_rate = float(dropout)
        self.normalize = bool(normalize)
        self.bias_column = bool(bias_column)
        self.dropout = tf.keras.layers.Dropout(self.dropout_rate)
        self.projection = tf.keras.layers.Dense(self.embedding_dim, name="history_projection",
                                                dtype="float32")  # float32 under mixed precision

    def call(self, history, timestamps=None, training=False, item_table=None):
        ids, mask = self.composer(history)
        width = tf.maximum(tf.reduce_max(tf.reduce_sum(mask, axis=1)), 1)
        pooled = self.encoder(ids[:, :width], mask[:, :width], training=training)
        user = self.projection(self.dropout(pooled, training=training))
        user = tf.math.l2_normalize(user, axis=-1) if self.normalize else user
        return append_one(user) if self.bias_column else user

    def get_config(self):
        config = super().get_config()
        config.update({
            "encoder": tf.keras.layers.serialize(self.encoder),
            "composer": tf.keras.layers.serialize(self.composer),
            "embedding_dim": self.embedding_dim,
            "dropout": self.dropout_rate,
            "normalize": self.normalize,
            "bias_column": self.bias_column,
        })
        return config

    @classmethod
    def from_config(cls, config):
        from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
        from tfrec_lm.layers.history_text_composer import HistoryTextComposer

        config = dict(config)
        config["encoder"] = BertTextEncoder.from_config(config["encoder"]["config"])
        config["composer"] = HistoryTextComposer.from_config(config["composer"]["config"])
        return cls(**config)

    def for_export(self) -> "HistoryTextUserTower":
        """What a SavedModel holds in place of this tower: the tower itself (its composer
        builds the history text in-graph)."""
        return self
