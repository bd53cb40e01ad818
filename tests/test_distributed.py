"""Tests of `--strategy`, `--mixed-precision` and `--jit-compile`.

A two-replica step must equal the one-replica step of the same global batch: the loss,
every weight after the step and the gradient of a fixed batch, for catalog and in-batch
negatives; under `MirroredStrategy` over two logical CPU devices and under
`MultiWorkerMirroredStrategy` with two local worker processes. Strategies need their
devices set up before TensorFlow starts, so those runs happen in subprocesses
(`tests/distributed_helper.py`), started as the module starts; the in-process tests
(configuration, bfloat16, XLA) run meanwhile. Dropout is 0 and the encoder frozen, so
runs are deterministic.
"""

import tfrec_lm  # noqa: F401  (before TensorFlow)

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from conftest import tiny_config
from tfrec_lm.config import PRESETS, TrainConfig
from tfrec_lm.distribute import make_strategy, read_tf_config
from tfrec_lm.errors import ConfigError
from tfrec_lm.train import build_parser, config_from_args, main
from tfrec_lm.fitting import make_optimizer
from tfrec_lm.training import train

REPO = Path(__file__).resolve().parents[1]
HELPER = Path(__file__).with_name("distributed_helper.py")


def helper_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **extra)
    return env


def load(path: Path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def assert_same_step(one: dict, two: dict):
    """`two` (two replicas) trained and differentiates exactly as `one` (one replica)."""
    assert int(one["replicas"]) == 1 and int(two["replicas"]) == 2
    np.testing.assert_allclose(two["loss"], one["loss"], rtol=1e-5)
    weights = [key for key in one if key.startswith("weight_")]
    assert weights and sorted(weights) == sorted(k for k in two if k.startswith("weight_"))
    for key in weights:
        # One AdamW step moves a weight by about the learning rate (1e-3).
        np.testing.assert_allclose(two[key], one[key], rtol=1e-4, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(two["gradient_loss"], one["gradient_loss"], rtol=1e-5)
    gradients = [key for key in one if key.startswith("grad_")]
    assert gradients and len(gradients) == len([k for k in two if k.startswith("grad_")])
    scale = max(float(np.abs(one[key]).max()) for key in gradients)
    assert scale > 1e-3
    for key in gradients:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-3, atol=1e-5 * scale, err_msg=key)
    # Scoring outside fit (the validation callback) sees the same model.
    np.testing.assert_allclose(two["val_ndcg"], one["val_ndcg"], atol=1e-6)


# ---------------------------------------------------------------- subprocesses, started first

MIRRORED_CASES = [
    ["one_catalog", "default", "catalog", False],
    ["two_catalog", "mirrored", "catalog", True],
    ["one_in_batch", "default", "in-batch", False],
    ["two_in_batch", "mirrored", "in-batch", False],
]
MULTI_WORKER_CASES = [["two_in_batch", "multi-worker", "in-batch", False]]


def free_ports(count: int) -> list:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("localhost", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Launched:
    """Subprocesses started when the module starts; the in-process tests run meanwhile."""

    def __init__(self, root: Path):
        self.root = root
        self.processes = {}
        self.start("mirrored", ["--logical-devices", "2", "--cases", json.dumps(MIRRORED_CASES),
                                "--out", str(root / "mirrored")], helper_env())
        cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
        for index in range(2):
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            self.start(f"worker{index}", ["--cases", json.dumps(MULTI_WORKER_CASES),
                                          "--out", str(root / f"worker{index}"), "--run-dir", str(root / "shared")],
                       helper_env(TF_CONFIG=tf_config))
        cluster = {"worker": [f"localhost:{port}" for port in free_ports(2)]}
        for index in range(2):  # a second cluster: each worker reads its own Parquet shard
            tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            self.start(f"sharded{index}", ["--sharded", "--out", str(root / f"sharded{index}"),
                                           "--run-dir", str(root / "sharded_run")], helper_env(TF_CONFIG=tf_config))

    def start(self, name, args, env):
        self.processes[name] = subprocess.Popen([sys.executable, str(HELPER), *args], env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self, *names):
        for name in names:
            log = self.processes[name].communicate(timeout=600)[0]
            assert self.processes[name].returncode == 0, f"{name}:\n{log[-4000:]}"

    def stop(self):
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.communicate()


@pytest.fixture(scope="module", autouse=True)
def launched(tmp_path_factory):
    runs = Launched(tmp_path_factory.mktemp("distributed"))
    yield runs
    runs.stop()


@pytest.fixture(scope="module")
def mirrored(launched):
    launched.wait("mirrored")
    return {name: load(launched.root / "mirrored" / f"{name}.npz") for name, *_ in MIRRORED_CASES}


@pytest.fixture(scope="module")
def sharded(launched):
    launched.wait("sharded0", "sharded1")
    return launched.root, [load(launched.root / f"sharded{index}" / "sharded.npz") for index in range(2)]


@pytest.fixture(scope="module")
def multi_worker(launched):
    launched.wait("worker0", "worker1")
    return launched.root, [load(launched.root / f"worker{index}" / "two_in_batch.npz") for index in range(2)]


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("changes,match", [
    ({"strategy": "horovod"}, "strategy"),
    ({"mixed_precision": "float16"}, "mixed_precision"),
    ({"jit_compile": True, "user_tower": "history-text"}, "item-sequence"),
])
def test_invalid_performance_options(changes, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig().replace(**changes)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_dict(changes)


def test_jit_compile_must_be_a_boolean():
    with pytest.raises(ConfigError, match="jit_compile"):
        TrainConfig.from_dict({"jit_compile": "yes"})


@pytest.mark.parametrize("tf_config,match", [
    (None, "needs the TF_CONFIG"),
    ("{not json", "not valid JSON"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}}), "`task` object"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 1}}), "index 1"),
    (json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"type": "chief", "index": 0}}), "'chief'"),
    (json.dumps({"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}), "host:port"),
    (json.dumps({"cluster": {"ps": ["h:1"], "worker": ["h:2"]}, "task": {"type": "worker", "index": 0}}), "ps"),
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, capsys, tf_config, match):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ConfigError, match=match):
        read_tf_config()
    # Validating a config never reads the environment; the strategy is where TF_CONFIG is read.
    config = config_from_args(build_parser().parse_args(["--strategy", "multi-worker"]))
    with pytest.raises(ConfigError, match=match):
        make_strategy(config.strategy)
    # The CLI stops with one line and exit code 2 before it reads any data.
    assert main(["--strategy", "multi-worker", "--data", "files", "--interactions", "/nonexistent.csv"]) == 2
    assert match in capsys.readouterr().err


def test_valid_tf_config_passes(monkeypatch):
    value = {"cluster": {"chief": ["a:1"], "worker": ["b:2", "c:3"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(value))
    assert TrainConfig().replace(strategy="multi-worker").strategy == "multi-worker"
    assert read_tf_config() == value
    monkeypatch.delenv("TF_CONFIG")
    TrainConfig().replace(strategy="mirrored")  # no TF_CONFIG needed


def test_flags_and_gpu_preset():
    config = config_from_args(build_parser().parse_args(
        ["--strategy", "mirrored", "--mixed-precision", "mixed_float16", "--jit-compile"]))
    assert (config.strategy, config.mixed_precision, config.jit_compile) == ("mirrored", "mixed_float16", True)
    assert TrainConfig().strategy == "default" and TrainConfig().mixed_precision == "float32"
    gpu = TrainConfig.from_dict(PRESETS["gpu"])
    assert gpu.mixed_precision == "mixed_bfloat16" and gpu.negatives == "in-batch"


def test_float16_wraps_the_optimizer_in_loss_scaling():
    scaled = make_optimizer(TrainConfig(mixed_precision="mixed_float16"), total_steps=10)
    assert isinstance(scaled, tf.keras.mixed_precision.LossScaleOptimizer)
    for name in ("float32", "mixed_bfloat16"):
        assert not isinstance(make_optimizer(TrainConfig(mixed_precision=name), total_steps=10),
                              tf.keras.mixed_precision.LossScaleOptimizer)


def test_cosine_decay_runs_the_learning_rate_down_to_zero_over_the_run():
    config = TrainConfig(learning_rate=2e-3, lr_decay="cosine")
    optimizer = make_optimizer(config, total_steps=100)
    weight, rates = tf.Variable([1.0]), []
    for step in (0, 50, 100, 150):
        optimizer.iterations.assign(step)
        optimizer.apply_gradients([(tf.constant([0.0]), weight)])  # the rate of this step
        rates.append(round(float(optimizer.learning_rate), 6))
    assert rates == [2e-3, 1e-3, 0.0, 0.0]
    constant = make_optimizer(TrainConfig(learning_rate=2e-3, lr_decay="constant"))
    assert float(constant.learning_rate) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="total steps"):
        make_optimizer(config)
    assert config_from_args(build_parser().parse_args(["--lr-decay", "cosine"])).lr_decay == "cosine"


# ---------------------------------------------------------------- mixed precision and XLA on CPU


def test_mixed_bfloat16_trains_with_float32_outputs(synthetic, encoder_factory, tmp_path):
    # In-batch negatives: the TFRS accidental-hit masking it uses broke under a bfloat16 task.
    config = tiny_config(tmp_path, mixed_precision="mixed_bfloat16", negatives="in-batch", finetune="frozen",
                         max_train_examples=128)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    model = result.model
    assert np.isfinite(result.history["loss"]).all() and len(result.history["loss"]) == 1
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored after the run
    # The towers computed in bfloat16 (the BERT and the sequence transformer) ...
    assert model.user_tower.composer.sequence_encoder.compute_dtype == "bfloat16"
    assert model.item_tower.encoder.bert.compute_dtype == "bfloat16"
    # ... and their outputs, the rating head and the logits are float32.
    users, items = model({"history": np.array([[1, 2, 0]], np.int32), "target": np.array([3], np.int32),
                          "history_timestamps": np.array([[10, 20, 0]], np.int64)})
    assert users.dtype == tf.float32 and items.dtype == tf.float32
    assert model.predict_rating(users, items).dtype == tf.float32
    assert np.isfinite(result.validation_ndcg).all()


def test_jit_compile_trains(synthetic, encoder_factory, tmp_path):
    config = tiny_config(tmp_path, jit_compile=True, negatives="catalog", finetune="frozen", dropout=0.0,
                         max_train_examples=128)
    result = train(config, dataset=synthetic, encoder_factory=encoder_factory)
    assert result.model._jit_compile is True
    assert np.isfinite(result.history["loss"]).all()
    assert np.isfinite(result.validation_ndcg).all()


# ---------------------------------------------------------------- MirroredStrategy, two logical CPUs

@pytest.mark.parametrize("negatives", ["catalog", "in-batch"])
def test_mirrored_step_equals_one_replica(mirrored, negatives):
    one, two = mirrored[f"one_{negatives.replace('-', '_')}"], mirrored[f"two_{negatives.replace('-', '_')}"]
    assert str(one["negatives"]) == str(two["negatives"]) == negatives
    assert_same_step(one, two)


def test_export_after_mirrored_training_matches_the_model(mirrored):
    two = mirrored["two_catalog"]
    np.testing.assert_allclose(two["export_top_score"], two["memory_top_score"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- MultiWorkerMirroredStrategy, two processes


def test_multi_worker_step_equals_one_replica(multi_worker, mirrored):
    _, workers = multi_worker
    for worker in workers:
        assert str(worker["negatives"]) == "in-batch"
        assert_same_step(mirrored["one_in_batch"], worker)


def test_multi_worker_only_the_chief_writes(multi_worker):
    root, _ = multi_worker
    run = root / "shared" / "two_in_batch" / "run"
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["replicas"] == 2
    assert list((run / "checkpoints").glob("best.weights*"))
    leftovers = [p for p in run.rglob("*") if "workertemp" in p.name]
    assert not leftovers, leftovers
    assert sorted(p.name for p in run.iterdir()) == ["catalog.parquet", "checkpoints", "metrics.json", "tensorboard",
                                                      "validation.npz"]


# ---------------------------------------------------------------- sharded input, two processes


def test_each_worker_reads_only_its_own_shard(sharded):
    root, workers = sharded
    for index, worker in enumerate(workers):
        assert [Path(p).name for p in worker["sources"]] == ["items.parquet", f"part-{index:05d}.parquet"]
    users = [set(worker["users"].tolist()) for worker in workers]
    assert users[0] and users[1] and not users[0] & users[1]
    frames = [pd.read_parquet(root / "sharded0" / "data" / "interactions" / f"part-{i:05d}.parquet") for i in range(2)]
    assert users == [set(frame["user_id"]) for frame in frames]


def test_sharded_workers_train_one_model_on_global_counts(sharded):
    root, workers = sharded
    weights = [key for key in workers[0] if key.startswith("weight_")]
    assert weights
    for key in weights:  # in sync after every step
        np.testing.assert_array_equal(workers[0][key], workers[1][key], err_msg=key)
    frames = pd.concat([pd.read_parquet(root / "sharded0" / "data" / "interactions" / f"part-{i:05d}.parquet")
                        for i in range(2)])
    for worker in workers:  # popularity over both shards, not the worker's own
        assert worker["counts"].sum() == len(frames) - 2 * frames["user_id"].nunique()
        np.testing.assert_array_equal(worker["val_ndcg"], workers[0]["val_ndcg"])
    summary = json.loads((root / "sharded_run" / "run" / "metrics.json").read_text())
    assert summary["replicas"] == 2 and summary["train_examples"] == len(frames) - 3 * frames["user_id"].nunique()
    assert list(summary["stages"]) == ["data", "model", "fit", "evaluation", "export"]  # train() times its stages


def test_sharded_evaluation_equals_one_process_over_all_data(sharded):
    """The gathered validation and test metrics are those of one process scoring every user."""
    import distributed_helper as helper

    from tfrec_lm.data.prepare import prepare_data
    from tfrec_lm.evaluation.metrics import full_catalog_ranks, ranking_metrics
    from tfrec_lm.evaluation.scoring import evaluate_test, score_catalog
    from tfrec_lm.models.factory import build_for_training

    root, workers = sharded
    dataset, factory = helper.inputs(root / "sharded0" / "inputs")
    data_dir = root / "sharded0" / "data"
    config = helper.sharded_config(root / "sharded_run", data_dir / "interactions", data_dir / "items.parquet",
                                   strategy="default")
    data = prepare_data(config)
    assert len(data.split.test) == int(workers[0]["test_all_count"])  # every user, from both shards
    model = build_for_training(config, data, factory, tf.distribute.get_strategy())
    model.load_weights(str(root / "sharded_run" / "run" / "checkpoints" / "best.weights")).expect_partial()
    evaluation = evaluate_test(model, data)
    for worker in workers:
        np.testing.assert_allclose(float(worker["test_all_ndcg"]), evaluation.metrics["model"]["all"]["NDCG@10"],
                                   rtol=1e-6)
        np.testing.assert_allclose(float(worker["popular_all_ndcg"]),
                                   evaluation.metrics["most_popular"]["all"]["NDCG@10"], rtol=1e-9)
    validation = data.split.validation
    ranks = full_catalog_ranks(score_catalog(model, validation), validation.target, validation.exclude)
    assert float(ranking_metrics(ranks, ks=(10,))["NDCG@10"]) == pytest.approx(max(workers[0]["val_ndcg"]), rel=1e-6)
