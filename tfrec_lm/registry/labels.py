"""The `version_labels` and version policy of one model in a TF Serving `models.config` (a text ModelServerConfig)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tfrec_lm.errors import ConfigError


def _read(path: Path):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = model_server_config_pb2.ModelServerConfig()
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as error:
            raise ConfigError(f"{path} is not a TF Serving model config: {error}") from None
    return config


def _model(config, model_name: str, base_path: str | None):
    for model in config.model_config_list.config:
        if model.name == model_name:
            return model
    if base_path is None:
        raise ConfigError(f"no model named {model_name!r} in the model config; pass --base-path to add it")
    model = config.model_config_list.config.add()
    model.name, model.base_path, model.model_platform = model_name, str(base_path), "tensorflow"
    return model


def read_labels(path, model_name: str) -> dict:
    """The `version_labels` of `model_name` in a models.config (`{}` when the file or model has none). dict."""
    path = Path(path)
    if not path.is_file():
        return {}
    for model in _read(path).model_config_list.config:
        if model.name == model_name:
            return dict(model.version_labels)
    return {}


def write_labels(path, model_name: str, labels: dict, versions: Iterable[int], base_path: str | None = None) -> None:
    """Sets a model's labels and serves exactly `versions` (TF Serving's `specific` policy) in a models.config.

    TF Serving refuses a label that points at a version it has not loaded, so the policy
    lists every labelled version. The other models and settings in the file are kept; the
    file is replaced whole (a server polling it never reads half of it).

    Args:
        path: str | Path. the models.config (created when missing, with `base_path`).
        model_name: str. the model.
        labels: dict of str -> int. e.g. `{"stable": 3, "canary": 4}`.
        versions: iterable of int. the versions to load.
        base_path: str or None. the model's base path, needed only to add a model the file lacks.
    """
    from google.protobuf import text_format

    path = Path(path)
    config = _read(path)
    model = _model(config, model_name, base_path)
    model.model_version_policy.Clear()
    model.model_version_policy.specific.versions.extend(sorted({int(v) for v in versions}))
    model.version_labels.clear()
    for label, version in labels.items():
        model.version_labels[str(label)] = int(version)
    header = "".join(line + "\n" for line in (path.read_text().splitlines() if path.is_file() else [])
                     if line.startswith("#"))
    note = "# version_labels and the policy below are written by `python -m tfrec_lm.versions promote|rollback`.\n"
    if note not in header:
        header += note
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(header + text_format.MessageToString(config))
    temporary.replace(path)
