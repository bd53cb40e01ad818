"""Runs `tfrec_lm.training.train` under a strategy and records what the distributed tests compare.

Used in-process (the one-replica reference) and as a script, because a strategy's devices
must be set up before TensorFlow initialises: `--logical-devices 2` splits the CPU into two
logical devices for `MirroredStrategy`; a multi-worker run is one process per worker with
`TF_CONFIG` set. Every case writes `<out>/<name>.npz`:

- `loss`: the `fit` loss of the single step (the global batch's mean loss);
- `weight_<i>`: every model weight after that step (`model.get_weights()` order);
- `grad_<i>`: the gradient of the global mean loss over a fixed odd-sized batch of 33
  training examples with respect to every trainable variable, computed after training
  through the model's own `_loss_and_gradients` on each replica (the batch split
  17/16 across two replicas) and summed over replicas, as the optimizer sums them;
- `replicas`, `negatives`: the strategy's replicas in sync and the model's negatives;
- `val_ndcg`: the validation NDCG@10 after the step (the callback's scoring outside `fit`);
- `export_top_score`: where the case exports, the top score of `serving_default` for
  a few test histories, beside `memory_top_score`, the in-memory model's.
"""

import tfrec_lm  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

NUM_USERS = 60
STEP_EXAMPLES = 64  # one training step of a 64-example global batch
GRADIENT_EXAMPLES = 33  # odd: two replicas hold 17 and 16 examples


def inputs(directory: Path):
    """(dataset, encoder_factory): the synthetic data and tiny random BERTs of the unit tests."""
    from tfrec_lm.bert import tiny_bert, tiny_tokenizer
    from tfrec_lm.data.synthetic import synthetic_migration

    dataset, _ = synthetic_migration(num_users=NUM_USERS)
    words = re.findall(r"[a-z0-9]+", " ".join(dataset.items["text"]).lower())
    tokenizer = tiny_tokenizer(words, directory / "tokenizer")

    def factory():
        return tiny_bert(tokenizer.vocab_size, seed=0), tokenizer

    return dataset, factory


def case_config(directory: Path, strategy: str, negatives: str, export: bool = False, **changes):
    from tfrec_lm.config import PRESETS, TrainConfig

    values = dict(PRESETS["tiny"])
    values.update(
        output_dir=str(directory / "run"), export_base=str(directory / "exports"), export=export,
        index="brute-force", top_k=5,  # top_k < 10: train() does not evaluate the export itself
        strategy=strategy, negatives=negatives,
        finetune="frozen",  # BERT's own dropout would make fine-tuned runs incomparable
        dropout=0.0, id_dropout=0.0, epochs=1, batch_size=STEP_EXAMPLES, max_train_examples=STEP_EXAMPLES)
    values.update(changes)
    return TrainConfig(**values).validate()


def global_gradients(model, features: dict):
    """Loss and gradients of the global batch `features`, split across the model's replicas."""
    import tensorflow as tf

    strategy = model.distribute_strategy
    count = len(features["target"])

    def shard(context):
        rows = np.array_split(np.arange(count), context.num_replicas_in_sync)[context.replica_id_in_sync_group]
        return {name: tf.constant(value[rows]) for name, value in features.items()}

    def replica(local):
        loss, _, gradients = model._loss_and_gradients(local)
        return loss, [tf.zeros_like(v) if g is None else tf.convert_to_tensor(g)
                      for g, v in zip(gradients, model.trainable_variables)]

    @tf.function
    def step(distributed):
        loss, gradients = strategy.run(replica, args=(distributed,))
        return (strategy.reduce(tf.distribute.ReduceOp.SUM, loss, axis=None),
                [strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None) for g in gradients])

    loss, gradients = step(strategy.experimental_distribute_values_from_function(shard))
    return float(loss), [g.numpy() for g in gradients]


