"""The training pipeline cuts histories per batch and keeps the order of the materialised pipeline."""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import numpy as np
import tensorflow as tf

from tfrec_lm.config import TrainConfig
from tfrec_lm.data.prepare import examples_to_features
from tfrec_lm.data.split import UserSequences, leave_one_out
from tfrec_lm.fitting import training_dataset


def sequences(users: int = 30, seed: int = 0) -> UserSequences:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 25, size=users)
    return UserSequences(
        user_ids=np.array([f"u{u}" for u in range(users)], dtype=object),
        items=[rng.integers(1, 40, size=n).astype(np.int32) for n in lengths],
        timestamps=[np.sort(rng.integers(1, 10_000, size=n)).astype(np.int64) for n in lengths],
        ratings=[rng.integers(1, 6, size=n).astype(np.float32) for n in lengths],
        vocab_size=40,
    )


def materialised(examples, config: TrainConfig) -> tf.data.Dataset:
    """The pipeline before per-batch cutting: every feature row made up front, then shuffled."""
    return (tf.data.Dataset.from_tensor_slices(examples_to_features(examples))
            .shuffle(min(len(examples), 100_000), seed=config.seed, reshuffle_each_iteration=True)
            .batch(config.batch_size))


def batches(dataset, count):
    return [{k: v.numpy() for k, v in batch.items()} for batch in dataset.take(count)]


def test_batches_equal_the_materialised_pipeline_epoch_after_epoch():
    train = leave_one_out(sequences(), max_history=8).train
    config = TrainConfig(batch_size=16, seed=7)
    streamed, reference = training_dataset(train, config), materialised(train, config)
    for _ in range(2):  # each new iterator draws the next order, in both
        got, want = batches(streamed, 100), batches(reference, 100)
        assert len(got) == len(want) == -(-len(train) // 16)
        for a, b in zip(got, want):
            assert sorted(a) == sorted(b)
            for name in b:
                assert a[name].dtype == b[name].dtype
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_steps_per_epoch_pipeline_repeats_with_the_same_order():
    train = leave_one_out(sequences(seed=1), max_history=5).train
    config = TrainConfig(batch_size=8, seed=3, steps_per_epoch=4)
    reference = (tf.data.Dataset.from_tensor_slices(examples_to_features(train))
                 .shuffle(len(train), seed=3, reshuffle_each_iteration=True).repeat().batch(8))
    got, want = batches(training_dataset(train, config), 30), batches(reference, 30)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a["history"], b["history"])
        np.testing.assert_array_equal(a["target"], b["target"])
    resumed = batches(training_dataset(train, config, start=(2, 1)), 3)  # epoch 3, step 2
    np.testing.assert_array_equal(resumed[0]["target"], want[2 * 4 + 1]["target"])
