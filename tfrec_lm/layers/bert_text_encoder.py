"""`BertTextEncoder`: a TFBertModel, mean-pooled, with a fine-tuning strategy."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_lm.layers.lora_dense import LoraDense
from tfrec_lm.layers.pooling import masked_mean

FINETUNE_STRATEGIES = ("full", "top-k", "frozen", "lora")
CACHED_STRATEGIES = ("frozen", "lora")
"""Strategies whose item text vectors an item tower keeps in a table (`ItemTower.text_cache`)."""
EAGER_MAX_BATCHES = 8
"""`encode_table` runs eagerly up to this many batches (a catalog update's new texts), traced above."""


@tf.keras.utils.register_keras_serializable(package="tfrec_lm")
class BertTextEncoder(tf.keras.layers.Layer):
    """Encodes token ids with a HuggingFace `TFBertModel` and mean pooling.

    Args:
        bert: transformers.TFBertModel. the encoder (pretrained or tiny random).
        finetune: str. one of `full` (every weight trains), `top-k` (only the top
            `trainable_layers` transformer layers train), `frozen` (no encoder
            weight trains; what surrounds it does) or `lora` (every encoder weight is
            frozen; the query, key, value and attention-output projections of the top
            `trainable_layers` layers get trainable low-rank adapters, `LoraDense`).
        trainable_layers: int. the k of `top-k` and of `lora`.
        lora_rank: int. r of the `lora` adapters.
        lora_alpha: float or None. the adapters' scale is alpha / r; None: alpha = r (scale 1).

    Call args:
        input_ids: tf.Tensor int32. [B, L] word-piece ids.
        attention_mask: tf.Tensor int32. [B, L] 1 for real tokens.

    Returns:
        tf.Tensor float32. [B, hidden_size] mean-pooled last hidden states.
    """

    def __init__(self, bert, finetune: str = "frozen", trainable_layers: int = 2, lora_rank: int = 8,
                 lora_alpha=None, **kwargs):
        super().__init__(**kwargs)
        if finetune not in FINETUNE_STRATEGIES:
            raise ValueError(
                f"unknown fine-tuning strategy {finetune!r}; choose one of {FINETUNE_STRATEGIES}"
            )
        num_layers = bert.config.num_hidden_layers
        if finetune in ("top-k", "lora") and not 1 <= trainable_layers <= num_layers:
            raise ValueError(
                f"trainable_layers must be in [1, {num_layers}] for this encoder, got {trainable_layers}"
            )
        self.bert = bert
        self.finetune = finetune
        self.trainable_layers = int(trainable_layers)
        self.lora_rank = int(lora_rank)
        self.lora_alpha = None if lora_alpha is None else float(lora_alpha)
        if finetune == "lora":
            self._add_adapters()
        self._apply_strategy()

    @property
    def hidden_size(self) -> int:
        return int(self.bert.config.hidden_size)

    @property
    def is_frozen(self) -> bool:
        return self.finetune == "frozen"

    @property
    def caches_text(self) -> bool:
        """Whether an item tower keeps this encoder's item vectors in a table (`frozen`, `lora`)."""
        return self.finetune in CACHED_STRATEGIES

    @property
    def first_adapted_layer(self) -> int:
        """Index of the lowest transformer layer `lora` adapts (or `top-k` trains)."""
        return int(self.bert.config.num_hidden_layers) - self.trainable_layers

    @staticmethod
    def _projections(layer) -> dict:
        """The dense projections of one transformer layer's attention that `lora` adapts, by name."""
        attention = layer.attention
        return {"query": (attention.self_attention, "query"), "key": (attention.self_attention, "key"),
                "value": (attention.self_attention, "value"), "output": (attention.dense_output, "dense")}

    def _add_adapters(self) -> None:
        if not self.bert.built:  # the wrapped projections must have their kernels before a checkpoint loads
            self.bert(self.bert.dummy_inputs)
        for layer in self.bert.bert.encoder.layer[self.first_adapted_layer:]:
            for name, (owner, attribute) in self._projections(layer).items():
                base = getattr(owner, attribute)
                if isinstance(base, LoraDense):  # a BERT shared with another encoder (a catalog update's grown model)
                    if (base.rank, base.alpha) != (self.lora_rank, float(self.lora_alpha or self.lora_rank)):
                        raise ValueError(f"this BERT already has rank {base.rank} adapters (alpha {base.alpha})")
                    continue
                delattr(owner, attribute)  # untracked first, so the base is tracked once, under the adapter
                adapter = LoraDense(base, rank=self.lora_rank, alpha=self.lora_alpha, name=f"lora_{name}")
                adapter.build(tf.TensorShape([None, None, base.kernel.shape[0]]))
                setattr(owner, attribute, adapter)

    def adapters(self) -> list:
        """The `LoraDense` layers, bottom to top (empty unless `lora`)."""
        if self.finetune != "lora":
            return []
        return [getattr(owner, attribute) for layer in self.bert.bert.encoder.layer[self.first_adapted_layer:]
                for owner, attribute in self._projections(layer).values()]

    def merge_adapters(self) -> None:
        """Folds every adapter into its base kernel (`LoraDense.merge`): the same encoder, B = 0 after."""
        for adapter in self.adapters():
            adapter.merge()

    def _apply_strategy(self) -> None:
        main = self.bert.bert
        # Mean pooling never uses BERT's pooler; keep it out of the gradient.
        main.pooler.trainable = False
        if self.finetune == "frozen":
            self.bert.trainable = False
        elif self.finetune == "top-k":
            main.embeddings.trainable = False
            layers = main.encoder.layer
            for index, layer in enumerate(layers):
                layer.trainable = index >= len(layers) - self.trainable_layers
        elif self.finetune == "lora":
            main.embeddings.trainable = False
            for layer in main.encoder.layer:
                # A layer's own flag must stay on for its adapters' weights to be trainable:
                # every weight-holding sublayer but the adapters is switched off instead.
                layer.trainable = True
                for sub in layer.submodules:
                    holds_weights = isinstance(sub, tf.keras.layers.Layer) and sub._trainable_weights
                    if holds_weights and not isinstance(sub, LoraDense):
                        sub.trainable = False

    def call(self, input_ids, attention_mask, training=False):
        outputs = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            training=training and self.finetune in ("full", "top-k"),
        )
        return masked_mean(outputs.last_hidden_state, attention_mask)

    def encode_table(self, token_rows: np.ndarray, pad_id: int = 0, batch_size: int = 64,
                     verbose: int = 0) -> np.ndarray:
        """Encodes many rows of token ids once, for a cache.

        Up to `EAGER_MAX_BATCHES` batches run eagerly: tracing the encoder costs about as much as
        13 eager batches of MiniLM-L6 (4.7 s against 0.35 s a batch of 53 texts on this CPU), and
        a catalog update encodes a few new texts. Args and result: `encode_in_batches`'s, with
        this encoder; np.ndarray float32 [N, hidden_size].
        """
        encode = lambda ids, mask: self.call(ids, mask, training=False)  # noqa: E731
        if len(token_rows) > EAGER_MAX_BATCHES * batch_size:  # tracing the encoder pays off only over many batches
            encode = tf.function(encode, reduce_retracing=True)
        return encode_in_batches(encode, token_rows, pad_id=pad_id, batch_size=batch_size, verbose=verbose)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "bert_config": self.bert.config.to_dict(),
                "finetune": self.finetune,
                "trainable_layers": self.trainable_layers,
                "lora_rank": self.lora_rank,
                "lora_alpha": self.lora_alpha,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        from transformers import BertConfig, TFBertModel

        config = dict(config)
        # A copy: `BertConfig.from_dict` adds keys to the dict it is given (the caller's config).
        bert = TFBertModel(BertConfig.from_dict(dict(config.pop("bert_config"))))
        return cls(bert=bert, **config)


