"""Co-consumption tuning of the item text encoder's top layers: the fine-tuning that fits a CPU.

Fine-tuning BERT inside the recommender's training step costs one encoder pass over every
item a step touches (the whole catalog with catalog negatives): 1-10 examples/s on this
CPU. Here the encoder is tuned once, before the recommender trains, on item texts alone:
the token states below the top `layers` layers are computed once for the catalog, and only
the top layers run in a step, over the texts of a batch of co-consumed item pairs
(consecutive items of a user's training sequence), with an in-batch contrastive loss. The
tuned encoder is then frozen again and its vectors cached, as for a frozen encoder: item
texts that users consume together end up close, which a linear projection of the frozen
vectors cannot learn, and a new item's text is read by the same tuned layers.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import tensorflow as tf

from tfrec_lm.layers.pooling import masked_mean

logger = logging.getLogger(__name__)


def consecutive_pairs(history: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pairs of items consumed one after the other, from training examples.

    Args:
        history: np.ndarray int. [n, H] items before each target, oldest first, right-padded with 0.
        target: np.ndarray int. [n] the training targets.

    Returns:
        np.ndarray int32. [P, 2] (previous item, target) for each example with a history
        whose last item differs from its target.
    """
    history = np.asarray(history)
    target = np.asarray(target)
    lengths = (history > 0).sum(axis=1)
    has = lengths > 0
    previous = history[np.flatnonzero(has), lengths[has] - 1]
    pairs = np.stack([previous, target[has]], axis=1).astype(np.int32)
    return pairs[pairs[:, 0] != pairs[:, 1]]


@dataclasses.dataclass
class TextTuningResult:
    """What `tune_text_encoder` did.

    Attributes:
        vectors: np.ndarray float32. [N, hidden] the tuned encoder's mean-pooled vector of every
            token row (row 0, padding, is zeros), what `BertTextEncoder.encode_table` gives.
        losses: list of float. the contrastive loss of every step.
        seconds: float. wall time, the catalog's lower states included.
        pairs: int. distinct co-consumed pairs sampled from.
    """

    vectors: np.ndarray
    losses: list
    seconds: float
    pairs: int


class _TopLayers:
    """The encoder's top `layers` transformer layers and mean pooling, over cached lower states."""

    def __init__(self, encoder, layers: int):
        stack = encoder.bert.bert.encoder.layer
        if not 1 <= layers <= len(stack):
            raise ValueError(f"text tuning layers must be in [1, {len(stack)}] for this encoder, got {layers}")
        self.layers = stack[len(stack) - layers:]
        self.first = len(stack) - layers
        self.variables = [v for layer in self.layers for v in layer.variables]

    def __call__(self, states, mask, training=False):
        additive = (1.0 - tf.cast(mask, states.dtype)[:, None, None, :]) * -10000.0
        for layer in self.layers:
            states = layer(states, additive, None, None, None, None, False, training=training)[0]
        return masked_mean(states, mask)


def lower_states(encoder, token_rows: np.ndarray, first: int, batch_size: int = 64):
    """Every row's token states below the tuned layers, trimmed to the longest row.

    Args:
        encoder: tfrec_lm.layers.BertTextEncoder. the encoder.
        token_rows: np.ndarray int32. [N, L] token ids, 0 padding.
        first: int. index of the first tuned layer (its input states are returned).
        batch_size: int. rows per forward pass.

    Returns:
        (np.ndarray float32 [N, W, hidden], np.ndarray int32 [N, W]): states and attention mask.
    """
    width = max(1, int((token_rows != 0).sum(axis=1).max()))
    rows = np.asarray(token_rows[:, :width], np.int32)
    mask = (rows != 0).astype(np.int32)
    forward = tf.function(lambda ids, m: encoder.bert(input_ids=ids, attention_mask=m, output_hidden_states=True,
                                                      training=False).hidden_states[first],
                          reduce_retracing=True)
    states = [forward(tf.constant(rows[s:s + batch_size]), tf.constant(mask[s:s + batch_size])).numpy()
              for s in range(0, len(rows), batch_size)]
    return np.concatenate(states, axis=0).astype(np.float32), mask


def sample_batch(neighbours: list, anchors_pool: np.ndarray, batch_size: int, rng: np.random.Generator):
    """Distinct anchor items, each with one co-consumed partner drawn from its neighbours.

    Returns:
        (np.ndarray int32 [B], np.ndarray int32 [B]): anchors and partners.
    """
    anchors = rng.choice(anchors_pool, size=min(batch_size, len(anchors_pool)), replace=False)
    partners = np.array([neighbours[a][rng.integers(len(neighbours[a]))] for a in anchors], np.int32)
    return anchors.astype(np.int32), partners


