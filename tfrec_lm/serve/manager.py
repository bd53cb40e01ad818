"""Model versions: discovery under a base path, loading, and atomic hot-swap.

TF Serving's behaviour, in Python: every `--file_system_poll_wait_seconds` the base path
of each model is listed; its integer-named directories are the versions on disk; the
model's version policy (`latest {num_versions}` by default 1, `all`, `specific`) says
which of them should be served. A version to serve is loaded *completely* (and warmed up
from `assets.extra/tf_serving_warmup_requests` if present) before it is published; the
table of served versions is then replaced by one reference assignment, so a request
always runs on one consistent `Servable` and in-flight requests on the old version
finish on it.

Unloading follows TF Serving's `AvailabilityPreservingPolicy`: a version that is no longer
wanted is dropped once some wanted version is available, or when no version is wanted at
all (every version directory was deleted: the model is unloaded and requests get NOT_FOUND,
as in TF Serving; a base path that cannot be listed at all is an error that changes
nothing).

Retries follow TF Serving's `--max_num_load_retries` / `--load_retry_interval_micros`: a
version that fails to load is tried again every `load_retry_interval_s` (at the first poll
after that), up to `max_num_load_retries` more times, while the versions already served keep
serving. If its files are still changing (a slow copy into the base path), the count starts
again, so a version that is still arriving is retried until it loads or is removed; a
version whose files stay the same gives up after the last retry (status END with the
error), and is tried afresh once its files change or it is removed and comes back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from tfrec_lm.export_warmup import WARMUP_FILE
from tfrec_lm.serve.errors import echo, from_tf_error, invalid_argument, not_found, scrub, tf_error_code

logger = logging.getLogger(__name__)

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


# ---------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """One served model (TF Serving's `ModelConfig`, the fields used here).

    Attributes:
        name: str. the model name in URLs and `ModelSpec.name`.
        base_path: str. directory holding the integer version directories.
        policy: str. `latest`, `all` or `specific`.
        num_versions: int. for `latest`: how many of the newest versions to serve.
        versions: tuple of int. for `specific`.
        labels: {label: version}. `version_labels`.
    """

    name: str
    base_path: str
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple = ()
    labels: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def aspired(self, on_disk) -> set:
        on_disk = sorted(set(on_disk))
        if self.policy == "all":
            return set(on_disk)
        if self.policy == "specific":
            return set(on_disk) & set(self.versions)
        return set(on_disk[-max(1, self.num_versions):]) if on_disk else set()


def read_model_config_file(path) -> list[ModelConfig]:
    """Parses a TF Serving `--model_config_file` (text `ModelServerConfig`) with the official proto."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse(Path(path).read_text(), model_server_config_pb2.ModelServerConfig())
    if config.WhichOneof("config") != "model_config_list":
        raise ValueError(f"{path}: only model_config_list is supported")
    models = []
    for model in config.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ValueError(f"{path}: model {model.name!r}: model_platform must be 'tensorflow'")
        policy = model.model_version_policy
        kind = policy.WhichOneof("policy_choice") or "latest"
        models.append(ModelConfig(
            name=model.name,
            base_path=model.base_path,
            policy=kind,
            num_versions=(policy.latest.num_versions or 1) if kind == "latest" else 1,
            versions=tuple(policy.specific.versions) if kind == "specific" else (),
            labels=dict(model.version_labels),
        ))
    names = [m.name for m in models]
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"{path}: model names must be non-empty and distinct: {names}")
    return models


def versions_on_disk(base_path) -> list[int]:
    """Integer-named subdirectories of `base_path` (`.tmp-*` staging directories are not versions).

    Raises:
        OSError: the base path cannot be listed (missing, not a directory, no access).
    """
    with os.scandir(base_path) as entries:
        return sorted(int(e.name) for e in entries if e.name.isdigit() and e.is_dir())


