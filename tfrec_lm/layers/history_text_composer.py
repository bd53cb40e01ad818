"""`HistoryTextComposer`: a user's history text, composed from item tokens in-graph."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_lm.layers.history_ops import newest_first


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class HistoryTextComposer(tf.keras.layers.Layer):
    """Builds `[CLS] newest [SEP] older [SEP] ...` token ids from item indices.

    The item texts were tokenized once (`tfrec_lm.text.ItemTokens`); this layer
    only gathers and concatenates their rows with TensorFlow ops, so training and
    the exported SavedModel build the same inputs without a Python tokenizer.

    Args:
        token_ids: np.ndarray int32. [C+1, L] item word pieces, no special tokens.
        lengths: np.ndarray int32. [C+1] real tokens per item row.
        cls_id: int. `[CLS]` id.
        sep_id: int. `[SEP]` id.
        max_tokens: int. token budget of the composed text, `[CLS]` included.

    Call args:
        history: tf.Tensor int32. [B, N] item indices, oldest first, 0 = padding
            (anywhere in the row; unknown items are 0 too).

    Returns:
        (input_ids, attention_mask): tf.Tensor int32. [B, max_tokens] each.
    """

    def __init__(self, token_ids, lengths, cls_id: int, sep_id: int, max_tokens: int = 128, **kwargs):
        super().__init__(**kwargs)
        if max_tokens < 2:
            raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
        token_ids = np.asarray(token_ids, dtype=np.int32)
        lengths = np.asarray(lengths, dtype=np.int32)
        # Each item contributes its tokens followed by [SEP].
        rows = [np.append(token_ids[i, : lengths[i]], sep_id) for i in range(len(lengths))]
        rows[0] = np.zeros([0], dtype=np.int32)  # padding item contributes nothing
        self._values = np.concatenate(rows).astype(np.int32)
        self._row_lengths = np.array([len(r) for r in rows], dtype=np.int64)
        self.token_ids = token_ids
        self.lengths = lengths
        self.cls_id = int(cls_id)
        self.sep_id = int(sep_id)
        self.max_tokens = int(max_tokens)

    def call(self, history):
        table = tf.RaggedTensor.from_row_lengths(
            tf.constant(self._values), tf.constant(self._row_lengths)
        )
        items = newest_first(history)
        tokens = tf.gather(table, items).merge_dims(1, 2)  # [B, None]
        tokens = tokens[:, : self.max_tokens - 1]
        batch = tf.shape(history)[0]
        cls = tf.fill([batch, 1], self.cls_id)
        ids = tf.concat([cls, tokens.to_tensor(default_value=0)], axis=1)
        ids = tf.pad(ids, [[0, 0], [0, self.max_tokens - tf.shape(ids)[1]]])
        mask = tf.sequence_mask(tokens.row_lengths() + 1, self.max_tokens, dtype=tf.int32)
        ids = ids * mask
        ids.set_shape([None, self.max_tokens])
        return ids, mask

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "token_ids": self.token_ids.tolist(),
                "lengths": self.lengths.tolist(),
                "cls_id": self.cls_id,
                "sep_id": self.sep_id,
                "max_tokens": self.max_tokens,
            }
        )
        return config