def run_case(directory: Path, strategy: str, negatives: str, export: bool = False, inputs_=None,
             run_dir: Path = None) -> dict:
    """Trains one step under `strategy` and returns the recorded arrays (see the module doc).

    `run_dir` (default `directory`) holds the run's outputs and exports; the workers of a
    multi-worker run share it.
    """
    import tensorflow as tf

    from tfrec_lm.data.prepare import examples_to_features
    from tfrec_lm.evaluation.scoring import user_embeddings
    from tfrec_lm.training import train

    directory.mkdir(parents=True, exist_ok=True)
    dataset, factory = inputs_ or inputs(directory)
    config = case_config(run_dir or directory, strategy, negatives, export=export)
    result = train(config, dataset=dataset, encoder_factory=factory)
    model = result.model
    record = {"loss": np.array(result.history["loss"]), "val_ndcg": np.array(result.validation_ndcg),
              "replicas": np.array(model.distribute_strategy.num_replicas_in_sync), "negatives": np.array(model.negatives)}
    for index, weight in enumerate(model.get_weights()):
        record[f"weight_{index}"] = weight
    features = examples_to_features(result.split.train.take(np.arange(GRADIENT_EXAMPLES)))
    record["gradient_loss"], gradients = global_gradients(model, features)
    for index, gradient in enumerate(gradients):
        record[f"grad_{index}"] = gradient
    if export and result.export_path is not None:
        from tfrec_lm.scann_ops import load_scann_ops  # noqa: F401

        loaded = tf.saved_model.load(str(result.export_path))
        test = result.split.test.take(np.arange(4))
        ids = np.asarray(result.vocab.ids, dtype=object)[test.history].astype(str)
        out = loaded.signatures["serving_default"](
            history_item_ids=tf.constant(ids), history_timestamps=tf.constant(test.history_timestamps))
        record["export_top_score"] = out["scores"].numpy()[:, 0]
        items = model.item_tower(tf.range(model.item_tower.num_items), training=False).numpy()
        scores = user_embeddings(model, test.history, test.history_timestamps) @ items.T
        scores[:, 0] = -np.inf
        for row, history in enumerate(test.history):
            scores[row, history[history > 0]] = -np.inf
        record["memory_top_score"] = scores.max(axis=1)
    return record


def write_shards(dataset, directory: Path) -> tuple:
    """The dataset as two Parquet shards (users split in halves, each user's rows in one shard)
    and an items file. Returns (shards folder, items file)."""
    import pandas as pd

    folder = directory / "interactions"
    folder.mkdir(parents=True, exist_ok=True)
    users = pd.unique(dataset.interactions["user_id"])
    halves = np.array_split(users, 2)
    for index, half in enumerate(halves):
        rows = dataset.interactions[dataset.interactions["user_id"].isin(half)]
        rows.to_parquet(folder / f"part-{index:05d}.parquet", index=False)
    items = dataset.items[["item_id", "text"]].assign(genres=[list(g) for g in dataset.items["genres"]])
    items.to_parquet(directory / "items.parquet", index=False)
    return folder, directory / "items.parquet"


def sharded_config(directory: Path, folder: Path, items: Path, strategy: str = "multi-worker"):
    """The sharded case: `--data files` over a folder of two shards, catalog negatives, no export."""
    return case_config(directory, strategy, "catalog", data="files", interactions=str(folder), items=str(items),
                       max_train_examples=None, epochs=2, steps_per_epoch=None)


def run_sharded(out: Path, run_dir: Path) -> dict:
    """Trains from two Parquet shards under the multi-worker strategy; records what this worker read and trained."""
    from tfrec_lm.training import train

    dataset, factory = inputs(out / "inputs")
    folder, items = write_shards(dataset, out / "data")
    result = train(sharded_config(run_dir, folder, items), encoder_factory=factory)
    record = {"users": np.array(sorted(result.dataset.interactions["user_id"].astype(str).unique())),
              "sources": np.array([r.source for r in result.dataset.reports]),
              "val_ndcg": np.array(result.validation_ndcg), "counts": result.counts,
              "test_all_ndcg": np.array(result.metrics["model"]["all"]["NDCG@10"]),
              "test_all_count": np.array(result.metrics["model"]["all"]["count"]),
              "popular_all_ndcg": np.array(result.metrics["most_popular"]["all"]["NDCG@10"])}
    for index, weight in enumerate(result.model.get_weights()):
        record[f"weight_{index}"] = weight
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logical-devices", type=int, default=0, help="split the CPU into N logical devices")
    parser.add_argument("--cases", default="[]",
                        help='JSON list of [name, strategy, negatives, export], e.g. [["m", "mirrored", "catalog", false]]')
    parser.add_argument("--out", required=True, help="where the .npz files go")
    parser.add_argument("--run-dir", help="outputs and exports of every case (default: under --out)")
    parser.add_argument("--sharded", action="store_true",
                        help="the sharded case instead of --cases: train from two Parquet shards, one per worker")
    args = parser.parse_args(argv)
    import tensorflow as tf

    if args.logical_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.logical_devices)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sharded:
        np.savez(out / "sharded.npz", **run_sharded(out, Path(args.run_dir)))
        return 0
    shared = None
    for name, strategy, negatives, export in json.loads(args.cases):
        if shared is None:
            shared = inputs(out / "inputs")
        run_dir = Path(args.run_dir) / name if args.run_dir else None
        record = run_case(out / name, strategy, negatives, export=export, inputs_=shared, run_dir=run_dir)
        np.savez(out / f"{name}.npz", **record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
