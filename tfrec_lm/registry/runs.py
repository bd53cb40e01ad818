"""`RunFolder`: one training run's `--output-dir`, and the rule that a run is never overwritten silently."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional

from tfrec_lm.config import RUN_CONTROL
from tfrec_lm.errors import ConfigError
from tfrec_lm.registry.layout import (BACKUP_DIR, CATALOG_FILE, CHECKPOINT, METRICS_FILE, RUN_FILE, TENSORBOARD_DIR,
                                      TEXT_ENCODER_DIR, VALIDATION_FILE)

logger = logging.getLogger(__name__)


def options_hash(options: dict) -> str:
    """The hex SHA-256 of a run's options (`TrainConfig.options()`), `output_dir` left out. str."""
    values = {key: value for key, value in options.items() if key != "output_dir"}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def write_json_atomically(path: Path, value) -> None:
    """Writes JSON so that a reader (or a run killed meanwhile) sees the old file or the new one whole.

    Args:
        path: Path. the file.
        value: object. JSON-serialisable (floats by `float`).
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=2, default=float))
    os.replace(temporary, path)


def checkpoint_prefix(path: str, flag: str = "--warm-start") -> str:
    """Resolves a run folder or a checkpoint prefix (`--warm-start`, `--run`) to a checkpoint prefix.

    Args:
        path: str. a training run's `--output-dir` or a checkpoint prefix.
        flag: str. the option that named `path`, for the messages.

    Returns:
        str. the checkpoint prefix (`<dir>/checkpoints/best.weights` for a run folder).

    Raises:
        ConfigError: a SavedModel export, or no checkpoint there.
    """
    candidate = Path(path)
    if (candidate / "saved_model.pb").is_file():
        raise ConfigError(f"{flag} {path} is a SavedModel export, which holds the serving graph only; "
                          f"pass the training run's --output-dir (or its {CHECKPOINT})")
    if candidate.is_dir():
        candidate = candidate / CHECKPOINT
    if not Path(f"{candidate}.index").is_file():
        raise ConfigError(f"{flag}: no checkpoint at {candidate} (expected {candidate}.index)")
    return str(candidate)


class RunFolder:
    """A training run's `--output-dir` and what it holds (`tfrec_lm.registry.layout`).

    Args:
        path: str | Path. the folder.

    Attributes:
        path: Path. the folder.
        metrics_file, catalog_file, validation_file, backup_dir, run_file, tensorboard_dir, text_encoder_dir:
            Path. its files and folders.
        checkpoint: str. the kept weights' checkpoint prefix.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.metrics_file = self.path / METRICS_FILE
        self.catalog_file = self.path / CATALOG_FILE
        self.validation_file = self.path / VALIDATION_FILE
        self.backup_dir = self.path / BACKUP_DIR
        self.run_file = self.backup_dir / RUN_FILE
        self.tensorboard_dir = self.path / TENSORBOARD_DIR
        self.text_encoder_dir = self.path / TEXT_ENCODER_DIR
        self.checkpoint = str(self.path / CHECKPOINT)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def config(self, flag: str = "--run"):
        """The options the finished run recorded, as a `TrainConfig`.

        Args:
            flag: str. the option that named the folder, for the message.

        Returns:
            TrainConfig.

        Raises:
            ConfigError: the folder holds no finished run.
        """
        from tfrec_lm.config import TrainConfig

        record = self.record()
        if record is None and self.metrics_file.is_file() and not self.has_checkpoint():
            raise ConfigError(f"{flag}: no checkpoint at {self.checkpoint} (expected {self.checkpoint}.index)")
        if record is None:
            raise ConfigError(f"{flag} {self.path} is not a finished training run (no {METRICS_FILE} beside "
                              f"{CHECKPOINT}); pass the --output-dir of a `python -m tfrec_lm.train` run")
        return TrainConfig.from_dict(record["config"])

    def has_checkpoint(self) -> bool:
        """Whether the kept weights are there. bool."""
        return Path(f"{self.checkpoint}.index").is_file()

    def record(self) -> Optional[dict]:
        """The finished run's `metrics.json` (None when absent, unreadable or without its checkpoint). dict."""
        if not self.metrics_file.is_file() or not self.has_checkpoint():
            return None
        try:
            return json.loads(self.metrics_file.read_text())
        except json.JSONDecodeError:
            return None

    def finished(self) -> bool:
        """Whether the folder holds a finished run. bool."""
        return self.record() is not None

    def backup(self) -> Optional[dict]:
        """The killed run's backup record (`run.json`: identity and run id), None without one. dict."""
        if not self.run_file.is_file():
            return None
        try:
            return json.loads(self.run_file.read_text())
        except json.JSONDecodeError:
            return None

    def recorded_options(self) -> Optional[dict]:
        """The options of the run the folder holds, finished or killed (None when it holds none). dict."""
        record = self.record()
        if record is not None:
            return _options_of(record)
        backup = self.backup()
        return None if backup is None else _options_of(backup.get("identity", backup))

    def run_id(self) -> Optional[str]:
        """The id of the run the folder holds (its record's, else its backup's). str or None."""
        record = self.record()
        if record is not None and record.get("run_id"):
            return record["run_id"]
        backup = self.backup()
        return None if backup is None else backup.get("run_id")

    def claim(self, identity: dict, resume: bool = False, overwrite: bool = False) -> str:
        """Decides what a run of `identity` does with this folder, and refuses to clobber another run.

        - the same options and data as the finished run here: `reuse` (nothing is trained);
        - the same as the killed run here: `resume` (training continues from the backup);
        - other options or data: refused, unless `resume` (continue the killed run's backup
          under the new options) or `overwrite` (the folder's run is removed first);
        - an empty folder, or one that holds no run: `new`.

        Args:
            identity: dict. `{"config": options, "data": digest}` of the run to start.
            resume: bool. `--resume`.
            overwrite: bool. `--overwrite`.

        Returns:
            str. `new`, `reuse` or `resume`.

        Raises:
            ConfigError: the folder holds another run and neither flag allows replacing it.
        """
        record, backup = self.record(), self.backup()
        if record is not None and _same(record, identity):
            return "reuse" if not overwrite else self._cleared()
        if record is None and backup is not None:
            stored = backup.get("identity", backup)
            if stored == identity or resume:
                return "resume"
        if record is None and backup is None:
            return "new"
        if overwrite:
            return self._cleared()
        held = record if record is not None else backup.get("identity", backup)
        what = "a finished run" if record is not None else "the backup of a killed run"
        differs = _differences(_options_of(held), identity["config"])
        reason = (f"other options ({differs})" if differs else "other data")
        hint = ("--overwrite to replace it" if record is not None
                else "--resume to continue its backup with these options, --overwrite to replace it")
        raise ConfigError(f"{self.path} holds {what} with {reason}: pass another --output-dir, or {hint}")

    def _cleared(self) -> str:
        """Removes the run held here (its export versions stay); returns `new`."""
        logger.warning("--overwrite: removing the run in %s", self.path)
        for name in (METRICS_FILE, CATALOG_FILE, VALIDATION_FILE):
            (self.path / name).unlink(missing_ok=True)
        for folder in (self.backup_dir, Path(self.checkpoint).parent, self.tensorboard_dir):
            shutil.rmtree(folder, ignore_errors=True)
        return "new"

    def start_backup(self, identity: dict, adopt: bool = False) -> str:
        """Records the run a backup belongs to (`run.json`), keeping the run id of the backup it continues.

        Args:
            identity: dict. the run's identity.
            adopt: bool. continue a backup of other options (`--resume`): it now belongs to `identity`.

        Returns:
            str. the run id (new for a run that starts from nothing).
        """
        stored = self.backup()
        if stored is not None and stored.get("identity", stored) != identity and not adopt:
            logger.warning("%s holds the backup of a run with other options or data; starting over", self.backup_dir)
            shutil.rmtree(self.backup_dir, ignore_errors=True)
            stored = None
        run_id = (stored or {}).get("run_id") or uuid.uuid4().hex
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.run_file, {"identity": identity, "run_id": run_id})
        return run_id


