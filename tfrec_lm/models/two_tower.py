"""`TwoTowerModel`: user and item towers trained by TFRS retrieval and ranking tasks."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfrec_lm.layers.catalog_top_k import CatalogTopK
from tfrec_lm.layers.history_ops import in_history
from tfrec_lm.models.precision import dtype_policy


class TwoTowerModel(tfrs.Model):
    """Towers plus tasks.

    Args:
        user_tower: ItemSequenceUserTower or HistoryTextUserTower. `(history [B, N], timestamps
            [B, N], training, item_table [C+1, D])` -> [B, D]; `for_export()` gives what a SavedModel holds.
        item_tower: tfrec_lm.models.ItemTower. [B] item indices -> [B, D].
        negatives: str. `catalog`: exact softmax over every item (positives
            concatenated before the catalog, each row's own catalog copy masked
            by `score_mask`); `in-batch`: the batch's items with log-Q correction.
        temperature: float. retrieval softmax temperature.
        retrieval_weight: float. weight of the retrieval loss.
        ranking_weight: float. weight of the rating regression loss.
        item_probability: np.ndarray. [C+1] sampling probability of each item as
            an in-batch negative (its share of training targets), for log-Q.
        logit_adjustment: float. TAU >= 0 of the logit adjustment (Menon et al. 2021; the
            popularity correction of Yi et al. 2019): in the training loss only, both
            `negatives`, every candidate j's final logit (after the temperature, beside
            log-Q) gets `+ TAU * log p_j`, p_j the smoothed share of training targets
            (`logit_offsets`); evaluation, validation loss and served scores never see it.
            0: off, the loss as before.
        history_negatives: bool. whether a query's own history items are negatives of its
            softmax; False leaves them out (the evaluation and the served top-k never rank
            them), either way the query's own positive stays.
        metrics_k: tuple of int. k values of the FactorizedTopK metrics.

    Features (dict):
        history: int32 [B, N]; history_timestamps: int64 [B, N] (optional; needed by a
        user tower with time features); target: int32 [B]; rating: float32 [B] (NaN if unknown).
    """

    def __init__(self, user_tower, item_tower, negatives: str = "catalog", temperature: float = 0.05,
                 retrieval_weight: float = 1.0, ranking_weight: float = 0.1, item_probability=None,
                 history_negatives: bool = False, metrics_k=(10, 50), logit_adjustment: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        ks = [k for k in metrics_k if k < item_tower.num_items - 1] or [1]
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.negatives = negatives
        self.retrieval_weight = float(retrieval_weight)
        self.ranking_weight = float(ranking_weight)
        self.history_negatives = bool(history_negatives)
        self.temperature = float(temperature)
        self.logit_adjustment = float(logit_adjustment)
        if not (np.isfinite(self.logit_adjustment) and self.logit_adjustment >= 0):
            raise ValueError(f"logit_adjustment must be a finite number >= 0, got {logit_adjustment!r}")
        # Per-example losses: `compute_loss` averages them over the *global* batch itself,
        # so a step's gradient is the same on one replica or many (Keras' mean reductions
        # would average over each replica's share, and refuse to run under a strategy).
        none = tf.keras.losses.Reduction.NONE
        with dtype_policy("float32"):  # logits, losses and metrics in float32 under mixed precision
            self.retrieval_task = tfrs.tasks.Retrieval(
                loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True, reduction=none),
                temperature=temperature,
                remove_accidental_hits=negatives == "in-batch",
                metrics=tfrs.metrics.FactorizedTopK(CatalogTopK(item_tower, k=max(ks)), ks=ks),
            )
            self.ranking_task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.MeanSquaredError(reduction=none),
                metrics=[tf.keras.metrics.RootMeanSquaredError("rmse")],
            )
        self.ranking_head = tf.keras.Sequential(
            [tf.keras.layers.Dense(64, activation="relu"), tf.keras.layers.Dense(1, dtype="float32")],
            name="ranking_head",
        )
        if item_probability is None:
            item_probability = np.ones(item_tower.num_items, dtype=np.float32) / item_tower.num_items
        self.item_probability = tf.constant(np.maximum(np.asarray(item_probability, np.float32), 1e-8))
        # [C+1] TAU * log p_j, added to every candidate's training logit (`_with_logit_offsets`).
        self.logit_offsets = tf.constant(self.logit_adjustment * logit_offsets(item_probability), tf.float32)
        # Every value train_step returns is already the same on all replicas.
        self.distribute_reduction_method = "first"

    def load_towers(self, prefix: str) -> None:
        """Loads the towers and the rating head of a training checkpoint (not its optimizer).

        The item tower's `evidence` neighbour table is computed again from the loaded text
        cache (`ItemTower.refresh_evidence`): the checkpoint's was made with that run's warm
        items and counts, and this model's data (a warm start's) may have others. Its
        `text_whitening` statistics (mu, W) are the checkpoint's, not recomputed: the
        projection was trained on them. Its `gated` log-count table is set again from this
        model's counts and warm items (`ItemTower.refresh_gate`), its gate's a and b are the
        checkpoint's.

        Args:
            prefix: str. a checkpoint prefix (`<run>/checkpoints/best.weights`); every variable of
                this model already created, with the checkpoint's shapes.

        Raises:
            AssertionError: the checkpoint holds other shapes or objects (another model's options).
        """
        towers = tf.train.Checkpoint(user_tower=self.user_tower, item_tower=self.item_tower,
                                     ranking_head=self.ranking_head)
        towers.read(prefix).expect_partial().assert_existing_objects_matched()
        self.item_tower.refresh_evidence()
        self.item_tower.refresh_gate()

    def grow_into(self, target: "TwoTowerModel", encode_rows=(), known_vectors=None) -> int:
        """Copies this model into `target`, the same model built on a catalog that appends items.

        The item tower grows row by row (`ItemTower.grow_into`); the user tower's own weights
        and the rating head are copied as they are. No training step runs.

        Args:
            target: TwoTowerModel. the same options on the longer catalog, variables created.
            encode_rows: array-like of int. `target`'s vocabulary indices whose text must be encoded.
            known_vectors: tuple or None. (rows, vectors) already encoded (`ItemTower.grow_into`).

        Returns:
            int. texts encoded.
        """
        def user_only(model):
            shared = {id(w) for w in model.item_tower.weights}
            return [w for w in model.user_tower.weights if id(w) not in shared]

        for part in (user_only, lambda model: model.ranking_head.weights):
            mine, theirs = part(self), part(target)
            if len(mine) != len(theirs):
                raise ValueError(f"the target model has {len(theirs)} weights where this one has {len(mine)}")
            for source, destination in zip(mine, theirs):
                if source is destination:  # a shared encoder's
                    continue
                if tuple(source.shape) != tuple(destination.shape):
                    raise ValueError(f"weight {source.name}: shape {source.shape} here, {destination.shape} in the target")
                destination.assign(source)
        return self.item_tower.grow_into(target.item_tower, encode_rows, known_vectors)

    def _loss_and_gradients(self, features):
        """This replica's share of the loss and its gradients (loss-scaled under mixed_float16).

        Summed over replicas (what the optimizer's all-reduce does), the gradients are those
        of the global batch's mean loss.

        Returns:
            (loss, regularization_loss, gradients): the loss share, the regularization
            share and one gradient (or None) per trainable variable.
        """
        with tf.GradientTape() as tape:
            loss = self.compute_loss(features, training=True)
            regularization = (tf.nn.scale_regularization_loss(tf.add_n([tf.reduce_sum(x) for x in self.losses]))
                              if self.losses else tf.constant(0.0))
            total = loss + regularization
            if isinstance(self.optimizer, tf.keras.mixed_precision.LossScaleOptimizer):
                total = self.optimizer.get_scaled_loss(total)
        return loss, regularization, tape.gradient(total, self.trainable_variables)

    def train_step(self, data):
        loss, regularization, gradients = self._loss_and_gradients(data)
        # apply_gradients sums the replicas' gradients (and removes the loss scale).
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables))
        return self._logs(loss, regularization, training=True)

    def test_step(self, data):
        return self._logs(self.compute_loss(data, training=False), tf.constant(0.0), training=False)

    def _logs(self, loss, regularization, training):
        loss, regularization = _sum_over_replicas(loss), _sum_over_replicas(regularization)
        # The FactorizedTopK metrics are computed on evaluation only; hide their stale
        # zeros from the training logs.
        logs = {metric.name: metric.result() for metric in self.metrics
                if not (training and metric.name.startswith("factorized_top_k"))}
        logs.update(loss=loss, regularization_loss=regularization, total_loss=loss + regularization)
        return logs

    def call(self, features, training=False):
        """Both towers on a batch of features.

        Returns:
            tuple (tf.Tensor float32 [B, D], tf.Tensor float32 [B, D]). user embeddings and
            target item embeddings.
        """
        return (self.user_tower(features["history"], features.get("history_timestamps"), training=training),
                self.item_tower(features["target"], training=training))

    @tf.function(reduce_retracing=True)
    def embed_users(self, history, timestamps=None):
        """User tower in inference mode, traced once per model. [B, N], [B, N] -> [B, D]."""
        return self.user_tower(history, timestamps, training=False)

    def predict_rating(self, users, items):
        """Rating head over both towers. [B, D], [B, D] -> [B]."""
        return tf.squeeze(self.ranking_head(tf.concat([users, items], axis=-1)), axis=-1)

    def _with_logit_offsets(self, users, candidates, candidate_ids, training):
        """The retrieval task's inputs with `logit_adjustment`: each candidate's logit gets + TAU * log p_j.

        TFRS's Retrieval computes its logits inside, `users @ candidates^T / temperature` (then
        `- log q_j` for log-Q, the accidental hits and the score mask), so the offset goes in as
        one more embedding column, as `item_bias` does: the queries get `temperature`, candidate
        j gets `TAU * log p_j`, and the column's product divided by the temperature is exactly
        `TAU * log p_j`, added after the temperature to every query's logit of j. (Through
        `candidate_sampling_probability` it cannot: TFRS clips that to [1e-6, 1] before its log,
        and `p_j ** -TAU` is above 1.) Gradients are unchanged in form: the column is a constant.

        Args:
            users: tf.Tensor float. [B, D] query embeddings.
            candidates: tf.Tensor float. [M, D] candidate embeddings.
            candidate_ids: tf.Tensor int32. [M] their item indices.
            training: bool. False (evaluation, validation loss) or TAU = 0: the inputs as they are.

        Returns:
            (tf.Tensor [B, D+1], tf.Tensor [M, D+1]), or the inputs unchanged.
        """
        if not training or self.logit_adjustment == 0.0:
            return users, candidates
        column = tf.fill([tf.shape(users)[0], 1], tf.cast(self.temperature, users.dtype))
        offsets = tf.cast(tf.gather(self.logit_offsets, candidate_ids), candidates.dtype)[:, None]
        return tf.concat([users, column], axis=1), tf.concat([candidates, offsets], axis=1)

    def compute_loss(self, features, training=False):
        """This replica's share of the global batch's mean loss.

        Per example: `retrieval_weight * softmax cross-entropy + ranking_weight * squared
        rating error` (0 where the rating is unknown); the sum over this replica's
        examples is divided by the number of examples of the global batch (all replicas),
        so the shares add up to the single-replica loss of the same batch. In training with
        `logit_adjustment` TAU > 0 the softmax's logit of every candidate j (the positive
        included) is `score / temperature + TAU * log p_j` (`- log q_j` too for in-batch).
        """
        target = tf.cast(features["target"], tf.int32)
        if self.negatives == "catalog":
            # One item-tower pass over the catalog per step serves the softmax, the
            # positives and (item-sequence) the history positions. Each query's candidates
            # are its own positive and the catalog: nothing to share across replicas.
            # `lora`: the table holds the last refresh's adapted vectors (stale negatives); the
            # batch's positives are recomputed with gradient through the adapters.
            fresh = target if training and self.item_tower.adapts_text else None
            table = self.item_tower.representation(tf.range(self.item_tower.num_items), training=training,
                                                   fresh_items=fresh)
            users = self.user_tower(features["history"], features.get("history_timestamps"), training=training,
                                    item_table=table)
            embeddings = self.item_tower.finalize(table, tf.range(self.item_tower.num_items))
            positives = tf.gather(embeddings, target)
            catalog_ids = tf.range(1, self.item_tower.num_items, dtype=tf.int32)
            catalog = embeddings[1:]
            batch = tf.shape(target)[0]
            negatives = tf.logical_and(tf.not_equal(catalog_ids[None, :], target[:, None]),
                                       self.item_tower.negative_mask()[None, :])
            if not self.history_negatives:
                negatives = tf.logical_and(negatives, tf.logical_not(in_history(features["history"], catalog_ids)))
            score_mask = tf.concat([tf.cast(tf.eye(batch), tf.bool), negatives], axis=1)
            queries, candidates = self._with_logit_offsets(
                users, tf.concat([positives, catalog], axis=0), tf.concat([target, catalog_ids], axis=0), training)
            retrieval_loss = self.retrieval_task(
                queries, candidates, score_mask=score_mask, compute_metrics=False, compute_batch_metrics=False,
            )
        else:
            users, positives = self(features, training=training)
            # Each query scores the positives of the whole global batch, as on one replica.
            candidates, candidate_ids = gather_across_replicas(positives, target)
            score_mask = None
            if not self.history_negatives:
                own = tf.cast(tf.eye(tf.shape(target)[0], tf.shape(candidate_ids)[0]), tf.bool)
                score_mask = tf.logical_or(tf.logical_not(in_history(features["history"], candidate_ids)), own)
            queries, candidates = self._with_logit_offsets(users, candidates, candidate_ids, training)
            retrieval_loss = self.retrieval_task(
                queries, candidates, candidate_ids=candidate_ids,
                candidate_sampling_probability=tf.gather(self.item_probability, candidate_ids),
                compute_metrics=False, compute_batch_metrics=False, score_mask=score_mask,
            )
        if not training:
            for metric in self.retrieval_task.factorized_metrics:
                metric.update_state(users, positives, true_candidate_ids=target)
        rating = tf.cast(features["rating"], tf.float32)
        known = tf.logical_not(tf.math.is_nan(rating))
        ranking_loss = self.ranking_task(
            labels=tf.where(known, rating, 0.0)[:, None],
            predictions=self.predict_rating(users, positives)[:, None],
            sample_weight=tf.cast(known, tf.float32),
        )
        per_example = self.retrieval_weight * retrieval_loss + self.ranking_weight * ranking_loss
        global_batch = _sum_over_replicas(tf.cast(tf.shape(target)[0], tf.float32))
        return tf.math.divide_no_nan(tf.reduce_sum(per_example), global_batch)


def logit_offsets(item_probability) -> np.ndarray:
    """log p_j of the logit adjustment: each item's share of training targets, add-one smoothed.

    With n_j training targets of item j, S their sum over the C items 1..C and n_min the
    smallest positive n_j, p_j = (n_j + n_min) / (S + C * n_min), computed from the shares
    n_j / S alone as (share_j + m) / (1 + C * m), m the smallest positive share: add-one
    smoothing, (n_j + 1) / (S + C), whenever some item has a single target. An item without
    targets gets log(n_min / (S + C * n_min)): finite, below every trained item's, not the
    log(1e-8) of log-Q's floor (with `--cold-items text` the catalog softmax leaves such
    items out anyway, `ItemTower.negative_mask`; in-batch candidates are targets). A constant
    added to every logit leaves the softmax as it is, so only the ratios of the p_j count.

    Args:
        item_probability: np.ndarray. [C+1] each item's share of training targets (row 0:
            padding, never a candidate).

    Returns:
        np.ndarray float64. [C+1] log p_j, 0 in row 0 and everywhere for no positive share.
    """
    shares = np.asarray(item_probability, np.float64).copy()
    shares[0] = 0.0
    offsets = np.zeros(len(shares))
    positive = shares[1:] > 0
    if not positive.any():
        return offsets
    smallest = shares[1:][positive].min()
    offsets[1:] = np.log((shares[1:] + smallest) / (shares[1:].sum() + (len(shares) - 1) * smallest))
    return offsets


def _replica_context():
    """The replica context when several replicas train in sync, else None."""
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


def _sum_over_replicas(value):
    context = _replica_context()
    return value if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(value))


def gather_across_replicas(embeddings, ids):
    """The in-batch candidates of the global batch, this replica's rows first.

    Under a strategy with several replicas in sync, every replica's positives (and their
    ids, for log-Q and accidental-hit masking) are all-gathered, then rotated so this
    replica's own rows come first: the TFRS Retrieval task takes candidate i as query
    i's positive. The other rows are extra negatives; their order does not change the
    softmax. The gradient of `all_gather` returns each replica the summed gradient of
    its own rows, so the summed update equals the single-replica one.

    Args:
        embeddings: tf.Tensor float32. [b, D] this replica's positive item embeddings.
        ids: tf.Tensor int32. [b] their item indices.

    Returns:
        (tf.Tensor [B, D], tf.Tensor int32 [B]) with B the global batch (b without replicas).
    """
    context = _replica_context()
    if context is None:
        return embeddings, ids
    # tf.identity places each value on this replica's device: a collective takes its
    # destination from the value's device, and input tensors (the ids) have none under
    # a multi-worker strategy ("destinations can not be empty").
    sizes = context.all_gather(tf.identity(tf.shape(ids)[:1]), axis=0)
    offset = tf.reduce_sum(sizes[: context.replica_id_in_sync_group])
    gathered = context.all_gather(tf.identity(embeddings), axis=0)
    gathered_ids = context.all_gather(tf.identity(ids), axis=0)
    return tf.roll(gathered, -offset, axis=0), tf.roll(gathered_ids, -offset, axis=0)
