"""`ModelVersions`: the export versions of one model, `<export_base>/<model_name>/<version>/`."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Optional

from tfrec_lm.registry.layout import (ASSETS_EXTRA, EXPORT_CATALOG_FILE, EXPORT_TEXT_VECTORS_FILE, MANIFEST_FILE,
                                      STAGING_PREFIX)

logger = logging.getLogger(__name__)


class ModelVersions:
    """The integer-named version folders of one model under an export base, and their manifests.

    A version is written under a staging name and renamed into place whole, so a server
    polling the folder (TF Serving, `tfrec_lm.serve`) never sees half a model; a version
    that exists is never written again.

    Args:
        export_base: str | Path. the base path a server watches.
        model_name: str. the model's folder under it.

    Attributes:
        model_dir: Path. `<export_base>/<model_name>`.
    """

    def __init__(self, export_base, model_name: str):
        self.export_base = Path(export_base)
        self.model_name = str(model_name)
        self.model_dir = self.export_base / self.model_name

    def __repr__(self) -> str:
        return f"ModelVersions({str(self.model_dir)!r})"

    @classmethod
    def of(cls, model_dir) -> "ModelVersions":
        """The versions of the model folder `model_dir` (`<export_base>/<model_name>`). ModelVersions."""
        model_dir = Path(model_dir)
        return cls(model_dir.parent, model_dir.name)

    def versions(self) -> list[int]:
        """The versions on disk, oldest first (staging folders are not versions). list of int."""
        if not self.model_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def newest(self) -> Optional[int]:
        """The newest version (what TF Serving's default policy serves), None without one. int."""
        versions = self.versions()
        return versions[-1] if versions else None

    def next_version(self) -> int:
        """The version after the newest one (1 for none). int."""
        return (self.newest() or 0) + 1

    def path(self, version: int) -> Path:
        """The folder of `version`. Path."""
        return self.model_dir / str(int(version))

    def manifest(self, version: int) -> dict:
        """The manifest of `version` (`{}` when it has none: exported before manifests). dict."""
        try:
            return json.loads((self.path(version) / ASSETS_EXTRA / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            return {}

    def catalog_path(self, version: int) -> Path:
        """The catalog file `version` carries. Path."""
        return self.path(version) / ASSETS_EXTRA / EXPORT_CATALOG_FILE

    def text_vectors_path(self, version: int) -> Path:
        """The encoded texts `version` carries (a catalog update's; `tfrec_lm.catalog.table`). Path."""
        return self.path(version) / ASSETS_EXTRA / EXPORT_TEXT_VECTORS_FILE

    def find(self, **match) -> Optional[int]:
        """The newest version whose manifest has every `key=value` of `match`, None for none. int."""
        for version in reversed(self.versions()):
            manifest = self.manifest(version)
            if all(manifest.get(key) == value for key, value in match.items()):
                return version
        return None

    def _staging(self, version: int) -> Path:
        return self.model_dir / f"{STAGING_PREFIX}{version}-{os.getpid()}-{time.time_ns()}"

    def save(self, module, manifest: dict, extras: Optional[dict] = None, version: Optional[int] = None) -> Path:
        """Writes a `ServingModule` as a new version, atomically, and returns its folder.

        Args:
            module: tfrec_lm.serving_module.ServingModule. the graph to save.
            manifest: dict. written to `assets.extra/tfrec_lm.json` (its `version` is set here).
            extras: dict or None. file name -> `write(path)`, more files for `assets.extra/` (the
                catalog behind the version, `EXPORT_CATALOG_FILE`, so that a later catalog
                update can extend it).
            version: int or None. the version number (default: one above the newest).

        Returns:
            Path. the version folder.

        Raises:
            FileExistsError: that version exists.
        """
        import tensorflow as tf

        from tfrec_lm.export_warmup import write_export_warmup

        self.model_dir.mkdir(parents=True, exist_ok=True)
        version = self.next_version() if version is None else int(version)
        if version < 1:
            raise ValueError(f"export versions are positive integers, got {version}")
        if self.path(version).exists():
            raise FileExistsError(f"export version already exists: {self.path(version)}")
        staging = self._staging(version)
        signatures = {"serving_default": module.retrieve, "rank": module.rank, "explain": module.explain}
        options = tf.saved_model.SaveOptions(namespace_whitelist=["Scann"] if module.index_kind == "scann" else None)
        try:
            tf.saved_model.save(module, str(staging), signatures=signatures, options=options)
            extra = staging / ASSETS_EXTRA
            extra.mkdir(exist_ok=True)
            write_manifest(staging, {**manifest, "model_name": self.model_name, "version": version})
            for name, write in (extras or {}).items():
                write(extra / name)
            write_export_warmup(staging, module.item_ids.numpy(), self.model_name)
            return self._place(staging, version)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def publish(self, source: Path, manifest_changes: Optional[dict] = None, move: bool = True) -> Path:
        """Makes a complete version folder from elsewhere (a staged candidate, an older version) the next version.

        The SavedModel's files are taken as they are (moved, or copied byte for byte); only
        the manifest changes (its `version`, plus `manifest_changes`).

        Args:
            source: Path. a version folder (of a staging base, or of this model).
            manifest_changes: dict or None. keys to set in the manifest.
            move: bool. move `source` (a staged candidate); False: copy it (a rollback).

        Returns:
            Path. the new version folder.
        """
        self.model_dir.mkdir(parents=True, exist_ok=True)
        version = self.next_version()
        staging = self._staging(version)
        try:
            if move:
                try:
                    os.rename(source, staging)
                except OSError:  # another file system
                    shutil.copytree(source, staging)
                    shutil.rmtree(source, ignore_errors=True)
            else:
                shutil.copytree(source, staging)
            manifest = read_manifest(staging)
            write_manifest(staging, {**manifest, **(manifest_changes or {}), "model_name": self.model_name,
                                     "version": version})
            return self._place(staging, version)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _place(self, staging: Path, version: int) -> Path:
        final = self.path(version)
        if final.exists():
            raise FileExistsError(f"export version already exists: {final}")
        os.rename(staging, final)
        logger.info("exported %s", final)
        return final


def read_manifest(version_dir) -> dict:
    """The manifest in a version folder's `assets.extra/` (`{}` without one). dict."""
    try:
        return json.loads((Path(version_dir) / ASSETS_EXTRA / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_manifest(version_dir, manifest: dict) -> None:
    """Writes a version folder's manifest (before the folder is renamed into place)."""
    extra = Path(version_dir) / ASSETS_EXTRA
    extra.mkdir(parents=True, exist_ok=True)
    (extra / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=float))


def version_dir_of(path) -> tuple[ModelVersions, int]:
    """The model and version of a version folder `<export_base>/<model_name>/<version>`.

    Args:
        path: str | Path. the version folder.

    Returns:
        tuple (ModelVersions, int).

    Raises:
        ValueError: the folder's name is not a version number.
    """
    path = Path(path)
    if not path.name.isdigit():
        raise ValueError(f"{path} is not a version folder (<export_base>/<model_name>/<version>)")
    return ModelVersions.of(path.parent), int(path.name)