def accidental_hits(anchors: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """bool [B, B]: off-diagonal pairs (query i, candidate j) where candidate j is query i's own item
    or positive, in the anchor -> partner direction (rows: anchors, columns: partners)."""
    hits = (partners[None, :] == partners[:, None]) | (partners[None, :] == anchors[:, None])
    np.fill_diagonal(hits, False)
    return hits


def tune_text_encoder(encoder, token_rows: np.ndarray, pairs: np.ndarray, steps: int, layers: int = 1,
                      batch_size: int = 128, learning_rate: float = 1e-4, temperature: float = 0.05,
                      seed: int = 0) -> TextTuningResult:
    """Tunes the encoder's top layers in place on co-consumed item pairs.

    Each step draws `batch_size` distinct anchor items uniformly among the items with a
    pair (so rare items weigh as much as popular ones), one partner each among the items
    consumed right before or after them, and minimises the symmetric in-batch softmax
    cross-entropy of their L2-normalised mean-pooled vectors (`temperature`), with
    accidental hits (the same item as candidate and positive) masked. Dropout inside the
    layers is on (it also augments).

    Args:
        encoder: tfrec_lm.layers.BertTextEncoder. a frozen encoder; its top layers' weights change.
        token_rows: np.ndarray int32. [N, L] `[CLS] text [SEP]` ids per item, row 0 padding.
        pairs: np.ndarray int. [P, 2] item indices consumed one after the other (`consecutive_pairs`).
        steps: int. optimisation steps (Adam).
        layers: int. top transformer layers tuned.
        batch_size: int. anchor items per step.
        learning_rate: float. Adam learning rate.
        temperature: float. softmax temperature of the cosine scores.
        seed: int. seed of the sampling.

    Returns:
        TextTuningResult. with the tuned encoder's vector of every row.

    Raises:
        ValueError: no pairs, or `layers` out of range.
    """
    start = time.monotonic()
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    pairs = pairs[(pairs > 0).all(axis=1) & (pairs[:, 0] != pairs[:, 1])]
    if not len(pairs):
        raise ValueError("text tuning needs at least one pair of different items consumed one after the other")
    top = _TopLayers(encoder, layers)
    states, mask = lower_states(encoder, np.asarray(token_rows), top.first)
    neighbours = [[] for _ in range(len(token_rows))]
    for a, b in np.unique(np.sort(pairs, axis=1), axis=0):
        neighbours[a].append(b)
        neighbours[b].append(a)
    neighbours = [np.asarray(n, np.int32) for n in neighbours]
    anchors_pool = np.flatnonzero([len(n) > 0 for n in neighbours])
    lengths = mask.sum(axis=1)
    rng = np.random.default_rng(seed)
    optimizer = tf.keras.optimizers.Adam(learning_rate)
    hidden = states.shape[-1]

    chunk = [tf.TensorSpec([None, None, hidden], tf.float32), tf.TensorSpec([None, None], tf.int32)]

    @tf.function(input_signature=chunk + chunk + [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32),
                                                  tf.TensorSpec([None, None], tf.bool)])
    def step(short_states, short_mask, long_states, long_mask, anchor_rows, partner_rows, hits):
        with tf.GradientTape() as tape:
            tape.watch(top.variables)
            pooled = tf.concat([top(short_states, short_mask, training=True),
                                top(long_states, long_mask, training=True)], axis=0)
            vectors = tf.math.l2_normalize(pooled, axis=-1)
            logits = tf.matmul(tf.gather(vectors, anchor_rows), tf.gather(vectors, partner_rows),
                               transpose_b=True) / temperature
            labels = tf.range(tf.shape(logits)[0])
            loss = 0.5 * (
                tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels, tf.where(hits, -1e9, logits)))
                + tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                    labels, tf.where(tf.transpose(hits), -1e9, tf.transpose(logits)))))
        optimizer.apply_gradients(zip(tape.gradient(loss, top.variables), top.variables))
        return loss

    losses = []
    for _ in range(int(steps)):
        anchors, partners = sample_batch(neighbours, anchors_pool, batch_size, rng)
        # The batch's distinct items, shortest text first, in two halves each cut to its own
        # longest text: a half of short titles does not pay for the long ones' padding.
        items = np.unique(np.concatenate([anchors, partners]))
        items = items[np.argsort(lengths[items], kind="stable")]
        order = np.empty(len(token_rows), np.int32)
        order[items] = np.arange(len(items))
        half = len(items) // 2
        parts = []
        for group in (items[:half], items[half:]):
            width = max(1, int(lengths[group].max())) if len(group) else 1
            parts += [tf.constant(states[group, :width]), tf.constant(mask[group, :width])]
        losses.append(float(step(*parts, tf.constant(order[anchors]), tf.constant(order[partners]),
                                 tf.constant(accidental_hits(anchors, partners)))))
    vectors = np.concatenate([top(tf.constant(states[s:s + 256]), tf.constant(mask[s:s + 256])).numpy()
                              for s in range(0, len(states), 256)], axis=0).astype(np.float32)
    vectors[0] = 0.0
    seconds = time.monotonic() - start
    if losses:
        logger.info("text tuning: %d steps, loss %.3f -> %.3f, %.0f s", len(losses), losses[0],
                    float(np.mean(losses[-10:])), seconds)
    return TextTuningResult(vectors=vectors, losses=losses, seconds=seconds, pairs=int(len(pairs)))
