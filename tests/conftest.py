"""Shared fixtures of the model, layer and export tests.

Everything runs on tiny randomly initialised BERTs (`tiny_bert`) with a WordPiece
vocabulary built from the synthetic catalog's words (`tiny_tokenizer`), on the
`synthetic_migration` data. Training runs are expensive to trace, so each one is a
session fixture shared by every test that needs it.
"""

import tfrec_lm  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import dataclasses
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf  # noqa: F401  (after tfrec_lm)

from tfrec_lm import assets
from tfrec_lm.bert import tiny_bert, tiny_tokenizer
from tfrec_lm.config import PRESETS, TrainConfig
from tfrec_lm.data.synthetic import synthetic_migration

_TEST_CACHE = "_tfrec_lm_test_cache"


def pytest_configure(config):
    """Gives the test run a cache folder of its own, so no test writes into the user's cache.

    `$TFREC_LM_CACHE` points at a fresh temporary folder for the whole run (subprocesses
    inherit it). Assets that are already complete in the user's cache are linked in and
    only read (a complete asset is never rewritten); missing ones are fetched into the
    temporary folder. Everything else a test caches (text vectors) stays there and is
    removed with it.
    """
    user_cache = assets.cache_dir()
    test_cache = Path(tempfile.mkdtemp(prefix="tfrec_lm-test-cache-"))
    for name in assets.ASSETS:
        if assets.asset_state(name, user_cache) == "ready":
            (test_cache / name).symlink_to(user_cache / name, target_is_directory=True)
    os.environ["TFREC_LM_CACHE"] = str(test_cache)
    setattr(config, _TEST_CACHE, test_cache)


def pytest_unconfigure(config):
    test_cache = getattr(config, _TEST_CACHE, None)
    if test_cache is not None:
        shutil.rmtree(test_cache, ignore_errors=True)  # removes the links, never what they point to


# 60 users x 16 interactions over 48 items in 4 categories; the users switch category
# halfway, so a model that follows recent interests beats popularity by a wide margin.
NUM_USERS = 60


def tiny_two_tower(item_tower):
    """A two-tower model around `item_tower` (a small item-sequence user tower, H = 3, no rating loss), its
    variables created by one probe call: what a checkpoint round trip of the item tower needs."""
    from tfrec_lm.models.item_sequence_user_tower import ItemSequenceUserTower
    from tfrec_lm.models.two_tower import TwoTowerModel

    user = ItemSequenceUserTower(item_tower, max_history=3, num_heads=2, dropout=0.0, time_features=False)
    model = TwoTowerModel(user, item_tower, negatives="catalog", ranking_weight=0.0)
    model({"history": tf.constant([[1, 2, 0]]), "history_timestamps": tf.zeros([1, 3], tf.int64),
           "target": tf.constant([3])})
    return model


def tiny_config(directory, **changes) -> TrainConfig:
    """The `tiny` preset, silent and local: outputs under `directory`, no export."""
    values = dict(PRESETS["tiny"])
    values.update(output_dir=str(directory / "run"), export_base=str(directory / "exports"), export=False)
    values.update(changes)
    return TrainConfig(**values).validate()


@dataclasses.dataclass
class TrainedRun:
    """A `train()` result with every model variable's value from before `fit`.

    Attributes:
        result: tfrec_lm.training.TrainResult.
        config: TrainConfig.
        initial: list of (tf.Variable, np.ndarray). each model variable and its
            value right after the model was built (before the first step).
    """

    result: object
    config: TrainConfig
    initial: list

    @property
    def model(self):
        return self.result.model

    def changed(self, variable) -> bool:
        for var, value in self.initial:
            if var is variable:
                return not np.array_equal(var.numpy(), value)
        raise KeyError(variable.name)


def run_training(config: TrainConfig, dataset, encoder_factory) -> TrainedRun:
    """`tfrec_lm.training.train`, stage by stage, with a snapshot of the model's weights
    between the model stage (every variable created) and the fit stage.
    """
    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.distribute import WorkerOutputs, make_strategy
    from tfrec_lm.evaluation.scoring import evaluate_test
    from tfrec_lm.fitting import fit
    from tfrec_lm.models.factory import build_for_training
    from tfrec_lm.training import StageClock, export_and_record

    config.validate()
    strategy = make_strategy(config.strategy)
    outputs = WorkerOutputs(strategy, config.output_dir, config.export_base)
    stages = StageClock()
    try:
        tf.keras.utils.set_random_seed(config.seed)
        data = prepare_data(config, dataset)
        stages.done("data")
        model = build_for_training(config, data, encoder_factory, strategy)
        stages.done("model")
        initial = [(v, v.numpy().copy()) for v in model.variables]
        fitted = fit(config, model, data, strategy, outputs.output_dir)
        stages.done("fit")
        evaluation = evaluate_test(model, data)
        stages.done("evaluation")
        result = export_and_record(config, model, data, fitted, evaluation, strategy, outputs, stages)
    finally:
        outputs.cleanup()
    return TrainedRun(result=result, config=config, initial=initial)


@pytest.fixture(scope="session")
def synthetic():
    """tfrec_lm Dataset: synthetic users who migrate between item categories."""
    dataset, _ = synthetic_migration(num_users=NUM_USERS)
    return dataset


@pytest.fixture(scope="session")
def tokenizer(synthetic, tmp_path_factory):
    """WordPiece tokenizer over the words of the synthetic item texts (punctuation split off)."""
    words = re.findall(r"[a-z0-9]+", " ".join(synthetic.items["text"]).lower())
    return tiny_tokenizer(words, tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def encoder_factory(tokenizer):
    """`train`'s encoder factory: a fresh, independent tiny BERT on every call."""

    def factory():
        return tiny_bert(tokenizer.vocab_size, seed=0), tokenizer

    return factory


@pytest.fixture(scope="session")
def item_sequence_run(synthetic, encoder_factory, tmp_path_factory):
    """Item-sequence tower, frozen encoder, catalog negatives, trained long enough to learn.

    Dropout is off: with a random (untrained) BERT the category signal in the text
    vectors is small and dropout noise on them slows learning a lot.
    """
    config = tiny_config(tmp_path_factory.mktemp("item_sequence"), user_tower="item-sequence",
                         finetune="frozen", negatives="catalog", epochs=8, patience=8, dropout=0.0)
    return run_training(config, synthetic, encoder_factory)


@pytest.fixture(scope="session")
def history_text_run(synthetic, encoder_factory, tmp_path_factory):
    """History-text tower, frozen encoders, catalog negatives, one epoch."""
    config = tiny_config(tmp_path_factory.mktemp("history_text"), user_tower="history-text",
                         finetune="frozen", negatives="catalog", epochs=1)
    return run_training(config, synthetic, encoder_factory)


@pytest.fixture(scope="session")
def in_batch_top_k_run(synthetic, encoder_factory, tmp_path_factory):
    """Item-sequence tower, top-1 fine-tuning, in-batch negatives, one epoch."""
    config = tiny_config(tmp_path_factory.mktemp("in_batch_top_k"), user_tower="item-sequence",
                         finetune="top-k", trainable_layers=1, negatives="in-batch", epochs=1)
    return run_training(config, synthetic, encoder_factory)


@pytest.fixture(scope="session")
def history_text_full_run(synthetic, encoder_factory, tmp_path_factory):
    """History-text tower, full fine-tuning, in-batch negatives, one epoch."""
    config = tiny_config(tmp_path_factory.mktemp("history_text_full"), user_tower="history-text",
                         finetune="full", negatives="in-batch", epochs=1)
    return run_training(config, synthetic, encoder_factory)