def encode_in_batches(encode, token_rows: np.ndarray, pad_id: int = 0, batch_size: int = 64,
                      verbose: int = 0) -> np.ndarray:
    """Runs a text encoder over many token rows, a batch at a time, each batch cut to its longest text.

    Args:
        encode: callable. `(input_ids [B, L] int32, attention_mask [B, L] int32) -> [B, hidden]` tensor.
        token_rows: np.ndarray int32. [N, L] token ids padded with `pad_id`.
        pad_id: int. the padding id.
        batch_size: int. rows per forward pass.
        verbose: int. Keras's convention: 1 shows a progress bar (a terminal), else nothing.

    Returns:
        np.ndarray float32. [N, hidden].
    """
    outputs = []
    progress = tf.keras.utils.Progbar(len(token_rows), verbose=1 if verbose == 1 else 0, unit_name="text")
    for start in range(0, len(token_rows), batch_size):
        chunk = np.asarray(token_rows[start : start + batch_size])
        width = max(1, int((chunk != pad_id).sum(axis=1).max()))
        chunk = chunk[:, :width]
        mask = (chunk != pad_id).astype(np.int32)
        outputs.append(np.asarray(encode(tf.constant(chunk, tf.int32), tf.constant(mask)), np.float32))
        progress.add(len(chunk))
    return np.concatenate(outputs, axis=0).astype(np.float32)
