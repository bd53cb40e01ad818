"""`tf.distribute` strategies of `--strategy`, TF_CONFIG checks and chief-only writing.

`--strategy default` trains on one device (TensorFlow's default strategy), `mirrored`
on every local GPU (or CPU device) with `tf.distribute.MirroredStrategy`, and
`multi-worker` on the cluster that the `TF_CONFIG` environment variable describes, with
`tf.distribute.MultiWorkerMirroredStrategy`. `batch_size` is always the global batch.

TensorFlow is imported lazily: `read_tf_config` runs during config validation.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from tfrec_lm.errors import ConfigError

logger = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^\S+:\d{1,5}$")
_TASK_TYPES = ("chief", "worker")
_STRATEGIES: dict = {}  # ("mirrored",) or ("multi-worker", TF_CONFIG) -> the process's strategy


def read_tf_config(environ: Optional[dict] = None) -> dict:
    """Parses and checks `TF_CONFIG` for `--strategy multi-worker`.

    Args:
        environ: dict. the environment (os.environ when None).

    Returns:
        dict. the parsed TF_CONFIG: `{"cluster": {...}, "task": {"type": ..., "index": ...}}`.

    Raises:
        ConfigError: TF_CONFIG is missing or does not describe this task in a cluster
            of `chief`/`worker` tasks with `host:port` addresses.
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        raise ConfigError(
            "--strategy multi-worker needs the TF_CONFIG environment variable, e.g. "
            '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}')
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {error}") from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict) \
            or not isinstance(value.get("task"), dict):
        raise ConfigError("TF_CONFIG must be a JSON object with a `cluster` object and a `task` object")
    cluster = value["cluster"]
    unknown = sorted(set(cluster) - set(_TASK_TYPES))
    if unknown:
        raise ConfigError(f"TF_CONFIG cluster has task types {unknown}; MultiWorkerMirroredStrategy takes "
                          f"only {', '.join(_TASK_TYPES)}")
    for kind, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses:
            raise ConfigError(f"TF_CONFIG cluster[{kind!r}] must be a non-empty list of host:port addresses")
        for address in addresses:
            if not isinstance(address, str) or not _ADDRESS.match(address):
                raise ConfigError(f"TF_CONFIG cluster[{kind!r}] has {address!r}, not a host:port address")
    if len(cluster.get("chief", [])) > 1:
        raise ConfigError("TF_CONFIG cluster may have at most one chief")
    task = value["task"]
    kind, index = task.get("type"), task.get("index")
    if kind not in cluster:
        raise ConfigError(f"TF_CONFIG task type {kind!r} is not a task type of the cluster ({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[kind]):
        raise ConfigError(f"TF_CONFIG task index {index!r} is not in [0, {len(cluster[kind])}) for {kind!r}")
    return value


def make_strategy(name: str):
    """The `tf.distribute.Strategy` of `--strategy NAME`, one per process and kind.

    Later runs in the same process (tuner trials, tests) reuse it: a multi-worker strategy
    configures TensorFlow's collective ops once, at program start, and a second strategy
    over the same devices would reuse the first one's collective instance keys ("Collective
    instance 100 expected type 0 ... but got type 2").
    """
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi-worker":
        read_tf_config()
        key = (name, os.environ["TF_CONFIG"])
    elif name == "mirrored":
        key = (name,)
    else:
        raise ConfigError(f"unknown strategy {name!r}")
    if key not in _STRATEGIES:
        if name == "mirrored":
            _STRATEGIES[key] = tf.distribute.MirroredStrategy()
        else:
            if any(k[0] == name for k in _STRATEGIES):
                raise ConfigError("a process runs one multi-worker cluster; TF_CONFIG changed since the first run")
            try:
                _STRATEGIES[key] = tf.distribute.MultiWorkerMirroredStrategy()
            except (RuntimeError, ValueError) as error:
                raise ConfigError(
                    f"cannot start the multi-worker strategy ({error}); it must be created before TensorFlow "
                    "runs anything else in the process") from None
    strategy = _STRATEGIES[key]
    logger.info("strategy %s: %d replicas in sync", name, strategy.num_replicas_in_sync)
    return strategy


def is_chief(strategy) -> bool:
    """Whether this process writes the run's outputs (always, except non-chief workers)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    kind, index = resolver.task_type, resolver.task_id
    if kind == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return kind in (None, "worker") and index == 0 and not has_chief


class WorkerOutputs:
    """Where this process writes: the configured directories on the chief, temp dirs elsewhere.

    Non-chief workers of a multi-worker run go through every step the chief does
    (Keras's multi-worker pattern: saving may need every worker), but into a temporary
    directory removed by `cleanup`, so only the chief's files remain.
    """

    def __init__(self, strategy, output_dir: str, export_base: str):
        self.chief = is_chief(strategy)
        self._temp = None if self.chief else Path(tempfile.mkdtemp(prefix="tfrec_lm_worker_"))
        self.output_dir = Path(output_dir) if self.chief else self._temp / "run"
        self.export_base = Path(export_base) if self.chief else self._temp / "exports"

    def cleanup(self) -> None:
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)


class WorkerGroup:
    """The workers of a run as a group: which one this process is, and sums and gathers of
    host arrays over all of them (collective all-reduces of the strategy).

    A run whose workers each read their own interaction shards (`sharded`) holds only its
    shards' users; what must be global (popularity counts, the sampling probabilities,
    the validation and test ranks, the data digest) is combined here. Every worker must make
    the same calls in the same order with the same shapes, as with any collective. Outside a
    multi-worker cluster it is one worker and every operation is the identity.

    Args:
        strategy: tf.distribute.Strategy or None. the run's strategy (None: one worker).
        sharded: bool. whether each worker reads its own shards of the data.

    Attributes:
        rank: int. this worker's place: the chief 0, then the workers in index order.
        count: int. the number of workers (chief included).
        sharded: bool. as given, and False with one worker.
    """

    def __init__(self, strategy=None, sharded: bool = False):
        self.strategy = strategy
        resolver = getattr(strategy, "cluster_resolver", None)
        cluster = resolver.cluster_spec().as_dict() if resolver is not None else {}
        if cluster:
            chiefs = len(cluster.get("chief", []))
            self.count = chiefs + len(cluster.get("worker", []))
            self.rank = 0 if resolver.task_type == "chief" else chiefs + int(resolver.task_id)
        else:
            self.count, self.rank = 1, 0
        self.sharded = bool(sharded) and self.count > 1

    @property
    def shard(self) -> Optional[tuple]:
        """(rank, count) for a sharded run: the shards this worker reads (`load_interactions_file`); else None."""
        return (self.rank, self.count) if self.sharded else None

    def sum(self, array):
        """The element-wise sum of `array` over the workers (float64 inside: integers exact below 2**53).

        Args:
            array: np.ndarray. the same shape on every worker.

        Returns:
            np.ndarray. the sum, of `array`'s dtype; `array` itself with one worker.
        """
        import numpy as np

        array = np.asarray(array)
        if not self.sharded:
            return array
        import tensorflow as tf

        value = tf.constant(array.astype(np.float64))
        local = max(1, len(self.strategy.extended.worker_devices))

        def on_replica(context):
            # one copy of the worker's value per worker, not per local replica
            return value if context.replica_id_in_sync_group % local == 0 else tf.zeros_like(value)

        per_replica = self.strategy.experimental_distribute_values_from_function(on_replica)
        total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
        return np.rint(total).astype(array.dtype) if array.dtype.kind in "iub" else total.astype(array.dtype)

    def gather(self, array):
        """Every worker's rows of `array`, concatenated in rank order (row counts may differ).

        Args:
            array: np.ndarray. [n_w, ...]; the trailing shape the same on every worker.

        Returns:
            np.ndarray. [sum of n_w, ...]; `array` itself with one worker.
        """
        import numpy as np

        array = np.asarray(array)
        if not self.sharded:
            return array
        lengths = np.zeros(self.count, np.int64)
        lengths[self.rank] = len(array)
        lengths = self.sum(lengths)
        padded = np.zeros((self.count, int(lengths.max()), *array.shape[1:]), array.dtype)
        padded[self.rank, :len(array)] = array
        padded = self.sum(padded)
        return np.concatenate([padded[w, :lengths[w]] for w in range(self.count)], axis=0)

    def max(self, value: int) -> int:
        """The largest of one integer over the workers."""
        import numpy as np

        values = np.zeros(self.count, np.int64)
        values[self.rank] = value
        return int(self.sum(values).max())