def _options_of(held: dict) -> dict:
    """The options a `metrics.json` or a backup identity records (older records: their config less `RUN_CONTROL`)."""
    if held.get("options") is not None:
        return held["options"]
    return {key: value for key, value in (held.get("config") or {}).items() if key not in RUN_CONTROL}


def _same(record: dict, identity: dict) -> bool:
    """Whether a run's `metrics.json` records these options and data."""
    return _options_of(record) == identity["config"] and record.get("data_digest") == identity["data"]


def _differences(recorded: dict, wanted: dict, limit: int = 3) -> str:
    """`--name was -> now` for the first few options that differ. str."""
    names = sorted(set(recorded) | set(wanted))
    changed = [f"--{name.replace('_', '-')} {recorded.get(name)!r} -> {wanted.get(name)!r}"
               for name in names if recorded.get(name) != wanted.get(name)]
    more = f" and {len(changed) - limit} more" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + more


def fresh_run_dir(default: str, options: dict) -> str:
    """The folder a run gets when `--output-dir` was left at its default.

    The default folder, unless it holds a run (finished or killed) of other options: then
    `<default>-<first 8 hex digits of the options hash>`, the same folder for the same
    options each time (so re-running the command finds its run again).

    Args:
        default: str. the default `--output-dir`.
        options: dict. `TrainConfig.options()` of the run.

    Returns:
        str.
    """
    held = RunFolder(default).recorded_options()
    if held is None or options_hash(held) == options_hash(options):
        return default
    return f"{default}-{options_hash(options)[:8]}"