def tree_fingerprint(path) -> str:
    """A digest of every file's relative path, size and mtime under `path` ("" if it is gone).

    Changes whenever a file arrives or grows anywhere below `path`, unlike the directory's
    own mtime, which only sees its direct children.
    """
    digest = hashlib.sha256()
    try:
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                try:
                    stat = os.stat(full)
                except OSError:
                    continue
                digest.update(f"{os.path.relpath(full, path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    except OSError:
        return ""
    return digest.hexdigest()


def describe_load_error(name: str, version: int, error: BaseException) -> tuple[str, str]:
    """(status code name, message) of a failed load, for clients: no paths, no exception class.

    TF Serving's wording (`Loading servable: {name: ... version: ...} failed: ...`);
    TensorFlow's own text is kept with paths replaced by `<path>`.
    """
    code = tf_error_code(error)
    detail = scrub(getattr(error, "message", None) or str(error), 300)
    if isinstance(error, (FileNotFoundError, NotADirectoryError)) or not detail:
        detail = "the SavedModel's files are missing or incomplete"
    return code.name, f"Loading servable: {{name: {name} version: {version}}} failed: {detail}"


# ---------------------------------------------------------------- one loaded version


@dataclasses.dataclass
class Signature:
    name: str
    function: Callable
    inputs: dict
    outputs: dict


class Servable:
    """One loaded SavedModel version.

    Args:
        name: str. model name.
        version: int.
        path: str. the version directory.
    """

    def __init__(self, name: str, version: int, path):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2
        from tensorflow_serving.apis import get_model_metadata_pb2

        self.name, self.version, self.path = name, int(version), str(path)
        self.loaded = tf.saved_model.load(self.path)
        self.signatures = {}
        for key, function in self.loaded.signatures.items():
            self.signatures[key] = Signature(key, function, dict(function.structured_input_signature[1]),
                                             dict(function.structured_outputs))
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString(Path(self.path, "saved_model.pb").read_bytes())
        self.signature_def_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in saved.meta_graphs[0].signature_def.items():
            self.signature_def_map.signature_def[key].CopyFrom(signature_def)

    def signature(self, name: str) -> Signature:
        name = name or "serving_default"
        if name not in self.signatures:
            raise invalid_argument(f"Serving signature name: \"{echo(name)}\" not found in signature def "
                                   f"(available: {sorted(self.signatures)})")
        return self.signatures[name]

    def input_specs(self, name: str) -> dict:
        return self.signature(name).inputs

    def run(self, signature: Signature, arrays: Mapping[str, np.ndarray], output_filter=()) -> dict:
        """Runs a signature on validated numpy inputs; {output name: np.ndarray}."""
        import tensorflow as tf

        unknown = sorted(set(output_filter) - set(signature.outputs))
        if unknown:
            raise invalid_argument(f"output_filter names outputs not in signature '{signature.name}': {unknown}")
        try:
            tensors = {k: tf.constant(v, dtype=signature.inputs[k].dtype) for k, v in arrays.items()}
            result = signature.function(**tensors)
        except tf.errors.OpError as error:
            raise from_tf_error(error) from None
        keep = set(output_filter) or set(result)
        return {k: v.numpy() for k, v in result.items() if k in keep}

    def warm_up(self, tensor_proto_to_array) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` (PredictionLog TFRecords), like TF Serving.

        A version without them loads anyway (as in TF Serving), with a warning naming its
        folder: its first requests pay for tracing and loading the graph.
        """
        path = Path(self.path, WARMUP_FILE)
        if not path.exists():
            extra = path.parent
            missing = f"no {extra.name}/ folder" if not extra.is_dir() else f"no {extra.name}/{path.name}"
            logger.warning("%s version %d at %s has %s: loaded without warm-up, so its first requests will be "
                           "slow", self.name, self.version, self.path, missing)
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        count = 0
        for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise ValueError(f"{path}: only predict_log warm-up records are supported")
            request = log.predict_log.request
            signature = self.signature(request.model_spec.signature_name)
            arrays = {k: tensor_proto_to_array(v, signature.inputs[k], k, None) for k, v in request.inputs.items()}
            self.run(signature, arrays)
            count += 1
        return count


# ---------------------------------------------------------------- status


STATES = ("START", "LOADING", "AVAILABLE", "UNLOADING", "END")


@dataclasses.dataclass
class VersionStatus:
    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass
class _Attempts:
    """Failed loads of one version: how many since its files last changed, and when to try next."""

    failures: int
    next_attempt: float
    fingerprint: str


# ---------------------------------------------------------------- the manager


class ModelManager:
    """Keeps the wanted versions of each model loaded and swaps them atomically.

    Args:
        models: list of ModelConfig.
        poll_wait_seconds: float. seconds between polls of the base paths; 0 or less:
            only the poll at start (then a failed load is not retried).
        max_num_load_retries: int. retries of a version that fails to load, after the
            first attempt (TF Serving's `--max_num_load_retries`, default 5); the count
            restarts while the version's files keep changing.
        load_retry_interval_s: float. seconds between a failed load and its retry (TF
            Serving's `--load_retry_interval_micros`, default 60 s); retries happen at
            the first poll after that.
        loader: callable(name, version, path) -> Servable.
        warm_up: callable(Servable) -> None, run before a version is published.
    """

    def __init__(self, models, poll_wait_seconds: float = 1.0, max_num_load_retries: int = 5,
                 loader=Servable, warm_up=None, load_retry_interval_s: float = 60.0):
        self.models = {m.name: m for m in models}
        if len(self.models) != len(models):
            raise ValueError("model names must be distinct")
        self.poll_wait_seconds = poll_wait_seconds
        self.max_num_load_retries = max(0, int(max_num_load_retries))
        self.load_retry_interval_s = max(0.0, float(load_retry_interval_s))
        self._loader = loader
        self._warm_up = warm_up
        # {name: {version: Servable}}; replaced, never mutated, so readers need no lock.
        self._served: dict = {name: {} for name in self.models}
        self._status: dict = {name: {} for name in self.models}
        self._failures: dict = {}  # {(name, version): _Attempts}
        self._unlisted: set = set()  # models whose base path could not be listed at the last poll
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    # -- lifecycle

    def start(self) -> None:
        self.poll_once()
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._loop, name="tfrec-lm-version-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll_once()
            except Exception:  # never let the poller die
                logger.exception("polling the model base paths failed")

    def poll_once(self) -> None:
        with self._poll_lock:
            for config in self.models.values():
                self._sync(config)

    # -- one model

    def _set_status(self, name, version, state, code="OK", message=""):
        with self._lock:
            self._status[name] = {**self._status[name], version: VersionStatus(version, state, code, message)}

    def _publish(self, name, table) -> None:
        with self._lock:
            self._served = {**self._served, name: table}

    def _sync(self, config: ModelConfig) -> None:
        name = config.name
        try:
            on_disk = versions_on_disk(config.base_path)
        except OSError as error:
            # TF Serving: a base path that cannot be listed fails the poll; nothing changes.
            if name not in self._unlisted:
                logger.error("cannot list the base path of model %r (%s); keeping what is served", name, error)
                self._unlisted.add(name)
            return
        self._unlisted.discard(name)
        if not on_disk and not self._status[name]:
            logger.warning("no versions of model %r found under %s yet", name, config.base_path)
        for key in [k for k in self._failures if k[0] == name and k[1] not in on_disk]:
            del self._failures[key]  # removed: a version that comes back starts afresh
            status = self._status[name].get(key[1])
            if status is not None and status.state != "END" and key[1] not in self._served[name]:
                self._set_status(name, key[1], "END", status.error_code, status.error_message)
        aspired = config.aspired(on_disk)
        for version in sorted(aspired - set(self._served[name]), reverse=True):
            self._load(config, version)
        self._unload_unaspired(name, aspired)

    def _unload_unaspired(self, name: str, aspired: set) -> None:
        """TF Serving's AvailabilityPreservingPolicy for unloading.

        A served version that is no longer aspired is unloaded if no version is aspired at
        all, or some aspired version is served; otherwise only the newest unaspired one
        stays, so the model keeps serving while its replacement cannot load.
        """
        served = self._served[name]
        unaspired = sorted(v for v in served if v not in aspired)
        if not unaspired:
            return
        if aspired and not any(v in served for v in aspired):
            unaspired = unaspired[:-1]
            if not unaspired:
                return
        for version in unaspired:
            self._set_status(name, version, "UNLOADING")
        self._publish(name, {v: s for v, s in served.items() if v not in unaspired})
        for version in unaspired:
            self._set_status(name, version, "END")
            logger.info("unloaded %s version %d%s", name, version,
                        "" if aspired else " (no version left under the base path)")

    def _load(self, config: ModelConfig, version: int) -> None:
        name = config.name
        path = os.path.join(config.base_path, str(version))
        key = (name, version)
        attempts = self._failures.get(key)
        if attempts is not None:
            fingerprint = tree_fingerprint(path)
            if fingerprint != attempts.fingerprint:
                # Its files changed since the last attempt (a copy still arriving, or a fix):
                # the failures so far say nothing about what is there now.
                attempts.failures, attempts.fingerprint = 0, fingerprint
                if attempts.next_attempt == float("inf"):
                    attempts.next_attempt = 0.0
            if time.monotonic() < attempts.next_attempt:
                return
        self._set_status(name, version, "LOADING")
        start = time.perf_counter()
        fingerprint = tree_fingerprint(path)
        try:
            servable = self._loader(name, version, path)
            if self._warm_up is not None:
                self._warm_up(servable)
        except Exception as error:
            failures = (attempts.failures if attempts is not None else 0) + 1
            final = failures > self.max_num_load_retries
            self._failures[key] = _Attempts(
                failures, float("inf") if final else time.monotonic() + self.load_retry_interval_s, fingerprint)
            code, message = describe_load_error(name, version, error)
            logger.error("loading %s version %d from %s failed (attempt %d of %d%s)", name, version, path, failures,
                         self.max_num_load_retries + 1,
                         ", giving up until its files change" if final else
                         f", retrying in {self.load_retry_interval_s:g} s", exc_info=error)
            self._set_status(name, version, "END" if final else "LOADING", code, message)
            return
        self._failures.pop(key, None)
        self._publish(name, {**self._served[name], version: servable})
        self._set_status(name, version, "AVAILABLE")
        logger.info("serving %s version %d from %s (loaded in %.1f s)", name, version, path,
                    time.perf_counter() - start)

    # -- lookups (any thread)

    def get(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable for a request; NOT_FOUND if there is none (long names are quoted cut short)."""
        if name not in self.models:
            raise not_found(f"Servable not found for request: Latest({echo(name)})")
        served = self._served[name]
        if label:
            if label not in self.models[name].labels:
                raise not_found(f"Unrecognized servable version label: {echo(label)}")
            version = self.models[name].labels[label]
        if version is None:
            if not served:
                raise not_found(f"Servable not found for request: Latest({name})")
            return served[max(served)]
        if version not in served:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return served[version]

    def served_versions(self, name: str) -> list[int]:
        return sorted(self._served.get(name, {}))

    def status(self, name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        if name not in self.models:
            raise not_found(f"Could not find any versions of model {echo(name)}")
        if label:
            if label not in self.models[name].labels:
                raise not_found(f"Unrecognized servable version label: {echo(label)}")
            version = self.models[name].labels[label]
        statuses = self._status[name]
        if version is not None:
            if version not in statuses:
                raise not_found(f"Could not find version {version} of model {name}")
            return [statuses[version]]
        if not statuses:
            raise not_found(f"Could not find any versions of model {name}")
        return [statuses[v] for v in sorted(statuses, reverse=True)]

