"""The model stage of training: encoders, towers and the two-tower model a config describes."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from tfrec_lm.config import TrainConfig
from tfrec_lm.data.prepare import PreparedData, examples_to_features
from tfrec_lm.layers.bert_text_encoder import BertTextEncoder
from tfrec_lm.layers.exported_text_encoder import ExportedTextEncoder
from tfrec_lm.layers.history_text_composer import HistoryTextComposer
from tfrec_lm.models.history_text_user_tower import HistoryTextUserTower
from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower
from tfrec_lm.models.item_tower import ItemTower
from tfrec_lm.models.precision import dtype_policy
from tfrec_lm.models.text_tuning import consecutive_pairs, tune_text_encoder
from tfrec_lm.models.two_tower import TwoTowerModel
from tfrec_lm.text import tokenize_items

EncoderFactory = Callable[[], tuple]  # () -> (TFBertModel or ExportedTextEncoder, tokenizer)


def pretrained_encoder_factory(spec: str) -> EncoderFactory:
    """Loads the pretrained encoder on the first call; each call returns an independent copy.

    Loading waits for the first call so that the encoder's variables are created where
    the model is built (inside the distribution strategy's scope).

    Args:
        spec: str. `--encoder`: an alias, a folder or a hub name (`tfrec_lm.bert.load_bert`).

    Returns:
        EncoderFactory. `() -> (TFBertModel, tokenizer)`.
    """
    from tfrec_lm.bert import load_bert

    loaded = []

    def factory():
        if not loaded:
            bert, tokenizer = load_bert(spec)
            loaded.append((bert, tokenizer, bert.get_weights()))
            return bert, tokenizer
        bert, tokenizer, weights = loaded[0]
        copy = type(bert)(bert.config)
        copy(copy.dummy_inputs)
        copy.set_weights(weights)
        return copy, tokenizer

    return factory


def checkpoint_encoder_factory(spec: str) -> EncoderFactory:
    """Encoders whose weights a training checkpoint will restore: the architecture of `spec`, built, random.

    A catalog update restores every encoder weight from the run's checkpoint (which holds the
    pretrained or tuned weights the run used; `TwoTowerModel.load_towers` fails on any weight it
    lacks), so reading and converting the pretrained checkpoint first would be wasted.

    Args:
        spec: str. `--encoder` (`tfrec_lm.bert.bert_architecture`).

    Returns:
        EncoderFactory. `() -> (TFBertModel, tokenizer)`, a new encoder each call.
    """
    from tfrec_lm.bert import bert_architecture

    return lambda: bert_architecture(spec)


def exported_encoder_factory(path) -> EncoderFactory:
    """A run's frozen item encoder as its first catalog update exported it (`ExportedTextEncoder`).

    It loads without transformers; every call returns the same encoder (nothing trains it).
    Only an item-sequence user tower over a frozen item encoder can be built on it
    (`build_model` refuses a history-text tower, which runs a BERT of its own).

    Args:
        path: str | Path. the folder (`<run>/text_encoder`).

    Returns:
        EncoderFactory. `() -> (ExportedTextEncoder, SavedTokenizer)`.
    """
    loaded = []

    def factory():
        if not loaded:
            encoder = ExportedTextEncoder(path, name="item_text_encoder")
            loaded.append((encoder, encoder.tokenizer()))
        return loaded[0]

    return factory


def exportable_item_encoder(config: TrainConfig) -> bool:
    """Whether a run of `config` needs its item encoder only to encode new item texts, so that the
    encoder can be exported and stand in for the BERT (`ExportedTextEncoder`): a frozen item encoder
    under the item-sequence user tower, with the item text on. bool."""
    return config.finetune == "frozen" and config.user_tower == "item-sequence" and bool(config.item_text)


def build_model(config: TrainConfig, item_texts, encoder_factory: EncoderFactory,
                item_probability: Optional[np.ndarray] = None, warm_items: Optional[np.ndarray] = None,
                encode_texts: bool = True, tuning_pairs: Optional[np.ndarray] = None,
                item_counts: Optional[np.ndarray] = None, verbose: int = 0) -> TwoTowerModel:
    """Builds towers and tasks for `config` around fresh encoder copies.

    Layers take the Keras global dtype policy when created: call it under
    `dtype_policy(config.mixed_precision)` (as `build_for_training` does).

    Args:
        config: TrainConfig. the model options.
        item_texts: list of str. [C] item texts in vocabulary order (item 1 first).
        encoder_factory: EncoderFactory. called once per BERT the towers need.
        item_probability: np.ndarray or None. [C+1] each item's share of training targets (log-Q).
        warm_items: np.ndarray bool or None. [C+1] items with training positives; with
            `config.cold_items == "text"` the others are cold (text and a no-ID vector, no
            negatives). None with `text`: every item but the padding is warm.
        encode_texts: bool. fill a frozen encoder's text-vector cache now; False when the
            caller restores or fills it (a checkpoint holds it).
        tuning_pairs: np.ndarray int or None. [P, 2] items consumed one after the other; with
            `config.text_tuning_steps` the item encoder's top layers are tuned on them first
            (`text_tuning.tune_text_encoder`) and the cache filled from the tuned encoder. None:
            no tuning (a catalog update restores the tuned weights from the checkpoint).
        item_counts: np.ndarray or None. [C+1] training interactions per item: the weights of
            `config.cold_neighbours`' mix (None: equal), the evidence of `--item-fusion evidence`
            and the gate's n of `--item-fusion gated` (which need them).

    Returns:
        TwoTowerModel. With a frozen encoder and `encode_texts` the item text vectors are cached.
    """
    bert, tokenizer = encoder_factory()
    tokens = tokenize_items(item_texts, tokenizer, config.max_item_tokens)
    if isinstance(bert, ExportedTextEncoder):  # a catalog update's: the frozen encoder, already whole
        if not exportable_item_encoder(config):
            raise ValueError(f"an exported text encoder stands in for a frozen item encoder under an item-sequence "
                             f"user tower, not --finetune {config.finetune} with --user-tower {config.user_tower}")
        item_encoder = bert
    else:
        item_encoder = BertTextEncoder(bert, finetune=config.finetune, trainable_layers=config.trainable_layers,
                                       lora_rank=config.lora_rank, lora_alpha=config.lora_alpha,
                                       name="item_text_encoder")
    token_rows = tokens.with_special_tokens()
    if config.cold_items == "text" and warm_items is None:
        warm_items = np.arange(len(token_rows)) > 0
    item_tower = ItemTower(item_encoder, token_rows, embedding_dim=config.embedding_dim,
                           use_item_ids=config.item_ids, dropout=config.dropout, use_text=config.item_text,
                           normalize=config.similarity == "cosine",
                           unique_items=not config.jit_compile, trim_padding=not config.jit_compile,  # XLA: static shapes
                           warm_items=warm_items if config.cold_items == "text" else None,
                           id_dropout=config.id_dropout if config.cold_items == "text" else 0.0,
                           fusion=config.item_fusion, id_lr_multiplier=config.id_lr_multiplier,
                           bias=config.item_bias, bias_scale=config.temperature,
                           cold_neighbours=config.cold_neighbours if config.cold_items == "text" else 0,
                           cold_popularity=config.cold_popularity, item_counts=item_counts,
                           evidence_shrinkage=config.evidence_shrinkage,
                           text_whitening=config.text_whitening,
                           lora_negative_samples=config.lora_negative_samples, name="item_tower")
    item_tower.tokenizer = tokenizer  # what made `token_rows`; a run exports it beside its encoder
    if config.user_tower == "item-sequence":
        user_tower = ItemSequenceUserTower(item_tower, max_history=config.max_history,
                                           num_blocks=config.num_blocks, num_heads=config.num_heads,
                                           dropout=config.dropout, normalize=config.similarity == "cosine",
                                           pooling=config.sequence_pooling,
                                           time_features=config.reads_item_ages, long_short=config.long_short,
                                           short_window=config.short_window, bias_column=config.item_bias,
                                           name="user_tower")
    else:
        history_bert, _ = encoder_factory()
        history_encoder = BertTextEncoder(history_bert, finetune=config.finetune,
                                          trainable_layers=config.trainable_layers, name="history_text_encoder")
        composer = HistoryTextComposer(tokens.token_ids, tokens.lengths, tokens.cls_id, tokens.sep_id,
                                       max_tokens=config.history_tokens, name="history_text_composer")
        user_tower = HistoryTextUserTower(history_encoder, composer, embedding_dim=config.embedding_dim,
                                          dropout=config.dropout, normalize=config.similarity == "cosine",
                                          bias_column=config.item_bias, name="user_tower")
    model = TwoTowerModel(user_tower, item_tower, negatives=config.negatives, temperature=config.temperature,
                          retrieval_weight=config.retrieval_weight, ranking_weight=config.ranking_weight,
                          item_probability=item_probability, history_negatives=config.history_negatives,
                          logit_adjustment=config.logit_adjustment)
    tuned = None
    if config.text_tuning_steps and tuning_pairs is not None:
        tuned = tune_text_encoder(item_encoder, token_rows, tuning_pairs, config.text_tuning_steps,
                                  layers=config.text_tuning_layers, batch_size=config.text_tuning_batch_size,
                                  learning_rate=config.text_tuning_learning_rate, seed=config.seed)
    if item_tower.adapts_text and encode_texts:
        # The lower states are computed once; the table (at B = 0 the frozen vectors) comes from them.
        item_tower.prepare_lora()
        item_tower.refresh_adapted_table()
    elif item_tower.text_cache is not None and encode_texts:
        cache_dir = None
        if config.cache_text_vectors:
            from tfrec_lm.assets import cache_dir as asset_cache_dir

            cache_dir = asset_cache_dir() / "text_vectors"
        item_tower.refresh_cache(cache_dir=cache_dir, vectors=None if tuned is None else tuned.vectors,
                                 verbose=verbose)
    return model


def create_variables(model: TwoTowerModel, features: dict) -> None:
    """Creates every model variable now, eagerly, by running the model (and its rating head) once.

    Built lazily inside a replica's first step, the random initialisers would draw
    differently under each strategy; and a warm start restores all variables at once.

    Args:
        model: TwoTowerModel. a freshly built model.
        features: dict. a small batch: `history` int32 [B, H], `history_timestamps` int64
            [B, H], `target` int32 [B] (e.g. two rows of `examples_to_features`).
    """
    users, items = model(features, training=False)
    model.predict_rating(users, items)


def build_for_training(config: TrainConfig, data: PreparedData, encoder_factory: Optional[EncoderFactory],
                       strategy, tune_text: bool = True, verbose: int = 0) -> TwoTowerModel:
    """The model stage: the model of `config`, every variable created, under `strategy` and the dtype policy.

    Variables (mirrored under a strategy) are created in the strategy's scope. Layers take
    the global dtype policy when they are created, so every layer is created (and built)
    under `--mixed-precision`'s; the loss layers that TFRS creates inside its tasks while
    tracing the training step are then float32, as the logits.

    Args:
        config: TrainConfig. the run's options.
        data: PreparedData. the data stage's result (item texts, training targets and rows).
        encoder_factory: EncoderFactory or None. the pretrained `config.encoder` when None.
        strategy: tf.distribute.Strategy. where variables live.
        tune_text: bool. run `--text-tuning-steps` on the training rows' consecutive pairs; False
            when a checkpoint will replace the encoder's weights anyway (a finished run).
        verbose: int. 1: a progress bar while the catalog's texts are encoded.

    Returns:
        TwoTowerModel. built, not compiled.
    """
    encoder_factory = encoder_factory or pretrained_encoder_factory(config.encoder)
    tuning_pairs = None
    if config.text_tuning_steps and tune_text:
        tuning_pairs = consecutive_pairs(data.train_examples.history, data.train_examples.target)
    target_counts = data.target_counts.astype(np.float64)
    with strategy.scope():
        with dtype_policy(config.mixed_precision):
            model = build_model(config, data.dataset.items["text"].tolist(), encoder_factory,
                                item_probability=target_counts / max(target_counts.sum(), 1.0),
                                warm_items=target_counts > 0, tuning_pairs=tuning_pairs, item_counts=data.counts,
                                verbose=verbose)
            create_variables(model, examples_to_features(data.train_examples.take(np.arange(2))))
            if model.item_tower.bias:
                model.item_tower.item_bias.assign(log_prior_bias(target_counts))
    return model


def log_prior_bias(target_counts: np.ndarray) -> np.ndarray:
    """Initial item biases: log of each item's share of training targets, centred on the warm items.

    The softmax then starts from the popularity prior; centring keeps the typical item (and
    the no-ID bias of cold items, initialised at 0) at 0. Items without targets get the
    lowest warm value (they are cold, and use the no-ID bias anyway).

    Args:
        target_counts: np.ndarray. [C+1] training targets per item (row 0: padding).

    Returns:
        np.ndarray float32. [C+1].
    """
    counts = np.asarray(target_counts, np.float64)
    warm = counts > 0
    warm[0] = False
    if not warm.any():
        return np.zeros(len(counts), np.float32)
    logs = np.log(counts[warm] / counts[warm].sum())
    bias = np.full(len(counts), logs.min() - logs.mean())
    bias[warm] = logs - logs.mean()
    bias[0] = 0.0
    return bias.astype(np.float32)
